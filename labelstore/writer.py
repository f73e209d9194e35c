"""Creating a store and writing it shard by shard, in the background.

A store is filled by *work units*: (epoch group g, partition p) covers rows
[p*shard_rows, (p+1)*shard_rows) of every per-epoch array for the epochs of group g.
Units write whole shards only and then set their own flag in `progress[g, p]` (each flag
is its own object), so any number of writer processes can fill one store, and a killed
run keeps every unit it finished: `--resume` redoes only the units whose flag is unset.
"""

from __future__ import annotations

import datetime as _dt
import os
import queue
import shutil
import threading
import time
import warnings
from typing import Any, Callable

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from . import location
from .integrity import StoreError, check_format
from .schema import FORMAT_NAME, FORMAT_VERSION, ArraySpec, chunking

PROGRESS = "progress"
CREATING = "creating"  # the state of a store whose creation has not finished (see open_or_create)


def codecs_for(dtype: str) -> list:
    """bytes-to-bytes codecs of every inner chunk: blosc(zstd, shuffle) then crc32c."""
    shuffle = "noshuffle" if np.dtype(dtype).itemsize == 1 or dtype == "str" else "shuffle"
    return [BloscCodec(cname="zstd", clevel=5, shuffle=shuffle), Crc32cCodec()]


