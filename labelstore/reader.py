"""Opening a store and reading records of one epoch."""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any, Callable

import numpy as np
import zarr

from . import location, manifest
from .epoch_cache import EpochCache, derived_fields, memory_budget
from .integrity import StoreError, check_expected, check_format, iter_arrays
from .schema import ON_REQUEST, PARAMS_DERIVED
from .writer import PROGRESS, pending_units

# (store, epoch, indices int64 [n] or None) -> {"op/param": [n, ...]}: the augmentation parameters of a
# store whose parameters are derived (attribute aug_params = "derived"). The store layer cannot import the
# pipeline that owns the policy, so labelstore.pipeline registers it when imported (pipeline/replay.py).
ParamSource = Callable[["LabelStore", int, "np.ndarray | None"], dict]
_param_source: ParamSource | None = None


def register_param_source(fn: ParamSource) -> None:
    """Set the function that recomputes derived augmentation parameters (see `LabelStore.read`)."""
    global _param_source
    _param_source = fn


def open(path: str, mode: str = "r", allow_incomplete: bool = False,  # noqa: A001
         storage_options: dict[str, Any] | None = None, check_metadata: bool = True) -> "LabelStore":
    """Open a label store: a local path or any URL fsspec understands (s3://, gs://, memory://).

    storage_options: passed to the fsspec file system of a URL, e.g. {"endpoint_url":
    "http://127.0.0.1:9000", "key": ..., "secret": ...} for s3:// (default: fsspec's configuration
    and the environment, see labelstore/location.py).
    Raises StoreError if it is not a labelstore store, has another format version, its metadata
    (root attributes, an array's zarr.json) differs from what the writer recorded or is gone
    (unless check_metadata=False, how `verify` lists them), or its teacher stage has not finished
    (unless allow_incomplete=True). Every read goes through a manifest.CheckedStore: an object the
    store says it wrote that is absent raises StoreError instead of reading as fill values.
    """
    where = str(path)
    try:
        if isinstance(path, (str, os.PathLike)) and not location.group_exists(path, storage_options):
            raise FileNotFoundError("no zarr.json")
        group = location.open_group(path, mode, storage_options)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise StoreError(f"{where}: no label store here ({e})") from None
    attrs = group.attrs.asdict()
    check_format(attrs, where)
    if check_metadata:
        problems = manifest.metadata_problems(group)
        if problems:
            raise StoreError(f"{where}: the store's metadata was changed after it was written: {'; '.join(problems)} "
                             "(`labelstore verify` lists every problem; rebuild the store or restore the file)")
    store = LabelStore(manifest.checked(group, where, mode), where)
    if not allow_incomplete and not store.complete:
        done, total = store.progress()
        raise StoreError(
            f"{where}: the teacher stage has not finished ({done}/{total} work units written); "
            "finish it with `labelstore teach ... --resume`, or pass allow_incomplete=True / --allow-incomplete"
        )
    return store


