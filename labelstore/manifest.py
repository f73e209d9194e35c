"""What a store says it holds: the objects each work unit wrote, and the checksums of its metadata.

Zarr returns the fill value for a chunk whose object is absent, so a deleted shard would read as
zeros. A store therefore records what it wrote:

  manifest[g, p]            (string array, one object per unit) JSON {key: [nbytes, crc32c]} of every
                            data object work unit (g, p) wrote, set just before progress[g, p]
  manifest.attrs["build"]   the same for the objects written while the store was created (sample table)
  attrs["integrity"]        sha256 (16 hex digits) of each root attribute a reader uses and of each
                            field of every array's zarr.json (shape, data_type, codecs, fill_value, ...)

`RecordingStore` (the writer's) notes every object written; `CheckedStore` (every reader's) raises
StoreError naming the array, epoch and rows when an object that the manifest lists is absent, so
`read`, `to_dask`, `to_xarray`, `inspect` and `train` never see fill values for written rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from typing import Any, Iterable

import crc32c as _crc32c
import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore, WrapperStore

from .errors import StoreError

MANIFEST = "manifest"
MANIFEST_ALL = "manifest_all"  # every record in one object, written at completion (what `info` reads)
PROGRESS = "progress"
BOOKKEEPING = (MANIFEST, MANIFEST_ALL, PROGRESS)
# root attributes that change while a store is filled (not covered by the integrity digests)
VOLATILE_ATTRS = ("state", "completed", "integrity", "sizes", "consolidated_metadata")


def is_data_key(key: str) -> bool:
    """A chunk/shard object of a data array (not metadata, not the bookkeeping arrays)."""
    return "/c/" in f"/{key}" and not key.endswith("zarr.json") and key.split("/", 1)[0] not in BOOKKEEPING


def array_of(key: str) -> tuple[str, tuple[int, ...]]:
    """('aug/rrc/box', (3, 0, 0)) for key 'aug/rrc/box/c/3/0/0' (chunk-grid coordinates of the shard)."""
    name, _, coords = f"/{key}".rpartition("/c/")
    return name.lstrip("/"), tuple(int(c) for c in coords.split("/") if c != "")


def digest(obj: Any) -> str:
    """First 16 hex digits of sha256 over canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# Writing: note every object written
# ------------------------------------------------------------------------------------------------


class RecordingStore(WrapperStore):
    """A zarr store that notes (nbytes, crc32c) of every data object set through it; `take()` returns
    and forgets the notes (the writer takes them when a unit is done: one writer thread per process,
    so the notes since the previous unit are exactly this unit's)."""

    def __init__(self, store) -> None:
        super().__init__(store)
        self._notes: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def _with_store(self, store) -> "RecordingStore":
        return type(self)(store)

    async def set(self, key: str, value) -> None:
        await self._store.set(key, value)
        if is_data_key(key):
            b = value.to_bytes()
            with self._lock:
                self._notes[key] = [len(b), _crc32c.crc32c(b)]

    async def delete(self, key: str) -> None:  # an all-fill chunk removed by zarr
        await self._store.delete(key)
        with self._lock:
            self._notes.pop(key, None)

    def take(self) -> dict[str, list[int]]:
        with self._lock:
            notes, self._notes = self._notes, {}
        return notes


def recording(group: zarr.Group) -> zarr.Group:
    """The same group, written through a RecordingStore."""
    return zarr.open_group(RecordingStore(group.store), mode="r+", zarr_format=3, use_consolidated=False)


def objects_of(group: zarr.Group) -> dict[str, list[int]]:
    """{key: [nbytes, crc32c]} of every data object in the store, by listing it (only at creation,
    when it holds the sample table alone)."""
    store = group.store

    async def run() -> dict[str, list[int]]:
        keys = [k async for k in store.list() if is_data_key(k)]
        bufs = await asyncio.gather(*(store.get(k, default_buffer_prototype()) for k in keys))
        return {k: [len(b.to_bytes()), _crc32c.crc32c(b.to_bytes())] for k, b in zip(keys, bufs) if b is not None}

    return sync(run())


def record_unit(group: zarr.Group, unit: tuple[int, int]) -> None:
    """Write what unit (g, p) wrote into manifest[g, p] (before its progress flag is set)."""
    notes = group.store.take() if isinstance(group.store, RecordingStore) else {}
    group[MANIFEST][unit[0], unit[1]] = json.dumps(notes, sort_keys=True, separators=(",", ":"))


