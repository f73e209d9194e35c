"""Memory the teacher stage and ReplayDataset hand out again once nothing references it.

Every batch needs new memory for large arrays: each image's decoded pixels (0.56 MB at 500x375),
each batch's rendered views (38.5 MB for 256 views at 224 px) and, on a CPU teacher, its float
input (154 MB). Through malloc, that memory keeps coming fresh from the kernel: glibc maps blocks
that do not fit its per-thread arenas' 64 MiB heaps afresh, and gives those heaps back once they
are empty (whatever mallopt's trim threshold says), so every page is faulted in and zeroed again
(a fresh 500x375 decode: 137 page faults). On a 2-core VM the stage made 32 page faults per 224-px
view on one core and 58-60 on two, and spent 6-7 % of its CPU in the kernel on one core, 15-20 %
on two (docs/benchmarks.md).

A Recycler keeps the blocks instead: `empty(shape, dtype)` returns an array over a block that no
live array uses, taking a free one of its size class when there is one. The block goes back when the
array handed out is garbage, and with it every view and tensor made from it (numpy views of the
array keep the array itself alive: its base is a memoryview, so numpy does not skip over it), so a
block is never handed out twice while in use.
"""

from __future__ import annotations

import collections
import math
import threading
import weakref

import numpy as np

CLASSES_PER_OCTAVE = 4  # size classes 2^(k/4) bytes: at most 19 % of a block unused


def size_class(nbytes: int) -> int:
    """The block size (bytes) for an array of nbytes: the least 2^(k/4), rounded up to 4 KiB, >= nbytes."""
    if nbytes <= 4096:
        return 4096
    k = math.ceil(CLASSES_PER_OCTAVE * math.log2(nbytes))
    size = -(-int(math.ceil(2.0 ** (k / CLASSES_PER_OCTAVE))) // 4096) * 4096
    return size if size >= nbytes else size + 4096  # (2^(k/4) rounded down by float error)


class Recycler:
    """empty(shape, dtype) like np.empty, over recycled blocks; thread-safe.

    Idle blocks are kept up to the most bytes that were ever in use at once (so the idle memory of
    one size class cannot grow without bound while another is needed); the rest go back to malloc.
    """

    def __init__(self) -> None:
        self._free: dict[int, collections.deque] = collections.defaultdict(collections.deque)
        self._lock = threading.RLock()  # a block can come back during an allocation on the same thread
        self.idle = self.in_use = self.peak = 0  # bytes
        self.fresh = 0  # blocks allocated from malloc (the rest were reused)

    def empty(self, shape, dtype=np.uint8) -> np.ndarray:
        shape = tuple(int(s) for s in np.atleast_1d(shape))
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        size = size_class(nbytes)
        with self._lock:
            free = self._free[size]
            block = free.pop() if free else None
            if block is not None:
                self.idle -= size
            else:
                block = np.empty(size, np.uint8)
                self.fresh += 1
            self.in_use += size
            self.peak = max(self.peak, self.in_use)
        flat = np.frombuffer(memoryview(block)[:nbytes], dtype)  # base: the memoryview (see the module doc)
        weakref.finalize(flat, self._give, block)
        return flat.reshape(shape)

    def _give(self, block: np.ndarray) -> None:
        with self._lock:
            self.in_use -= block.nbytes
            if self.idle + block.nbytes <= self.peak:
                self._free[block.nbytes].append(block)
                self.idle += block.nbytes
