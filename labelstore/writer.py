"""Creating a store and writing it shard by shard, in the background.

A store is filled by *work units*: (epoch group g, partition p) covers rows
[p*shard_rows, (p+1)*shard_rows) of every per-epoch array for the epochs of group g.
Units write whole shards only, then record what they wrote in `manifest[g, p]` and set their
own flag in `progress[g, p]` (each record and flag is its own object), so any number of writer
processes can fill one store, and a killed run keeps every unit it finished: `--resume` redoes
only the units whose flag is unset. See labelstore/manifest.py for how readers use the records.
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import os
import queue
import shutil
import threading
import time
import warnings
from typing import Any, Callable, Mapping

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, TransposeCodec

from . import location, manifest
from .integrity import StoreError, check_format
from .manifest import MANIFEST, PROGRESS
from .schema import FORMAT_NAME, FORMAT_VERSION, ArraySpec, chunking, round_mantissa

CREATING = "creating"  # the state of a store whose creation has not finished (see open_or_create)


def codecs_for(spec: ArraySpec) -> tuple[list, list]:
    """(array-to-array filters, bytes-to-bytes compressors) of every inner chunk of `spec`, by its `codec`:

      "default": blosc(zstd 5, byte shuffle; no shuffle for 1-byte types and strings) -> crc32c
      "ids":     transpose to k-major (all top-1 ids of the chunk, then all top-2, ...) ->
                 blosc(zstd 7, byte shuffle) -> crc32c   (class ids: runs of the same class compress)
      "probs":   blosc(zstd 7, bit shuffle) -> crc32c    (float16 with mantissa_bits kept: the zeroed
                 low mantissa bits become whole zero bit-planes)
      "features": blosc(zstd 1, byte shuffle; none for int8) -> crc32c   (teacher features: dense values
                 that compress little; the cheapest zstd level keeps the writer ahead of the disk)
    Every recipe is lossless; the only loss is the mantissa rounding before the write (write_block).
    """
    if spec.codec == "ids":
        order = tuple(i for i in range(len(spec.shape)) if i != spec.row_axis) + (spec.row_axis,)
        return [TransposeCodec(order=order)], [BloscCodec(cname="zstd", clevel=7, shuffle="shuffle"), Crc32cCodec()]
    if spec.codec == "probs":
        return [], [BloscCodec(cname="zstd", clevel=7, shuffle="bitshuffle"), Crc32cCodec()]
    shuffle = "noshuffle" if spec.dtype == "str" or np.dtype(spec.dtype).itemsize == 1 else "shuffle"
    if spec.codec == "features":
        return [], [BloscCodec(cname="zstd", clevel=1, shuffle=shuffle), Crc32cCodec()]
    if spec.codec != "default":
        raise ValueError(f"{spec.name}: unknown codec recipe {spec.codec!r}")  # internal invariant
    return [], [BloscCodec(cname="zstd", clevel=5, shuffle=shuffle), Crc32cCodec()]


def create(
    path: str,
    specs: list[ArraySpec],
    attrs: dict[str, Any],
    *,
    chunk_rows: int,
    shard_rows: int | Mapping[str, int],
    epoch_groups: int,
    epochs_per_group: int | None = None,
) -> zarr.Group:
    """Create an empty store (overwrites `path`, a local path or URL). attrs are the group attributes
    (see docs); its state is "creating" until open_or_create marks it "running". The root zarr.json
    is the first object written and already names the format and the state "creating", so a store
    interrupted at any point of its creation is recognised as a half-created labelstore store.
    shard_rows: rows per shard of every array, or per array {name: rows per shard} (each a multiple of
    chunk_rows; a shard never holds more than the array's rows rounded up to whole chunks).
    epochs_per_group: epochs of one work unit (default: ceil(epochs / epoch_groups))."""
    per_array = shard_rows if isinstance(shard_rows, Mapping) else {spec.name: shard_rows for spec in specs}
    layout = [(spec, *chunking(spec, chunk_rows, per_array[spec.name])) for spec in specs]  # fail before touching path
    partitions = 1
    for spec, _, shards in layout:
        partitions = max(partitions, -(-spec.shape[spec.row_axis] // shards[spec.row_axis]))
    epochs = int(attrs.get("epochs", epoch_groups))
    names = {spec.name for spec in specs}
    root = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **attrs,
        "layout": {"chunk_rows": chunk_rows, "shard_rows": dict(shard_rows) if isinstance(shard_rows, Mapping) else shard_rows,
                   "epoch_groups": epoch_groups, "partitions": partitions, "epochs_per_group": epochs_per_group or -(-epochs // epoch_groups)},
        "state": CREATING,
        # arrays that xarray should show as coordinates, not data (CF "coordinates" attribute)
        "coordinates": " ".join(n for n in ("sample_id", "gt", PROGRESS) if n == PROGRESS or n in names),
        "created": _now(),
    }
    group = location.open_group(path, mode="w", attributes=root)
    for spec, chunks, shards in layout:
        dtype = str if spec.dtype == "str" else spec.dtype
        filters, compressors = codecs_for(spec)
        group.create_array(
            spec.name, shape=spec.shape, chunks=chunks, shards=shards, dtype=dtype, filters=filters,
            compressors=compressors, fill_value=spec.fill_value, dimension_names=spec.dims,
            attributes={"meaning": spec.meaning, "units": spec.units, **spec.attrs},
        )
    group.create_array(  # one object per partition: its units are done by one rank, in turn (dist.rank_units)
        PROGRESS, shape=(epoch_groups, partitions), chunks=(epoch_groups, 1), dtype="uint8", fill_value=0,
        compressors=[Crc32cCodec()], dimension_names=("epoch_group", "partition"),
        attributes={"meaning": "1 once work unit (epoch group, partition) is written"},
    )
    group.create_array(
        MANIFEST, shape=(epoch_groups, partitions), chunks=(1, 1), dtype=str, fill_value="",
        compressors=[Crc32cCodec()], dimension_names=("epoch_group", "partition"),
        attributes={"meaning": "JSON {object key: [bytes, crc32c]} of the objects work unit (epoch group, "
                               "partition) wrote; attribute 'build': the same for the objects written at creation"},
    )
    return group


def seal(group: zarr.Group) -> None:
    """The last step of a store's creation: record the objects written so far (the sample table),
    the checksums of the metadata (labelstore/manifest.py), and the state "running" (one write)."""
    from .integrity import iter_arrays

    arrays = {n: a for n, a in iter_arrays(group) if n not in manifest.BOOKKEEPING}
    group[MANIFEST].attrs["build"] = manifest.objects_of(group)
    attrs = group.attrs.asdict()
    lay = attrs.get("layout", {})
    v = lay.get("epochs_per_group") or -(-int(attrs.get("epochs", 1)) // int(lay.get("epoch_groups", 1)))
    per_array = {}
    for name, arr in arrays.items():
        per_epoch = arr.metadata.dimension_names[0] == "epoch"
        shards = arr.shards or arr.chunks
        per_array[name] = {"per_epoch": per_epoch, "epochs_per_group": int(v),
                           "shard_rows": int(shards[1 if per_epoch else 0])}
    digests = manifest.metadata_digests(group, [*arrays, *manifest.BOOKKEEPING])
    group.attrs.update({"integrity": {**digests, "layout": per_array}, "state": "running"})  # the marker, written last


def open_or_create(path: str, build: Callable[[str], Any], check: Callable[[zarr.Group], None], *,
                   resume: bool = False, overwrite: bool = False, join: bool = False,
                   protect: tuple[str, ...] = ()) -> zarr.Group:
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
    --overwrite replaces only a label store, never a protected path (the data) or a folder or file
    containing one (check_replaceable, before anything is deleted). A complete store is returned
    as it is (nothing written); a store to fill is returned written through a RecordingStore.
    """
    if not location.is_url(path):
        group = _open_or_create_local(location.local_path(path), build, check, resume=resume, overwrite=overwrite,
                                      join=join, protect=protect)
        return group if group.attrs.get("state") == "complete" else manifest.recording(group)
    if location.group_exists(path) and not overwrite:
        if not (resume or join):
            raise StoreError(f"{path} exists: pass --resume to finish it or --overwrite to replace it")
        group = wait_for_store(path) if join else location.open_group(path, mode="r+")
        if group.attrs.get("state") == CREATING:
            raise StoreError(f"{path}: interrupted while it was being created: pass --overwrite to recreate it")
        group = _checked(group, path, check)
        return group if group.attrs.get("state") == "complete" else manifest.recording(group)
    if overwrite:
        check_replaceable(path)
        location.remove(path)
    build(path)
    group = location.open_group(path, mode="r+")
    seal(group)
    return manifest.recording(group)


def check_replaceable(path: str, protect: tuple[str, ...] = ()) -> None:
    """StoreError unless whatever is at `path` may be deleted by --overwrite: nothing, or a labelstore
    store (its root zarr.json says format "labelstore") that neither is nor contains a protected
    path (the data the store is built from). Called before anything is deleted."""
    fs, root = location.filesystem(path)
    if not location.is_url(path):
        here = os.path.realpath(root)
        for p in protect:
            q = os.path.realpath(p)
            if q == here or q.startswith(here.rstrip(os.sep) + os.sep):
                raise StoreError(f"--out {path}: {'is' if q == here else 'contains'} the data folder {p}; "
                                 "--overwrite never deletes the data (choose another --out)")
        if os.path.isfile(root) or (os.path.lexists(root) and not os.path.isdir(root)):
            raise StoreError(f"--out {path} is a file, not a label store: --overwrite replaces only a label store "
                             "(move it away or choose another --out)")
    if not fs.exists(root):
        return
    meta = f"{root.rstrip('/')}/zarr.json"
    fmt = None
    if fs.exists(meta):
        try:
            fmt = json.loads(fs.cat_file(meta)).get("attributes", {}).get("format")
        except (ValueError, OSError, AttributeError):
            fmt = None
    if fmt != FORMAT_NAME:
        try:
            entries = sorted(os.path.basename(e.rstrip("/")) for e in fs.ls(root, detail=False))
        except OSError:
            entries = []
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise StoreError(f"--out {path} is not a label store (it holds {len(entries)} entries: {shown}): "
                         "--overwrite replaces only a label store; nothing was deleted")


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
                          resume: bool, overwrite: bool, join: bool, protect: tuple[str, ...] = ()) -> zarr.Group:
    remove_stale_creating(path)
    if overwrite:
        check_replaceable(path, protect)
    elif os.path.lexists(path):
        if not (resume or join):
            raise StoreError(f"{path} exists: pass --resume to finish it or --overwrite to replace it")
        if not os.path.isdir(path):
            raise StoreError(f"{path} is a file, not a label store (choose another --out)")
        if not os.path.exists(os.path.join(path, "zarr.json")):
            raise StoreError(f"{path} is not a label store (a folder without zarr.json): choose another --out")
        return _checked(zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False), path, check)
    tmp = f"{os.path.abspath(path)}.creating-{os.getpid()}"
    try:
        build(tmp)
        seal(zarr.open_group(tmp, mode="r+", zarr_format=3))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours, never renamed into place
        raise
    if overwrite and os.path.exists(path):
        shutil.rmtree(path)
    try:
        os.rename(tmp, path)
    except OSError:  # another process created the store first
        shutil.rmtree(tmp, ignore_errors=True)
        if not join:
            raise
        return _open_or_create_local(path, build, check, resume=False, overwrite=False, join=True)
    return zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False)