def unit_records(group: zarr.Group) -> dict[str, list[int]]:
    """Every object the store says it holds: of a complete store one object (manifest_all), else the
    build record and every unit's record (one array read, one object per unit)."""
    if group.attrs.get("state") == "complete" and MANIFEST_ALL in group:
        return json.loads(np.asarray(group[MANIFEST_ALL][...]).tobytes())
    man = group[MANIFEST]
    out = dict(man.attrs.get("build", {}))
    for text in np.asarray(man[...]).ravel().tolist():
        if text:
            out.update(json.loads(text))
    return out


def absent(group: zarr.Group) -> list[str]:
    """The recorded data objects that are not in the store (existence checks, no listing, no reads
    of the objects themselves): one line per object naming its array, epoch and rows."""
    want = sorted(unit_records(group))
    inner = unwrapped(group.store)
    if isinstance(inner, LocalStore):  # a stat per object, without a thread hop each
        root = str(inner.root)
        found = [os.path.exists(f"{root}/{k}") for k in want]
    else:
        async def run():
            return await asyncio.gather(*(inner.exists(k) for k in want))

        found = sync(run())
    lay = layout_of(group.attrs.get("integrity") or {})
    return [f"{describe_key(k, lay)}: missing (object {k})" for k, ok in zip(want, found) if not ok]


def write_all(group: zarr.Group, records: dict[str, list[int]]) -> None:
    """Every record in one object: array manifest_all, the UTF-8 bytes of one JSON object (uint8, one
    chunk), written before the state "complete"."""
    from zarr.codecs import Crc32cCodec

    data = np.frombuffer(json.dumps(records, sort_keys=True, separators=(",", ":")).encode(), dtype=np.uint8)
    arr = group.create_array(MANIFEST_ALL, shape=data.shape, chunks=data.shape, dtype="uint8", fill_value=0,
                             overwrite=True, compressors=[Crc32cCodec()], dimension_names=("byte",),
                             attributes={"meaning": "UTF-8 JSON {object key: [bytes, crc32c]} of every object the "
                                                    "store holds (the build record and every unit's), written at "
                                                    "completion"})
    arr[...] = data


# ------------------------------------------------------------------------------------------------
# Metadata checksums
# ------------------------------------------------------------------------------------------------


def _raw_json(store, keys: list[str]) -> list[dict | None]:
    async def run():
        bufs = await asyncio.gather(*(store.get(k, default_buffer_prototype()) for k in keys))
        return [None if b is None else json.loads(b.to_bytes()) for b in bufs]

    return sync(run())


def metadata_digests(group: zarr.Group, arrays: Iterable[str]) -> dict:
    """{"attrs": {name: digest}, "arrays": {path: {field: digest}}} of the root attributes (but the
    volatile ones) and of every field of each array's zarr.json."""
    names = sorted(arrays)
    root, *metas = _raw_json(group.store, ["zarr.json", *(f"{n}/zarr.json" for n in names)])
    attrs = {k: digest(v) for k, v in root.get("attributes", {}).items() if k not in VOLATILE_ATTRS}
    return {"attrs": attrs,
            "arrays": {n: {f: digest(v) for f, v in m.items()} for n, m in zip(names, metas) if m is not None}}


def metadata_problems(group: zarr.Group) -> list[str]:
    """One line per root attribute or array zarr.json field that differs from what the writer recorded,
    per recorded array whose zarr.json is gone, and per recorded attribute that is gone."""
    want = group.attrs.get("integrity")
    if not isinstance(want, dict):
        return ["root zarr.json: attribute 'integrity' (the metadata checksums) is missing"]
    have = metadata_digests(group, want.get("arrays", {}))
    problems = []
    for k in sorted(set(want.get("attrs", {})) | set(have["attrs"])):
        a, b = want.get("attrs", {}).get(k), have["attrs"].get(k)
        if a != b:
            what = "is missing" if b is None else "was added" if a is None else "was edited"
            problems.append(f"root zarr.json: attribute '{k}' {what} since the store was written")
    for name, fields in sorted(want.get("arrays", {}).items()):
        got = have["arrays"].get(name)
        if got is None:
            problems.append(f"array {name}: its zarr.json is missing")
            continue
        changed = sorted(f for f in set(fields) | set(got) if fields.get(f) != got.get(f))
        if changed:
            problems.append(f"array {name}: zarr.json field(s) {', '.join(changed)} edited since the store was written")
    return problems


