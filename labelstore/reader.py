"""Opening a store and reading records of one epoch."""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

import numpy as np
import zarr

from . import location, manifest
from .integrity import StoreError, check_expected, check_format, iter_arrays
from .writer import PROGRESS, pending_units


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
        return {n: a for n, a in self.arrays.items() if a.metadata.dimension_names[0] == "epoch"}

    def row_arrays(self) -> dict[str, zarr.Array]:
        return {n: a for n, a in self.arrays.items() if a.metadata.dimension_names[0] != "epoch"}

    @cached_property
    def ids(self) -> np.ndarray:
        """The sample table: ids[i] is sample i's path relative to the data root (or 'index:i')."""
        return np.asarray(self.group["sample_id"][:], dtype=object)

    def read(self, epoch: int, indices: np.ndarray | None = None, include_rows: bool = True) -> dict[str, np.ndarray]:
        """Records of `epoch` for `indices` (all samples when None), in the order given.

        Keys: every per-epoch array by name with "aug/" dropped from augmentation parameters
        (so "rrc/box" is what the policy calls it): topk_values [n, K] float16, topk_indices
        [n, K], gt_prob [n], mc_values [n, T, K] when recorded, view_digest [n], "op/param"
        [n, ...]; with include_rows also the per-row arrays except the sample table:
        gt [n], skipped [n], source_hw [n, 2]; and "index" [n].
        """
        if not 0 <= epoch < self.epochs:
            raise IndexError(f"{self.path}: epoch {epoch} out of range (store has {self.epochs} epochs)")
        idx = None if indices is None else np.asarray(indices, dtype=np.int64)
        if idx is not None and idx.size and (idx.min() < 0 or idx.max() >= self.num_samples):
            raise IndexError(f"{self.path}: sample index out of range [0, {self.num_samples})")
        out: dict[str, np.ndarray] = {}
        for name, arr in self.epoch_arrays().items():
            out[name.removeprefix("aug/")] = self._take(name, arr, idx, epoch)
        if include_rows:
            for name, arr in self.row_arrays().items():
                if arr.dtype.kind not in "OTU" and name != "sample_id":
                    out[name] = self._take(name, arr, idx)
        out["index"] = np.arange(self.num_samples) if idx is None else idx
        return out

    def read_array(self, name: str, epoch: int | None = None, indices: np.ndarray | None = None) -> np.ndarray:
        """One array's rows `indices` (all when None), of `epoch` for per-epoch arrays, in the order given.

        For stores whose arrays have different row axes (captions and videos, say), where
        `read` would index them all alike.
        """
        idx = None if indices is None else np.asarray(indices, dtype=np.int64)
        return self._take(name, self.group[name], idx, epoch)

    def _take(self, name: str, arr: zarr.Array, idx: np.ndarray | None, epoch: int | None = None) -> np.ndarray:
        try:
            return _take(arr, idx, epoch)
        except Exception as e:  # a checksum mismatch or a truncated / unreadable shard
            where = f"{name}" + ("" if epoch is None else f" epoch {epoch}")
            raise StoreError(f"{self.path}: cannot read {where}: {type(e).__name__}: {e}; "
                             f"`labelstore verify` lists every damaged shard") from e

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


def _take(arr: zarr.Array, idx: np.ndarray | None, epoch: int | None = None) -> np.ndarray:
    """arr[(epoch,) idx] reading only the chunks that hold idx, in the order of idx."""
    lead = () if epoch is None else (epoch,)
    if idx is None:
        return arr[lead + (slice(None),)]
    if idx.size == 0:
        return np.empty((0, *arr.shape[len(lead) + 1 :]), dtype=arr.dtype)
    lo, hi = int(idx.min()), int(idx.max()) + 1
    if hi - lo <= 4 * idx.size:  # dense enough: one contiguous read
        return arr[lead + (slice(lo, hi),)][idx - lo]
    order = np.argsort(idx, kind="stable")
    got = arr.oindex[lead + (idx[order],)]
    out = np.empty_like(got)
    out[order] = got
    return out
