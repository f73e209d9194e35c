"""One epoch of a store's records in shared memory: read once (whole shards, in parallel), then indexed.

    cache = EpochCache()                      # names a directory of its own (made on first load)
    rec = cache.take(store, e, idx)           # {read() key: array [n, ...]}, copies of the cached rows

Where it lives: a directory `labelstore-cache-<pid>-<token>` under $LABELSTORE_CACHE_DIR, else
/dev/shm (shared memory on Linux), else the system temp directory. An epoch is one `.npy` file
there (a structured array: one record per sample holding every per-epoch array and the per-row
ones), memory-mapped by every process that reads it, so the records are held
once per host however many DataLoader workers index them (the pages are the page cache's,
shared, not copied into each process). At most one epoch is kept: loading epoch e removes the
file of the other (processes still mapping it keep its pages until they move on). Loading takes a file lock in the
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

from .errors import StoreError
from .writer import pid_alive

PREFIX = "labelstore-cache-"
WHOLE_READS = {"codec_pipeline.batch_size": 64}  # zarr config for reads of whole shards: ~1/3 less CPU than 1


def whole_reads():
    """Context: zarr decodes the inner chunks of a read in batches of 64 (for reads of whole shards)."""
    import zarr

    return zarr.config.set(WHOLE_READS)


def cache_root() -> str:
    """$LABELSTORE_CACHE_DIR, else /dev/shm when writable, else the temp directory."""
    root = os.environ.get("LABELSTORE_CACHE_DIR")
    if root:
        return root
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


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
        if not pid_alive(pid):
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


def fields(store) -> dict[str, tuple[str, object]]:
    """{read() key: (array name, zarr array)} of everything the cache holds: every per-epoch array ("aug/"
    dropped, as `read` names them) and the numeric per-row arrays (gt, skipped, source_hw)."""
    out = {n.removeprefix("aug/"): (n, a) for n, a in store.epoch_arrays().items()}
    out.update({n: (n, a) for n, a in store.row_arrays().items() if a.dtype.kind not in "OTU"})
    return out


def derived_fields(store) -> dict[str, tuple[np.dtype, tuple]]:
    """{read() key: (dtype, trailing shape)} of the augmentation parameters a store derives from its
    policy instead of storing them (attribute aug_params = "derived"; none otherwise)."""
    if not store.params_derived:
        return {}
    one = store.derived_params(0, np.zeros(1, np.int64))
    return {k: (v.dtype, tuple(v.shape[1:])) for k, v in one.items()}


def record_dtype(store) -> np.dtype:
    """One record per row: a field per array of `fields` (its trailing shape) and per derived
    parameter, aligned."""
    out = []
    for key, (_, a) in fields(store).items():
        tail = tuple(a.shape[2:] if a.metadata.dimension_names[0] == "epoch" else a.shape[1:])
        out.append((key, a.dtype, tail) if tail else (key, a.dtype))
    for key, (dtype, tail) in derived_fields(store).items():
        out.append((key, dtype, tail) if tail else (key, dtype))
    return np.dtype(out, align=True)


class EpochCache:
    """Memory-mapped records of one epoch at a time, shared by every process given this object.

    An epoch is one file of N records of `record_dtype` (row-major: one random row is one or two
    cache lines, whatever the number of arrays), so a shuffled batch is one gather."""

    def __init__(self, root: str | None = None, threads: int | None = None):
        self.root = root or cache_root()
        self.owner = os.getpid()
        self.path = os.path.join(self.root, f"{PREFIX}{self.owner}-{secrets.token_hex(4)}")  # made on first load
        self.threads = threads or min(8, os.cpu_count() or 1)
        self._maps: dict[int, np.ndarray] = {}  # epoch -> its mapped records [N]
        weakref.finalize(self, _remove, self.path, self.owner)

    def __getstate__(self):  # a process it is handed to maps the files itself, and never removes them
        return {**self.__dict__, "_maps": {}}

    def __setstate__(self, state):
        self.__dict__.update(state)

    @staticmethod
    def supports(store) -> bool:
        """Whether every array of `fields` has one row per sample (not so for stores whose arrays have
        other row axes: captions and videos)."""
        n = store.num_samples
        return all(a.shape[1 if a.metadata.dimension_names[0] == "epoch" else 0] == n
                   for _, a in fields(store).values())

    @staticmethod
    def nbytes(store) -> int:
        """Bytes one cached epoch takes in memory."""
        return record_dtype(store).itemsize * store.num_samples

    def loaded(self, epoch: int) -> bool:
        return epoch in self._maps

    def epoch(self, store, epoch: int) -> np.ndarray:
        """The records of `epoch`: a read-only structured array [N] (fields: `fields`), loaded on first use."""
        if epoch not in self._maps:
            self._maps.clear()  # unmap the previous epoch (one epoch at a time)
            try:
                self._maps[epoch] = self._load(store, epoch)
            except StoreError:
                raise
            except (OSError, ValueError, RuntimeError) as e:  # a checksum mismatch, a truncated shard
                raise StoreError(f"{store.path}: cannot read epoch {epoch}: {type(e).__name__}: {e}; "
                                 "`labelstore verify` lists every damaged shard") from e
        return self._maps[epoch]

    def take(self, store, epoch: int, idx: np.ndarray | None, keys=None) -> dict[str, np.ndarray]:
        """{key: contiguous copy of rows idx (all when None)} for `keys` (default: every field)."""
        rec = self.epoch(store, epoch)
        if idx is None:
            got = np.array(rec)
        else:  # one gather of whole records, as rows of bytes (a structured gather is ~50x slower)
            got = np.take(rec.view(np.uint8).reshape(len(rec), -1), idx, axis=0).view(rec.dtype).reshape(len(idx))
        return {k: np.ascontiguousarray(got[k]) for k in (keys if keys is not None else got.dtype.names)}

    # ---------------------------------------------------------------------------------------
    def _load(self, store, epoch: int) -> np.ndarray:
        where = os.path.join(self.path, f"e{epoch}.npy")
        if not os.path.isdir(self.path):
            os.makedirs(self.root, exist_ok=True)
            remove_stale(self.root)
            os.makedirs(self.path, exist_ok=True)
        with open(os.path.join(self.path, "lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process reads; the others wait, then map its file
            try:
                if not os.path.exists(where):
                    for old in os.listdir(self.path):  # keep one epoch on the host
                        if old.startswith("e"):
                            os.remove(os.path.join(self.path, old))
                    self._fill(store, where, epoch)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        # a plain ndarray view of the read-only map (indexing a np.memmap costs a subclass round trip)
        return np.load(where, mmap_mode="r").view(np.ndarray)

    def _fill(self, store, where: str, epoch: int) -> None:
        """Write the records of `epoch` to `where`, whole shards at a time on a thread pool (blosc
        decompression releases the GIL), under a temporary name renamed into place when done."""
        tmp = f"{where}.tmp-{os.getpid()}"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=record_dtype(store), shape=(store.num_samples,))
        jobs = []
        for key, (_, arr) in fields(store).items():
            lead = (epoch,) if arr.metadata.dimension_names[0] == "epoch" else ()
            rows = arr.shape[len(lead)]
            step = (arr.shards or arr.chunks)[len(lead)]
            jobs += [(key, arr, lead, s0, min(rows, s0 + step)) for s0 in range(0, rows, step)]

        def read(job):
            key, arr, lead, s0, s1 = job
            out[key][s0:s1] = arr[lead + (slice(s0, s1),)]

        try:
            with whole_reads(), ThreadPoolExecutor(self.threads) as pool:
                list(pool.map(read, jobs))
            if store.params_derived:  # the parameters the teacher rendered, recomputed once per epoch
                for key, v in store.derived_params(epoch, None).items():
                    out[key][:] = v
            out.flush()
        except BaseException:
            os.remove(tmp)
            raise
        del out
        os.rename(tmp, where)