class LabelStore:
    """A label store: attributes, the sample table, and per-epoch records."""

    def __init__(self, group: zarr.Group, path: str):
        self.group = group
        self.path = path
        self.epoch_cache = EpochCache()  # shared-memory records of one epoch (labelstore/epoch_cache.py)
        self._blocks: dict = {}  # (array, epoch) -> {shard: rows}: the last WINDOW_SHARDS shards read

    # -- attributes ------------------------------------------------------------------------
    @cached_property
    def attrs(self) -> dict:
        return self.group.attrs.asdict()

    def refresh(self) -> None:
        self.__dict__.pop("attrs", None)

    task = property(lambda self: self.attrs["task"])
    epochs = property(lambda self: int(self.attrs["epochs"]))
    num_samples = property(lambda self: int(self.attrs["num_samples"]))
    num_classes = property(lambda self: int(self.attrs["num_classes"]))
    top_k = property(lambda self: int(self.attrs["top_k"]))
    mc_passes = property(lambda self: int(self.attrs.get("mc_passes", 0)))
    complete = property(lambda self: self.attrs.get("state") == "complete")
    params_derived = property(lambda self: self.attrs.get("aug_params") == PARAMS_DERIVED)

    def progress(self) -> tuple[int, int]:
        """(work units done, total work units): one read of the progress array (none when complete)."""
        total = int(np.prod(self.group[PROGRESS].shape))
        return total - len(pending_units(self.group)), total

    def written_units(self) -> np.ndarray:
        """bool [epoch groups, partitions]: the work units whose records are written."""
        if self.complete:
            return np.ones(self.group[PROGRESS].shape, bool)
        return np.asarray(self.group[PROGRESS][...]) == 1

    def written_rows(self, name: str) -> np.ndarray:
        """bool [epochs, rows] (per-epoch arrays) or [rows]: the rows of array `name` a finished work
        unit wrote (all of them in a complete store); the others read as fill values."""
        arr = self.group[name]
        done = self.written_units()
        lay = manifest.layout_of(self.attrs.get("integrity", {})).get(name)
        per_epoch = arr.metadata.dimension_names[0] == "epoch"
        if lay is None:  # no record of the layout: trust the state alone
            return np.full(arr.shape[:2] if per_epoch else arr.shape[:1], bool(done.all()))
        _, v, s = lay
        rows = arr.shape[1 if per_epoch else 0]
        part = np.minimum(np.arange(rows) // s, done.shape[1] - 1)
        if not per_epoch:
            return done[0, part]
        groups = np.minimum(np.arange(arr.shape[0]) // v, done.shape[0] - 1)
        return done[groups[:, None], part[None, :]]

    def check(self, *, dataset: dict | None = None, teacher: dict | None = None, policy: dict | None = None) -> None:
        """Raise StoreMismatch naming the field if the store was built from something else."""
        check_expected(self.attrs, self.path, dataset=dataset, teacher=teacher, policy=policy)

    # -- arrays ----------------------------------------------------------------------------
    @cached_property
    def arrays(self) -> dict[str, zarr.Array]:
        """All data arrays by path ("topk_values", "aug/rrc/box", ...), without bookkeeping."""
        return {name: arr for name, arr in iter_arrays(self.group) if name not in manifest.BOOKKEEPING}

    def epoch_arrays(self) -> dict[str, zarr.Array]:
        """The per-epoch arrays `read` returns (not those read on request: schema.ON_REQUEST)."""
        return {n: a for n, a in self.arrays.items()
                if a.metadata.dimension_names[0] == "epoch" and not n.startswith(ON_REQUEST)}

    def row_arrays(self) -> dict[str, zarr.Array]:
        """The per-row arrays `read` returns with include_rows (not those read on request: schema.ON_REQUEST)."""
        return {n: a for n, a in self.arrays.items()
                if a.metadata.dimension_names[0] != "epoch" and not n.startswith(ON_REQUEST)}

    @cached_property
    def ids(self) -> np.ndarray:
        """The sample table: ids[i] is sample i's path relative to the data root (or 'index:i')."""
        return np.asarray(self.group["sample_id"][:], dtype=object)

    def read(self, epoch: int, indices: np.ndarray | None = None, include_rows: bool = True,
             cache: bool | None = None) -> dict[str, np.ndarray]:
        """Records of `epoch` for `indices` (all samples when None), in the order given.

        Keys: every per-epoch array by name with "aug/" dropped from augmentation parameters
        (so "rrc/box" is what the policy calls it): topk_values [n, K] float16, topk_indices
        [n, K], gt_prob [n], mc_values [n, T, K] when recorded, view_digest [n], "op/param"
        [n, ...]; with include_rows also the per-row arrays except the sample table:
        gt [n], skipped [n], source_hw [n, 2]; and "index" [n].

        How (see docs/store-format.md, Reading), with cache=None (automatic): scattered indices (a shuffled batch) load the
        whole epoch once into the shared-memory epoch cache (`self.epoch_cache`, one epoch at a
        time, when it fits in `cache_budget()` bytes) and index it in memory; later reads of that
        epoch, scattered or not, come from there. Contiguous indices of an epoch not cached read
        just the chunks they need. An epoch too large for the cache is read shard by shard,
        keeping the last WINDOW_SHARDS shards of each array decoded, so a shard-aware order
        (labelstore.order.quasi_random_order) reads each shard once. cache=True: always through the
        epoch cache; cache=False: never (chunk reads, as for an epoch too large for it).
        A store written without --store-params (attribute aug_params = "derived") has no aug/* arrays:
        its "op/param" entries are recomputed from the policy's counter-based RNG (bit-identical to what
        the teacher rendered), which needs labelstore.pipeline imported.
        """
        if not 0 <= epoch < self.epochs:
            raise IndexError(f"{self.path}: epoch {epoch} out of range (store has {self.epochs} epochs)")
        idx = None if indices is None else np.asarray(indices, dtype=np.int64)
        if idx is not None and idx.size and (idx.min() < 0 or idx.max() >= self.num_samples):
            raise IndexError(f"{self.path}: sample index out of range [0, {self.num_samples})")
        if cache is None:
            cache = self.epoch_cache.loaded(epoch) or (idx is not None and not _dense(idx) and self.fits_cache())
        if cache and self._cache_supported:
            return self._read_cached(epoch, idx, include_rows)
        out: dict[str, np.ndarray] = {}
        for name, arr in self.epoch_arrays().items():
            out[name.removeprefix("aug/")] = self._take(name, arr, idx, epoch)
        if self.params_derived:
            out.update(self.derived_params(epoch, idx))
        if include_rows:
            for name, arr in self.row_arrays().items():
                if arr.dtype.kind not in "OTU" and name != "sample_id":
                    out[name] = self._take(name, arr, idx)
        out["index"] = np.arange(self.num_samples) if idx is None else idx
        return out

    def cache_budget(self) -> int:
        """Largest epoch (bytes in memory) the epoch cache takes: $LABELSTORE_CACHE_BYTES, else half the
        memory available now, at most the free space of the cache's file system."""
        env = os.environ.get("LABELSTORE_CACHE_BYTES")
        if env is not None:
            return int(float(env))
        return memory_budget(self.epoch_cache.root)

    @cached_property
    def _cache_supported(self) -> bool:
        return self.epoch_cache.supports(self)

    def fits_cache(self) -> bool:
        """Whether the epoch cache takes this store: complete (a store still being written would go
        stale in it), one row per sample in every array, and one epoch's records in cache_budget()."""
        if "_fits" not in self.__dict__:
            self.__dict__["_fits"] = self.complete and self._cache_supported and self.epoch_cache.nbytes(self) <= self.cache_budget()
        return self.__dict__["_fits"]

    @cached_property
    def _cache_keys(self) -> tuple[list[str], list[str]]:
        """(read() keys of the per-epoch arrays, of the numeric per-row arrays)."""
        return ([n.removeprefix("aug/") for n in self.epoch_arrays()] + list(derived_fields(self)),
                [n for n, a in self.row_arrays().items() if a.dtype.kind not in "OTU"])

    def _read_cached(self, epoch: int, idx: np.ndarray | None, include_rows: bool) -> dict[str, np.ndarray]:
        per_epoch, per_row = self._cache_keys
        keys = per_epoch + per_row if include_rows else per_epoch
        out = self.epoch_cache.take(self, epoch, idx, keys)  # StoreError naming the epoch if it cannot be read
        out["index"] = np.arange(self.num_samples) if idx is None else idx
        return out
    def derived_params(self, epoch: int, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """{"op/param": [n, ...]} of a store whose augmentation parameters are derived (all samples when
        indices is None), from the function labelstore.pipeline registers (pipeline/replay.py)."""
        if _param_source is None:
            raise StoreError(f"{self.path}: its augmentation parameters are derived from the policy (written "
                             "without --store-params): `import labelstore.pipeline` to read them")
        return _param_source(self, epoch, indices)

    def read_array(self, name: str, epoch: int | None = None, indices: np.ndarray | None = None) -> np.ndarray:
        """One array's rows `indices` (all when None), of `epoch` for per-epoch arrays, in the order given.

        For stores whose arrays have different row axes (captions and videos, say), where
        `read` would index them all alike.
        """
        idx = None if indices is None else np.asarray(indices, dtype=np.int64)
        return self._take(name, self.group[name], idx, epoch)

    def _take(self, name: str, arr: zarr.Array, idx: np.ndarray | None, epoch: int | None = None) -> np.ndarray:
        try:
            if idx is not None and not _dense(idx):
                return self._take_windowed(name, arr, idx, epoch)
            return _take(arr, idx, epoch)
        except Exception as e:  # a checksum mismatch or a truncated / unreadable shard
            where = f"{name}" + ("" if epoch is None else f" epoch {epoch}")
            raise StoreError(f"{self.path}: cannot read {where}: {type(e).__name__}: {e}; "
                             f"`labelstore verify` lists every damaged shard") from e

    def _take_windowed(self, name: str, arr: zarr.Array, idx: np.ndarray, epoch: int | None) -> np.ndarray:
        """arr[(epoch,) idx] through the last WINDOW_SHARDS decoded shards of (arr, epoch), each read
        whole (the cheapest zarr read: a slice of whole shards)."""
        lead = () if epoch is None else (epoch,)
        axis = len(lead)
        cr = (arr.shards or arr.chunks)[axis]
        held = self._blocks.setdefault((name, epoch), {})
        for key in [k for k in self._blocks if k[0] == name and k[1] != epoch]:
            del self._blocks[key]
        which = idx // cr
        need = np.unique(which).tolist()
        for c in need:
            if c not in held:
                held[c] = arr[lead + (slice(c * cr, min(arr.shape[axis], (c + 1) * cr)),)]
        got = {}
        for c in need:
            got[c] = held.pop(c)
            held[c] = got[c]  # most recently used last
        while len(held) > max(WINDOW_SHARDS, 1):
            held.pop(next(iter(held)))  # the oldest
        out = np.empty((len(idx), *arr.shape[axis + 1 :]), dtype=arr.dtype)
        for c, rows in got.items():
            m = which == c
            out[m] = rows[idx[m] - c * cr]
        return out

    # -- size --------------------------------------------------------------------------------
    def nbytes_on_disk(self) -> dict[str, int]:
        """Stored bytes of the data objects of each array: from the attribute "sizes" the writer
        wrote at completion (no listing); of an unfinished store, from its manifest records."""
        sizes = self.attrs.get("sizes")
        if not isinstance(sizes, dict):
            sizes = {}
            for key, (nbytes, _) in manifest.unit_records(self.group).items():
                name = manifest.array_of(key)[0]
                sizes[name] = sizes.get(name, 0) + int(nbytes)
        return {name: int(sizes.get(name, 0)) for name in self.arrays}

    def bytes_per_view_table(self) -> list[dict]:
        """Stored bytes per view of every array, largest first: [{name, bytes, bytes_per_view, per_epoch}].

        bytes_per_view = stored bytes / (epochs x samples), per-row arrays included (their share falls as
        1/epochs); the total of the column is the all-in figure without metadata (see bytes_per_view).
        """
        views = max(1, self.epochs * self.num_samples)
        per_epoch = {n for n, a in self.arrays.items() if a.metadata.dimension_names[0] == "epoch"}
        rows = [{"name": n, "bytes": b, "bytes_per_view": b / views, "per_epoch": n in per_epoch}
                for n, b in self.nbytes_on_disk().items()]
        return sorted(rows, key=lambda r: (-r["bytes"], r["name"]))

    def bytes_per_view(self) -> float:
        """All stored bytes of the data arrays divided by epochs x samples (metadata, a few KB, aside)."""
        return sum(self.nbytes_on_disk().values()) / max(1, self.epochs * self.num_samples)

    # -- views -----------------------------------------------------------------------------
    def to_dask(self) -> dict:
        from .views import to_dask

        return to_dask(self)

    def to_xarray(self):
        from .views import to_xarray

        return to_xarray(self)

    def __repr__(self) -> str:
        return (f"LabelStore({self.path!r}, task={self.attrs.get('task')}, epochs={self.attrs.get('epochs')}, "
                f"samples={self.attrs.get('num_samples')}, state={self.attrs.get('state')})")


WINDOW_SHARDS = 16  # decoded shards kept per array for scattered reads without the epoch cache


def _dense(idx: np.ndarray) -> bool:
    """Indices spanning at most 4x their count: read as one contiguous range."""
    return idx.size == 0 or int(idx.max()) - int(idx.min()) + 1 <= 4 * idx.size


def _take(arr: zarr.Array, idx: np.ndarray | None, epoch: int | None = None) -> np.ndarray:
    """arr[(epoch,) idx] reading only the chunks that hold idx, in the order of idx."""
    lead = () if epoch is None else (epoch,)
    if idx is None:
        return arr[lead + (slice(None),)]
    if idx.size == 0:
        return np.empty((0, *arr.shape[len(lead) + 1 :]), dtype=arr.dtype)
    lo, hi = int(idx.min()), int(idx.max()) + 1
    if _dense(idx):  # one contiguous read
        return arr[lead + (slice(lo, hi),)][idx - lo]
    order = np.argsort(idx, kind="stable")
    got = arr.oindex[lead + (idx[order],)]
    out = np.empty_like(got)
    out[order] = got
    return out
