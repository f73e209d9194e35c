"""One epoch of a store's records in shared memory: read once (whole shards, in parallel), then indexed.

    cache = EpochCache()                      # names a directory of its own (made on first load)
    rec = cache.epoch(store, e)               # {read() key: array [N, ...]} memory-mapped, read-only

Where it lives: a directory `labelstore-cache-<pid>-<token>` under $LABELSTORE_CACHE_DIR, else
/dev/shm (shared memory on Linux), else the system temp directory. Every array of the epoch is
one `.npy` file there, memory-mapped by every process that reads it, so the records are held
once per host however many DataLoader workers index them (the pages are the page cache's,
shared, not copied into each process). At most one epoch is kept: loading epoch e removes the
files of the others (processes still mapping them keep their pages until they move on).
The per-row arrays (gt, skipped, source_hw) are loaded once. Loading takes a file lock in the
directory, so of several processes that need the same epoch one reads it and the others wait
and map its files.

Cleanup: the directory is removed when the cache object of the process that created it is
garbage-collected or that process exits; processes it was handed to (pickled to spawned
workers, or inherited by forked ones) never remove it. A directory left behind by a killed
process (its pid no longer running) is removed by the next EpochCache created on the host.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

PREFIX = "labelstore-cache-"


def cache_root() -> str:
    """$LABELSTORE_CACHE_DIR, else /dev/shm when writable, else the temp directory."""
    root = os.environ.get("LABELSTORE_CACHE_DIR")
    if root:
        return root
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(root: str) -> None:
    """Remove cache directories under root whose creating process is no longer running."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        try:
            pid = int(name[len(PREFIX):].split("-")[0])
        except ValueError:
            continue
        if not _alive(pid):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _remove(path: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def memory_budget(root: str) -> int:
    """Half the memory available now (MemAvailable), at most the free space of the file system of root."""
    avail = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        st = os.statvfs(root)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = avail
    return int(min(avail // 2, free))


def _file(name: str) -> str:
    return name.replace("/", "__") + ".npy"


class EpochCache:
    """Memory-mapped records of one epoch at a time, shared by every process given this object."""

    def __init__(self, root: str | None = None, threads: int | None = None):
        self.root = root or cache_root()
        self.owner = os.getpid()
        self.path = os.path.join(self.root, f"{PREFIX}{self.owner}-{secrets.token_hex(4)}")  # made on first load
        self.threads = threads or min(8, os.cpu_count() or 1)
        self._maps: dict[str, dict[str, np.ndarray]] = {}  # "rows" / "e<epoch>" -> mapped arrays
        weakref.finalize(self, _remove, self.path, self.owner)

    def __getstate__(self):  # a process it is handed to maps the files itself, and never removes them
        return {**self.__dict__, "_maps": {}}

    def __setstate__(self, state):
        self.__dict__.update(state)

    # ---------------------------------------------------------------------------------------
    def epoch(self, store, epoch: int) -> dict[str, np.ndarray]:
        """{read() key ("topk_values", "rrc/box", ...): array [N, ...]} of `epoch`, read-only."""
        key = f"e{epoch}"
        if key not in self._maps:
            for other in [k for k in self._maps if k.startswith("e")]:
                del self._maps[other]  # unmap the previous epoch (one epoch at a time)
            self._maps[key] = self._load(store, key, {n.removeprefix("aug/"): (n, a) for n, a in
                                                      store.epoch_arrays().items()}, epoch)
        return self._maps[key]

    def rows(self, store) -> dict[str, np.ndarray]:
        """The per-row numeric arrays (gt, skipped, source_hw), read-only."""
        if "rows" not in self._maps:
            arrays = {n: (n, a) for n, a in store.row_arrays().items() if a.dtype.kind not in "OTU"}
            self._maps["rows"] = self._load(store, "rows", arrays, None)
        return self._maps["rows"]

    def nbytes(self, store) -> int:
        """Bytes the cache of one epoch (and the per-row arrays) takes in memory."""
        return sum(int(np.prod(a.shape[1:])) * a.dtype.itemsize for a in store.epoch_arrays().values()) + sum(
            a.nbytes for a in store.row_arrays().values() if a.dtype.kind not in "OTU")

    def loaded(self, epoch: int) -> bool:
        return f"e{epoch}" in self._maps

    # ---------------------------------------------------------------------------------------
    def _load(self, store, key: str, arrays: dict, epoch: int | None) -> dict[str, np.ndarray]:
        where = os.path.join(self.path, key)
        if not os.path.isdir(self.path):
            os.makedirs(self.root, exist_ok=True)
            remove_stale(self.root)
            os.makedirs(self.path, exist_ok=True)
        with open(os.path.join(self.path, "lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process reads; the others wait, then map its files
            try:
                if not os.path.isdir(where):
                    if key.startswith("e"):
                        for old in os.listdir(self.path):  # keep one epoch on the host
                            if old.startswith("e"):
                                shutil.rmtree(os.path.join(self.path, old), ignore_errors=True)
                    self._fill(where, arrays, epoch)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        # plain ndarray views of the read-only maps (indexing a np.memmap costs a subclass round trip)
        return {k: np.load(os.path.join(where, _file(n)), mmap_mode="r").view(np.ndarray) for k, (n, _) in arrays.items()}

    def _fill(self, where: str, arrays: dict, epoch: int | None) -> None:
        """Write each array's rows of `epoch` to `where`/<name>.npy, whole shards at a time on a thread pool
        (blosc decompression releases the GIL), under a temporary name renamed into place when done."""
        tmp = f"{where}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        jobs, outs = [], []
        lead = () if epoch is None else (epoch,)
        for _, (name, arr) in arrays.items():
            axis = len(lead)
            rows = arr.shape[axis]
            step = (arr.shards or arr.chunks)[axis]
            out = np.lib.format.open_memmap(os.path.join(tmp, _file(name)), mode="w+", dtype=arr.dtype,
                                            shape=tuple(arr.shape[axis:]))
            outs.append(out)
            for s0 in range(0, rows, step):
                jobs.append((arr, out, s0, min(rows, s0 + step)))

        def read(job):
            arr, out, s0, s1 = job
            out[s0:s1] = arr[lead + (slice(s0, s1),)]

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(read, jobs))
        for out in outs:
            out.flush()
        del outs
        os.rename(tmp, where)