# ------------------------------------------------------------------------------------------------
# Reading: refuse fill values for written rows
# ------------------------------------------------------------------------------------------------


class CheckedStore(WrapperStore):
    """A zarr store that raises StoreError when a data object the manifest lists is absent.

    Only a miss costs anything: the unit the key belongs to is found from the layout
    (layout_of[array] = (per_epoch, epochs_per_group, shard_rows)) and its manifest record read (cached)."""

    def __init__(self, store, where: str, layout_of: dict[str, tuple[bool, int, int]], build: dict) -> None:
        super().__init__(store)
        self.where, self.layout_of, self.build = where, layout_of, build
        self._units: dict[tuple[int, int], dict] = {}
        self._manifest = None

    def _with_store(self, store) -> "CheckedStore":
        return type(self)(store, self.where, self.layout_of, self.build)

    async def get(self, key, prototype, byte_range=None):
        got = await self._store.get(key, prototype, byte_range)
        if got is None and is_data_key(key):
            await self._check_absent(key)
        return got

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        got = await self._store.get_partial_values(prototype, key_ranges)
        for (key, _), b in zip(key_ranges, got):
            if b is None and is_data_key(key):
                await self._check_absent(key)
        return got

    async def _check_absent(self, key: str) -> None:
        if key in self.build:
            self._raise(key)
        name, coords = array_of(key)
        if name not in self.layout_of or not coords:
            return
        per_epoch, v, _ = self.layout_of[name]
        unit = (coords[0] // v, coords[1]) if per_epoch else (0, coords[0])
        if key in await self._unit(unit):
            self._raise(key)

    async def _unit(self, unit: tuple[int, int]) -> dict:
        if unit not in self._units:
            if self._manifest is None:
                self._manifest = await zarr.api.asynchronous.open_array(
                    store=self._store, path=MANIFEST, zarr_format=3, mode="r")
            g, p = unit
            if g >= self._manifest.shape[0] or p >= self._manifest.shape[1]:
                self._units[unit] = {}
            else:
                text = str(np.asarray(await self._manifest.getitem((g, p))).item())
                self._units[unit] = json.loads(text) if text else {}
        return self._units[unit]

    def _raise(self, key: str) -> None:
        raise StoreError(f"{self.where}: {describe_key(key, self.layout_of)} is missing (the store says it was "
                         f"written: object {key}); `labelstore verify` lists every missing or damaged object")


def describe_key(key: str, layout_of: dict[str, tuple[bool, int, int]]) -> str:
    """'array topk_values epoch 3 rows 0:16' for a shard key (layout_of[array] = (per_epoch,
    epochs_per_group, shard_rows))."""
    name, coords = array_of(key)
    if name not in layout_of or not coords:
        return f"array {name} (object {key})"
    per_epoch, _, s = layout_of[name]
    row = coords[1] if per_epoch and len(coords) > 1 else coords[0]
    return f"array {name}" + (f" epoch {coords[0]}" if per_epoch else "") + f" rows {row * s}:{(row + 1) * s}"


def layout_of(integrity: dict) -> dict[str, tuple[bool, int, int]]:
    """{array: (per_epoch, epochs_per_group, shard_rows)} from the integrity attribute."""
    return {n: (bool(v["per_epoch"]), int(v["epochs_per_group"]), int(v["shard_rows"]))
            for n, v in integrity.get("layout", {}).items()}


def unwrapped(store):
    """The store under a CheckedStore (to look at objects without refusing absent ones)."""
    return store._store if isinstance(store, CheckedStore) else store


def checked(group: zarr.Group, where: str, mode: str = "r") -> zarr.Group:
    """The same group, read through a CheckedStore (a store without a manifest is returned as it is)."""
    integrity = group.attrs.get("integrity")
    if not isinstance(integrity, dict) or MANIFEST not in group:
        return group
    build = group[MANIFEST].attrs.get("build", {})
    store = CheckedStore(group.store, where, layout_of(integrity), build)
    return zarr.open_group(store, mode=mode, zarr_format=3, use_consolidated=False)