def remove_stale_creating(path: str) -> list[str]:
    """Remove `path`.creating-PID folders left by a creation that was killed: only when process PID
    is gone and the folder is a labelstore store still "creating" (its root zarr.json says so)."""
    removed = []
    for tmp in glob.glob(f"{glob.escape(os.path.abspath(path))}.creating-*"):
        pid = tmp.rsplit("-", 1)[-1]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        try:
            with open(os.path.join(tmp, "zarr.json"), "rb") as f:
                attrs = json.load(f).get("attributes", {})
        except (OSError, ValueError):
            continue
        if attrs.get("format") == FORMAT_NAME and attrs.get("state") == CREATING:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_block(group: zarr.Group, name: str, start: int, data: np.ndarray, epoch: int | None = None) -> None:
    """Write rows [start, start+len(data)) of array `name` (of one epoch, for per-epoch arrays).

    The block must cover whole shards (or end at the array's end): partial shard writes are
    read-modify-write in Zarr and lose data under concurrent writers. All-fill chunks are written
    too, so every shard a unit writes exists (a reader never has to ask the manifest whether an
    absent shard is one Zarr skipped). An array with the attribute `mantissa_bits` is written
    rounded to it (schema.round_mantissa), whoever writes it.
    """
    arr = group[name].with_config({"write_empty_chunks": True})
    bits = arr.attrs.get("mantissa_bits")
    if bits is not None:
        data = round_mantissa(data, int(bits))
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
    """Record what the unit wrote (manifest[g, p]), then flag it done (progress[g, p])."""
    manifest.record_unit(group, unit)
    group[PROGRESS][unit[0], unit[1]] = 1


