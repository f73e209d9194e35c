"""Fingerprints, mismatch checks and chunk checksum verification."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

import crc32c as _crc32c
import numpy as np
import zarr

from .errors import StoreError, StoreMismatch  # noqa: F401  (re-exported)
from .schema import FORMAT_NAME, FORMAT_VERSION


def digest_pairs(pairs: Iterable[tuple[str, int]]) -> str:
    """sha256 over (relative path, size) pairs in sorted order: the dataset fingerprint digest."""
    h = hashlib.sha256()
    for rel, size in sorted(pairs):
        h.update(f"{rel}\0{size}\n".encode())
    return h.hexdigest()


def json_digest(obj: Any) -> str:
    """sha256 of a canonical JSON encoding (policies, configs)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def view_digest(x: np.ndarray) -> np.uint32:
    """crc32c of an array's bytes (C order): proves a replayed view has the same pixels. Read through
    the buffer protocol, not copied: crc32c releases the GIL over a large buffer, a copy would hold it."""
    return np.uint32(_crc32c.crc32c(np.ascontiguousarray(x)))


def view_check(digests: np.ndarray) -> np.ndarray:
    """uint16: the low 16 bits of crc32c view digests, what a classification store's view_digest holds.

    A replayed view with other pixels passes with probability 2^-16 (1.5e-5) per view; n such views
    all pass with probability 2^-16n.
    """
    return (np.asarray(digests, dtype=np.uint32) & np.uint32(0xFFFF)).astype(np.uint16)


def check_format(attrs: dict, where: str) -> None:
    if attrs.get("format") != FORMAT_NAME:
        raise StoreError(f"{where}: not a labelstore store (attribute 'format' is {attrs.get('format')!r})")
    v = attrs.get("format_version")
    if v != FORMAT_VERSION:
        raise StoreMismatch(
            f"{where}: store format version {v}, this labelstore reads version {FORMAT_VERSION}; "
            "rebuild the store with this version's `labelstore teach`"
        )


def check_expected(attrs: dict, where: str, **expected: dict | None) -> None:
    """Compare attrs[key] with each expected dict (dataset=..., teacher=..., policy=...).

    Only the keys present in the expected dict are compared; the error names the field and
    both values.
    """
    for key, want in expected.items():
        if want is None:
            continue
        have = attrs.get(key) or {}
        for field, value in want.items():
            if have.get(field) != value:
                raise StoreMismatch(
                    f"{where}: {key} {field} differs: the store has {_short(have.get(field))}, "
                    f"given {_short(value)} ({key} in store: {_summary(have)})"
                )


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 80 else s[:77] + "..."


def _summary(d: dict) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in d.items() if k in ("kind", "name", "root", "num_samples"))


def verify_chunks(group: zarr.Group) -> list[str]:
    """Decode every shard of every array (crc32c checked on each chunk and shard index).

    Returns one line per problem, naming the array and the shard's row range.
    """
    problems: list[str] = []
    for name, arr in sorted(iter_arrays(group)):
        shards = arr.shards or arr.chunks
        grid = [range(0, n, s) for n, s in zip(arr.shape, shards)]
        for starts in np.ndindex(*[len(g) for g in grid]):
            sel = tuple(slice(g[i], g[i] + s) for g, i, s in zip(grid, starts, shards))
            try:
                arr[sel]
            except Exception as e:  # noqa: BLE001 - we report any decode failure
                rows = ", ".join(f"{s.start}:{min(s.stop, n)}" for s, n in zip(sel, arr.shape))
                problems.append(f"{name}[{rows}]: {type(e).__name__}: {e}")
    return problems


def verify_objects(group: zarr.Group) -> list[str]:
    """Every data object the manifest says was written (labelstore/manifest.py) must be there with
    the recorded size and crc32c. One line per missing or changed object, naming the array, epoch
    and rows; plus one per metadata problem (edited attribute, edited or missing array zarr.json)."""
    import asyncio

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    from . import manifest

    problems = manifest.metadata_problems(group)
    if manifest.MANIFEST not in group:
        return problems + ["array manifest (the record of what the store holds) is missing"]
    lay = manifest.layout_of(group.attrs.get("integrity") or {})
    want = manifest.unit_records(group)
    keys = sorted(want)
    store = manifest.unwrapped(group.store)

    async def fetch():
        return await asyncio.gather(*(store.get(k, default_buffer_prototype()) for k in keys))

    for key, buf in zip(keys, sync(fetch())):
        where = manifest.describe_key(key, lay)
        if buf is None:
            problems.append(f"{where}: missing (object {key})")
            continue
        b = buf.to_bytes()
        if [len(b), _crc32c.crc32c(b)] != list(want[key]):
            problems.append(f"{where}: object {key} differs from the one written ({len(b)} bytes, crc32c "
                            f"{_crc32c.crc32c(b):#010x}; written: {want[key][0]} bytes, crc32c {want[key][1]:#010x})")
    return problems


def iter_arrays(group: zarr.Group, prefix: str = ""):
    """(path, array) for every array below group, depth first."""
    for name, node in group.members():
        if isinstance(node, zarr.Group):
            yield from iter_arrays(node, f"{prefix}{name}/")
        else:
            yield f"{prefix}{name}", node