def create(
    path: str,
    specs: list[ArraySpec],
    attrs: dict[str, Any],
    *,
    chunk_rows: int,
    shard_rows: int,
    epoch_groups: int,
) -> zarr.Group:
    """Create an empty store (overwrites `path`, a local path or URL). attrs are the group attributes
    (see docs); its state is "creating" until open_or_create marks it "running"."""
    layout = [(spec, *chunking(spec, chunk_rows, shard_rows)) for spec in specs]  # fail before touching path
    group = location.open_group(path, mode="w")
    partitions = 1
    for spec, chunks, shards in layout:
        dtype = str if spec.dtype == "str" else spec.dtype
        group.create_array(
            spec.name, shape=spec.shape, chunks=chunks, shards=shards, dtype=dtype,
            compressors=codecs_for(spec.dtype), fill_value=spec.fill_value, dimension_names=spec.dims,
            attributes={"meaning": spec.meaning, "units": spec.units, **spec.attrs},
        )
        rows = spec.shape[spec.row_axis]
        partitions = max(partitions, -(-rows // shards[spec.row_axis]))
    group.create_array(
        PROGRESS, shape=(epoch_groups, partitions), chunks=(1, 1), dtype="uint8", fill_value=0,
        compressors=[Crc32cCodec()], dimension_names=("epoch_group", "partition"),
        attributes={"meaning": "1 once work unit (epoch group, partition) is written"},
    )
    group.attrs.update(
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            **attrs,
            "layout": {"chunk_rows": chunk_rows, "shard_rows": shard_rows, "epoch_groups": epoch_groups,
                       "partitions": partitions},
            "state": CREATING,
            # arrays that xarray should show as coordinates, not data (CF "coordinates" attribute)
            "coordinates": " ".join(n for n in ("sample_id", "gt", PROGRESS) if n == PROGRESS or n in group),
            "created": _now(),
        }
    )
    return group


def open_or_create(path: str, build: Callable[[str], Any], check: Callable[[zarr.Group], None], *,
                   resume: bool = False, overwrite: bool = False, join: bool = False) -> zarr.Group:
    """The store a teacher stage fills: the existing one (resume / join) or a new one.

    Existing: refused unless resume or join; otherwise its format is checked and `check(group)`
    raises if it was started with other settings. New: `build(at)` creates the whole store
    (state "creating"), and the state "running" is written last, so a store is usable exactly
    when its state is "running" or "complete".
    Local paths: built at a temporary path next to `path`, then renamed into place, so concurrent
    processes (join=True) never see a half-created store: the first rename wins, the others open it.
    URLs (object stores have no rename): built in place. One process must create it (with
    `labelstore teach` under several ranks: rank 0; see wait_for_store for the others); a joining
    process that finds it still "creating" waits for it; a store left "creating" by an interrupted
    creation is refused (--resume) or recreated (--overwrite).
    """
    if not location.is_url(path):
        return _open_or_create_local(location.local_path(path), build, check, resume=resume, overwrite=overwrite,
                                     join=join)
    if location.group_exists(path) and not overwrite:
        if not (resume or join):
            raise StoreError(f"{path} exists: pass --resume to finish it or --overwrite to replace it")
        group = wait_for_store(path) if join else location.open_group(path, mode="r+")
        if group.attrs.get("state") == CREATING:
            raise StoreError(f"{path}: half-created store (its creation was interrupted): "
                             "pass --overwrite to recreate it")
        return _checked(group, path, check)
    if overwrite:
        location.remove(path)
    build(path)
    group = location.open_group(path, mode="r+")
    group.attrs["state"] = "running"  # the marker, written last
    return group


def wait_for_store(path: str, timeout: float = 600.0, poll: float = 0.5) -> zarr.Group:
    """Wait until another process has created the store at `path` (state no longer "creating");
    return it opened for writing. Raises StoreError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if location.group_exists(path):
            group = location.open_group(path, mode="r+")
            if group.attrs.get("state") != CREATING:
                return group
        if time.monotonic() > deadline:
            raise StoreError(f"{path}: no finished store appeared within {timeout:.0f}s "
                             "(is the creating process, rank 0, running?)")
        time.sleep(poll)


def _checked(group: zarr.Group, path: str, check: Callable[[zarr.Group], None]) -> zarr.Group:
    check_format(group.attrs.asdict(), path)
    check(group)
    return group


def _open_or_create_local(path: str, build: Callable[[str], Any], check: Callable[[zarr.Group], None], *,
                          resume: bool, overwrite: bool, join: bool) -> zarr.Group:
    if os.path.exists(path) and not overwrite:
        if not (resume or join):
            raise StoreError(f"{path} exists: pass --resume to finish it or --overwrite to replace it")
        return _checked(zarr.open_group(path, mode="r+", zarr_format=3), path, check)
    tmp = f"{os.path.abspath(path)}.creating-{os.getpid()}"
    build(tmp)
    zarr.open_group(tmp, mode="r+", zarr_format=3).attrs["state"] = "running"
    if overwrite and os.path.exists(path):
        shutil.rmtree(path)
    try:
        os.rename(tmp, path)
    except OSError:  # another process created the store first
        shutil.rmtree(tmp, ignore_errors=True)
        if not join:
            raise
        return _open_or_create_local(path, build, check, resume=False, overwrite=False, join=True)
    return zarr.open_group(path, mode="r+", zarr_format=3)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_block(group: zarr.Group, name: str, start: int, data: np.ndarray, epoch: int | None = None) -> None:
    """Write rows [start, start+len(data)) of array `name` (of one epoch, for per-epoch arrays).

    The block must cover whole shards (or end at the array's end): partial shard writes are
    read-modify-write in Zarr and lose data under concurrent writers.
    """
    arr = group[name]
    shard_rows = arr.shards[1 if epoch is not None else 0]
    rows = arr.shape[1 if epoch is not None else 0]
    stop = start + len(data)
    if start % shard_rows or (stop % shard_rows and stop != rows):
        raise ValueError(f"{name}: rows [{start}, {stop}) are not aligned to shards of {shard_rows} rows")  # internal invariant
    if epoch is None:
        arr[start:stop] = data
    else:
        arr[epoch, start:stop] = data


def mark_done(group: zarr.Group, unit: tuple[int, int]) -> None:
    group[PROGRESS][unit[0], unit[1]] = 1


def pending_units(group: zarr.Group) -> list[tuple[int, int]]:
    """Work units (epoch group, partition) not yet flagged done, in order. StoreError naming the
    progress array when it cannot be read (a damaged or truncated chunk)."""
    try:
        done = group[PROGRESS][:]
    except Exception as e:  # a checksum mismatch, a truncated chunk
        raise StoreError(f"{getattr(group.store, 'root', None) or group.store}: cannot read the array {PROGRESS!r} (which work units are done): "
                         f"{type(e).__name__}: {e}; `labelstore verify` lists every damaged shard") from e
    return [(int(g), int(p)) for g, p in zip(*np.nonzero(done == 0))]


def finalize(group: zarr.Group, **extra: Any) -> bool:
    """Mark the store complete when every unit is done, and consolidate its metadata (all arrays'
    zarr.json in the root's, so xarray / zarr open it with one read). Returns whether it is complete."""
    if pending_units(group):
        return False
    group.attrs.update({"state": "complete", "completed": _now(), **extra})
    with warnings.catch_warnings():  # "not part of the Zarr v3 specification": we know, it is for readers
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        zarr.consolidate_metadata(group.store, path=group.path, zarr_format=3)
    return True


class BackgroundWriter:
    """Writes blocks on a thread so the teacher never waits on compression or I/O.

    Jobs run in submission order, so `done(unit)` submitted after a unit's blocks is written
    only after them. `close()` drains the queue and re-raises the first error. A bounded
    queue applies back-pressure when the disk is slower than the teacher.
    """

    def __init__(self, group: zarr.Group, max_pending: int = 16):
        self.group = group
        self._q: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="labelstore-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            if self._error is None:
                try:
                    job()
                except BaseException as e:  # surfaced by the next submit() or close()
                    self._error = e

    def _submit(self, job) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(job)

    def write(self, name: str, start: int, data: np.ndarray, epoch: int | None = None) -> None:
        self._submit(lambda: write_block(self.group, name, start, data, epoch))

    def done(self, unit: tuple[int, int]) -> None:
        self._submit(lambda: mark_done(self.group, unit))

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # finish what was queued (completed units keep their flag), keep the original error
            self._q.put(None)
            self._thread.join()