def pending_units(group: zarr.Group) -> list[tuple[int, int]]:
    """Work units (epoch group, partition) not yet flagged done, in order (none for a complete
    store, without reading the flags; otherwise one read of the progress array). StoreError naming
    the progress array when it cannot be read (a damaged or truncated chunk)."""
    if group.attrs.get("state") == "complete":
        return []
    try:
        done = group[PROGRESS][:]
    except Exception as e:  # a checksum mismatch, a truncated chunk
        raise StoreError(f"{getattr(group.store, 'root', None) or group.store}: cannot read the array {PROGRESS!r} (which work units are done): "
                         f"{type(e).__name__}: {e}; `labelstore verify` lists every damaged shard") from e
    return [(int(g), int(p)) for g, p in zip(*np.nonzero(done == 0))]


def finalize(group: zarr.Group, **extra: Any) -> bool:
    """Mark the store complete when every unit is done, write every unit's record in one object
    (manifest_all) and the stored bytes per array (attribute "sizes": `info` needs no listing)
    and consolidate its metadata
    (all arrays' zarr.json in the root's, so xarray / zarr open it with one read). Returns whether
    it is complete. A store already complete is left as it is."""
    if group.attrs.get("state") == "complete":
        return True
    if pending_units(group):
        return False
    records = manifest.unit_records(group)
    sizes: dict[str, int] = {}
    for key, (nbytes, _) in records.items():
        name = manifest.array_of(key)[0]
        sizes[name] = sizes.get(name, 0) + int(nbytes)
    manifest.write_all(group, records)
    group.attrs.update({"state": "complete", "completed": _now(), "sizes": dict(sorted(sizes.items())), **extra})
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
