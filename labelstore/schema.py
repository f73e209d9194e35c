"""The label-store schema: how an array is described (ArraySpec), its chunking, and the dtype helpers.

`docs/store-format.md` is the written source of truth. Which arrays a store holds is its task's
business: each task declares its ArraySpecs next to its task class (pipeline/<task>_store.py).

Layout rules (all arrays):
- Arrays with a leading "epoch" dimension hold one record per (epoch, row). Inner chunks are
  (1, chunk_rows, ...): a reader of one epoch never reads another epoch's bytes. Shards are
  (1, shard_rows, ...): one work unit of the teacher stage writes whole shards only, so
  several writer processes never touch the same shard.
- Arrays without an epoch dimension hold one record per row, chunked (chunk_rows, ...) and
  sharded (shard_rows, ...).
- Every inner chunk: bytes -> blosc(zstd) -> crc32c, the blosc settings (and a k-major transpose)
  chosen per array by its `codec` (writer.codecs_for). Every shard index: crc32c.
- An array whose spec has the attribute `mantissa_bits` keeps that many of float16's 10 mantissa
  bits (`round_mantissa`, applied by writer.write_block), so it compresses to what it carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from .errors import ConfigError

FORMAT_NAME = "labelstore"
FORMAT_VERSION = 3  # 3: manifest + metadata checksums, derived augmentation params, 16-bit view checks, rounded probabilities, render version 3; 2: uint8 view digests; bump on any change a reader of the old version would misread

# Arrays under these prefixes are read on request (LabelStore.read_array), never by LabelStore.read or the
# epoch cache: the teacher features of `teach --features` and the teacher's classifier (docs/store-format.md)
ON_REQUEST = ("features/",)

# Values of the group attribute "aug_params": how a student gets the augmentation parameters of a view.
PARAMS_DERIVED = "derived"  # recomputed from (policy, seed, epoch, sample, source_hw) by the pipeline's Policy.sample
PARAMS_STORED = "stored"  # the aug/<op>/<param> arrays (teach --store-params)


@dataclass(frozen=True)
class ArraySpec:
    """One array of the store. `shape` excludes nothing: it is the full array shape."""

    name: str  # path inside the group, e.g. "topk_values" or "aug/rrc/box"
    dims: tuple[str, ...]  # Zarr v3 dimension_names
    shape: tuple[int, ...]
    dtype: str
    meaning: str
    units: str = ""
    fill_value: float | int | bool | str = 0
    attrs: dict = field(default_factory=dict)
    codec: str = "default"  # compression recipe, see writer.codecs_for: "default", "ids" or "probs"

    @property
    def per_epoch(self) -> bool:
        return self.dims[0] == "epoch"

    @property
    def row_axis(self) -> int:
        """The axis the work partitions split (rows: samples, captions, questions)."""
        return 1 if self.per_epoch else 0


def smallest_uint(max_value: int) -> str:
    """Smallest unsigned dtype holding 0..max_value."""
    for dt in ("uint8", "uint16", "uint32"):
        if max_value <= np.iinfo(dt).max:
            return dt
    return "uint64"


def smallest_int(max_value: int) -> str:
    """Smallest signed dtype holding -1..max_value (-1 marks 'unlabeled')."""
    for dt in ("int8", "int16", "int32"):
        if max_value <= np.iinfo(dt).max:
            return dt
    return "int64"


def round_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """float16 x with its mantissa rounded to `bits` of 10 bits (round half to even on the bit pattern).

    |out - x| <= 2^-(bits+1) * max(|x|, 2^-14) (2^-14: float16's smallest normal; below it the step is
    absolute, 2^-(14+bits)). NaN and inf pass unchanged; a carry rounds up into the exponent.
    """
    x16 = np.asarray(x).astype(np.float16)
    if bits >= 10:
        return x16
    drop = np.uint32(10 - bits)
    b = x16.view(np.uint16).astype(np.uint32)
    half_minus_one = np.uint32((1 << (10 - bits - 1)) - 1)
    b = (b + half_minus_one + ((b >> drop) & np.uint32(1))) & np.uint32(0xFFFF ^ ((1 << (10 - bits)) - 1))
    out = b.astype(np.uint16).view(np.float16)
    return np.where(np.isfinite(x16), out, x16)


def chunking(spec: ArraySpec, chunk_rows: int, shard_rows: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(inner chunk shape, shard shape) for an array under the layout rules above."""
    if shard_rows % chunk_rows:
        raise ConfigError(f"shard_rows ({shard_rows}) must be a multiple of chunk_rows ({chunk_rows})")
    rows = spec.shape[spec.row_axis]
    chunk = max(1, min(chunk_rows, rows))
    shard = min(shard_rows, -(-max(rows, 1) // chunk) * chunk)  # whole chunks; one shard when rows < shard_rows
    tail = tuple(spec.shape[spec.row_axis + 1 :])
    if spec.per_epoch:
        return (1, chunk, *tail), (1, shard, *tail)
    return (chunk, *tail), (shard, *tail)
