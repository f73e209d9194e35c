"""Teacher records of a ranking task (classification, VideoQA): per batch, per unit, and the MC seed.

Per view, from the teacher's logits [C] and its T MC-dropout passes mc_logits [T, C] (topk_records):

  p            = softmax(logits)
  topk_values  [K]    = top-K of p, descending        topk_indices [K] = their class / answer ids
  gt_prob      []     = p[gt]  (NaN where gt < 0: unlabelled, or an answer outside the vocabulary)
  mc_values    [T, K] = softmax(mc_logits[t])[topk_indices],  t = 1..T  (absent when T = 0)

A work unit's records of one epoch are collected batch by batch in preallocated buffers
[n, ...] (UnitRecords), one per record array of the store, and handed to the writer whole when
the epoch ends (one shard of each array).

MC-dropout masks of the batch whose first row is `first_row` in `epoch` are drawn with torch's
generator seeded pass_seed(mc_seed(seed, epoch, first_row), t) (pipeline/teacher.py), where

  mc_seed = low `bits` bits of mix64(seed ^ mix64(epoch * 1_000_003 + first_row))   (uint64, rng.mix64)

Classification stores use all 64 bits, VideoQA stores 63 (the constant MC_SEED_BITS of each task):
the two widths give different seeds whenever bit 63 is set, so the width is part of a store's
format and stays as its stores were written.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from labelstore.schema import ArraySpec

from . import rng

RECORDS = ("topk_values", "topk_indices", "gt_prob", "mc_values", "view_digest",  # per-epoch arrays UnitRecords fills
           "features/values", "features/scale")  # (teach --features, pipeline/features.py)
_FILL = {"gt_prob": np.nan}  # a row no batch fills (a skipped source) keeps this (0 for the others)


def mc_seed(seed: int, epoch: int, first_row: int, bits: int = 64) -> int:
    """Seed of the MC-dropout masks of the batch starting at row `first_row` in `epoch` (module docstring).

    seed, epoch * 1_000_003 + first_row: in [0, 2**64); bits: 64 (classification) or 63 (VideoQA)."""
    x = rng.mix64(np.uint64(seed) ^ rng.mix64(np.uint64(epoch * 1_000_003 + int(first_row))))
    return int(x) & ((1 << bits) - 1)


def mc_values(mc_logits: torch.Tensor, topk_indices: torch.Tensor) -> torch.Tensor:
    """float32 [B, T, K] = softmax(mc_logits [B, T, C], -1) at topk_indices [B, K] (the same K ids in every pass)."""
    T = mc_logits.shape[1]
    return mc_logits.float().softmax(-1).gather(2, topk_indices[:, None, :].expand(-1, T, -1))


def topk_records(logits: torch.Tensor, gt: torch.Tensor, top_k: int,
                 mc_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The records of one batch (module docstring), float32 (int64 ids) on the logits' device.

    logits [B, C]; gt [B] (int, -1 = none); mc_logits [B, T, C] or None (no mc_values when None or T = 0)."""
    probs = logits.float().softmax(1)  # [B, C]
    vals, idx = probs.topk(top_k, dim=1)
    gp = probs.gather(1, gt.clamp(min=0)[:, None])[:, 0].masked_fill(gt < 0, float("nan"))
    out = {"topk_values": vals, "topk_indices": idx, "gt_prob": gp}
    if mc_logits is not None and mc_logits.shape[1]:
        out["mc_values"] = mc_values(mc_logits, idx)
    return out


class UnitRecords:
    """One epoch of a work unit's records: for each array of `specs` named in RECORDS (per-epoch
    [E, N, *tail]), a buffer [n, *tail] of its dtype, filled with NaN (gt_prob) or 0, written into
    batch by batch (`put`) and handed over whole (`writes`)."""

    def __init__(self, specs: Sequence[ArraySpec]):
        self.specs = [s for s in specs if s.name in RECORDS]
        self.buffers: dict[str, np.ndarray] = {}

    def __bool__(self) -> bool:
        return bool(self.buffers)

    def open(self, n: int) -> None:
        """Allocate the buffers of an epoch of the unit's n rows (when none are open)."""
        if not self.buffers:
            self.buffers = {s.name: np.full((n, *s.shape[2:]), _FILL.get(s.name, 0), s.dtype) for s in self.specs}

    def put(self, sel, records: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """buffer[sel] = records[name] for every buffer (cast to the array's dtype); sel: rows of the unit."""
        for name, buf in self.buffers.items():
            v = records[name]
            buf[sel] = v.cpu().numpy() if isinstance(v, torch.Tensor) else v

    def writes(self, start: int, epoch: int) -> list[tuple[str, int, np.ndarray, int]]:
        """The epoch's writes (name, first row of the unit, buffer, epoch); the buffers are handed over."""
        out = [(name, start, buf, epoch) for name, buf in self.buffers.items()]
        self.buffers = {}
        return out
