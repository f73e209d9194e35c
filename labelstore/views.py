"""Dask and xarray views of a store, and the generic pieces of `labelstore inspect`.

Each task computes its own statistics (pipeline/<task>_inspect.py, named by its entry in
labelstore.trainers.tasks) from these: the dask arrays, a client for --scheduler, a tree of block
sums, the damage check and the per-epoch plot.
"""

from __future__ import annotations

import contextlib

import dask
import dask.array as da
import numpy as np


def to_dask(store) -> dict[str, da.Array]:
    """Every numeric array as a dask array, one task per shard (not per inner chunk)."""
    out = {}
    for name, arr in store.arrays.items():
        if arr.dtype.kind in "OTU":
            continue
        out[name] = da.from_zarr(arr, chunks=arr.shards or arr.chunks)
    return out


def to_xarray(store):
    """An xarray.Dataset over the dask arrays of every array of the store; dimensions are the Zarr
    dimension_names; augmentation parameters named as `read` names them ("rrc/box", "flip/flag").

    Coordinates: epoch, sample (row numbers), sample_id and gt (per sample), and class (the class
    names, when the store records them; topk_indices index it). Lazy: opening reads metadata only,
    no array data (sample_id and gt too are dask arrays). Attributes that are not plain strings or
    numbers (dicts, lists) are JSON strings, so the Dataset can be written to netCDF / Zarr and read
    back with json.loads.
    """
    import xarray as xr

    arrays = to_dask(store)
    coord_arrays = ("sample_id", "gt")
    data_vars, coords = {}, {"epoch": np.arange(store.epochs), "sample": np.arange(store.num_samples)}
    for name, darr in arrays.items():
        if name in coord_arrays:
            continue
        dims = store.arrays[name].metadata.dimension_names
        data_vars[name.removeprefix("aug/")] = (dims, darr, _plain_attrs(dict(store.arrays[name].attrs)))
    for name in coord_arrays:
        if name in store.arrays:
            arr = store.arrays[name]
            coords[name] = (arr.metadata.dimension_names, da.from_zarr(arr, chunks=arr.shards or arr.chunks))
    if store.attrs.get("classes"):
        coords["class"] = np.asarray(store.attrs["classes"], dtype=str)
    return xr.Dataset(data_vars, coords=coords, attrs=_plain_attrs(store.attrs))


def _plain_attrs(attrs: dict) -> dict:
    """Strings, numbers and bools as they are; everything else as JSON."""
    import json

    return {k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v) for k, v in attrs.items()}


def dask_client(scheduler: str | None):
    """A dask.distributed Client of `scheduler` (inspect --scheduler) as a context; None: local threads."""
    if scheduler is None:
        return contextlib.nullcontext()
    from distributed import Client

    return Client(scheduler)


def mean_topk_mass(store) -> float:
    """mean over all (epoch, row) of sum_k topk_values: the share of the teacher's probability kept."""
    return float(to_dask(store)["topk_values"].astype("float32").sum(-1).mean().compute())


ROWS_PER_TASK = 65_536  # rows per dask task of a pass over blocks of rows (whole shards; all epochs of them)


def row_blocks(rows: int, shard: int) -> list[tuple[int, int]]:
    """[(r0, r1)]: rows 0..rows-1 in blocks of whole shards (`shard` rows each), about ROWS_PER_TASK rows a block."""
    step = shard * max(1, ROWS_PER_TASK // shard)
    return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]


def add_sums(*parts: dict) -> dict:
    """The key-wise sum of dicts of numbers / numpy arrays with the same keys."""
    out = dict(parts[0])
    for p in parts[1:]:
        for k, v in p.items():
            out[k] = out[k] + v
    return out


def compute_sums(parts: list, scheduler: str | None = None) -> dict:
    """Compute dask.delayed dicts of sums (one per block of rows) and add them in a tree of fan-in 8,
    so at most a few blocks' sums are in memory at once; every shard a block touches is read whole
    (epoch_cache.whole_reads)."""
    from .epoch_cache import whole_reads

    while len(parts) > 1:
        parts = [dask.delayed(add_sums, pure=True)(*parts[i : i + 8]) for i in range(0, len(parts), 8)]
    with dask_client(scheduler), whole_reads():
        (out,) = dask.compute(parts[0])
    return out


def name_damage(store, stats, *args, **kwargs):
    """stats(store, *args, **kwargs), the statistics of `labelstore inspect` (the function the store's
    task names); an error on a damaged store becomes one StoreError naming the damage (from the chunk
    checksums), any other error propagates with its traceback."""
    from .errors import StoreError
    from .integrity import verify_chunks

    try:
        return stats(store, *args, **kwargs)
    except Exception:
        problems = verify_chunks(store.group)
        if not problems:
            raise  # not damage: a bug, keep the traceback
        raise StoreError(f"{store.path}: damaged, cannot compute statistics: {'; '.join(problems)}") from None


def plot_stats(stats: dict, path: str) -> None:
    """One PNG: per-epoch curves of each statistic, and the histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per, hists = stats["per_epoch"], stats.get("histograms", {})
    n = len(per) + len(hists)
    cols = 3
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    axes = axes.ravel()
    for ax, (name, values) in zip(axes, per.items()):
        ax.plot(range(len(values)), values, marker="o")
        ax.set_title(name)
        ax.set_xlabel("epoch")
    for ax, (name, h) in zip(axes[len(per):], hists.items()):
        edges = np.asarray(h["edges"])
        ax.bar(edges[:-1], h["counts"], width=np.diff(edges), align="edge")
        ax.set_title(name)
    for ax in axes[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
