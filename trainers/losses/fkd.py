"""FKD soft labels and FerKD label adaptation.

FKD (Shen & Xing, ECCV 2022) stores, for every augmented view, only the teacher's
top-k probabilities and their class indices. At training time the dense target
is rebuilt from those k numbers and the student is trained with soft-label
cross-entropy. FerKD (Shen & Xing, ICCV 2023) additionally adapts the label of
each view using the teacher's confidence in the ground-truth class.

Shapes: B batch, C classes, K stored top-k entries per view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .kd import soften
from labelstore.errors import ConfigError

FILLS = ("marginal", "renorm")


def _float_dtype(*tensors: Tensor) -> torch.dtype:
    """At least float32: fp16/bf16 labels and logits are upcast, float64 stays float64."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def dense_soft_labels(
    topk_values: Tensor,
    topk_indices: Tensor,
    num_classes: int,
    fill: str = "marginal",
) -> Tensor:
    """Rebuild the dense teacher distribution q[B, C] from its stored top-k entries.

    topk_values:  [B, K] teacher probabilities (any float dtype; computed in >= float32)
    topk_indices: [B, K] their class indices (distinct within a row)
    returns q:    [B, C]

    fill="marginal": q[b, idx[b, k]] = val[b, k]; every other class gets
        (1 - sum_k val[b, k])^+ / (C - K), i.e. the missing mass spread evenly
        (clamped at >= 0: fp16 rounding can make sum_k val slightly > 1; when
        K == C there is nowhere to spread it and nothing is added).
    fill="renorm": q[b, idx[b, k]] = val[b, k] / sum_k val[b, k], zeros elsewhere.
    """
    if fill not in FILLS:
        raise ConfigError(f"fill must be one of {FILLS}, got {fill!r}")
    B, K = topk_values.shape
    if K > num_classes:
        raise ConfigError(f"top-k has {K} entries but num_classes is {num_classes}")
    values = topk_values.to(_float_dtype(topk_values))  # [B, K]
    indices = topk_indices.long()  # [B, K]
    total = values.sum(dim=1, keepdim=True)  # [B, 1]

    if fill == "renorm":
        q = torch.zeros(B, num_classes, dtype=values.dtype, device=values.device)
        # clamp_min is neutral for valid rows (some positive probability)
        return q.scatter(1, indices, values / total.clamp_min(torch.finfo(values.dtype).tiny))

    n_rest = num_classes - K
    missing = (1.0 - total).clamp_min(0.0)  # [B, 1]
    per_class = missing / max(n_rest, 1)  # [B, 1]
    q = per_class.expand(B, num_classes).contiguous()  # [B, C]
    if n_rest == 0:
        q = torch.zeros_like(q)
    return q.scatter(1, indices, values)


def soft_label_ce(
    student_logits: Tensor,
    topk_values: Tensor,
    topk_indices: Tensor,
    fill: str = "marginal",
    temperature: float = 1.0,
) -> Tensor:
    """FKD soft-label cross-entropy against the rebuilt dense teacher label, Hinton-tempered.

    student_logits: [B, C]; topk_values, topk_indices: [B, K]; returns a scalar.

        q    = dense_soft_labels(topk_values, topk_indices, C, fill)           # [B, C], T = 1
        loss = soft_target_ce(student_logits, q, T)                            # T^2 * CE at T

    Computed in float32 (or float64 if the logits are float64).
    """
    dtype = _float_dtype(student_logits, topk_values)
    q = dense_soft_labels(topk_values, topk_indices, student_logits.shape[1], fill).to(dtype)
    return soft_target_ce(student_logits.to(dtype), q, temperature).mean()


def soft_target_ce(student_logits: Tensor, q: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-row Hinton KD cross-entropy against a T = 1 target q [B, C] (returns [B]):

        loss_b = -T^2 * sum_c soften(q, T)[b, c] * log_softmax(student_logits[b] / T)_c

    soften(q, T) = softmax(log q / T) is the teacher at temperature T (exact ratios for the stored
    top-k, the fill's uniform tail estimate elsewhere). It differs from KL(q_T || p_T) * T^2 by the
    teacher's entropy, a constant: the same gradient. At T = 1 it is plain soft-label CE.
    """
    log_p = F.log_softmax(student_logits / temperature, dim=1)  # [B, C]
    return -(soften(q, temperature) * log_p).sum(dim=1) * temperature**2


BANDS = ("dropped_low", "softened", "teacher", "dropped_high")  # ferkd_bands' values 0..3


def ferkd_bands(gt: Tensor, gt_prob: Tensor, low: float = 0.05, high: float = 0.95, mid: float | None = None,
                *, top_prob: Tensor | None = None, background: float = 0.0) -> Tensor:
    """FerKD's band of each view (an index into BANDS, long [B]) from the teacher's gt probability.

    gt: [B] long (-1 = unlabeled); gt_prob: [B]; top_prob: [B] the teacher's largest class probability
    (needed only with background > 0). With mid = (low + high) / 2 unless given (low <= mid <= high),
    per labeled view, the first rule that holds:
        gt_prob < low or top_prob < background -> 0 "dropped_low":  too hard, likely a background crop
        gt_prob <  mid                          -> 1 "softened":     the softened hard label
        gt_prob <= high                         -> 2 "teacher":      the dense teacher label
        gt_prob >  high                         -> 3 "dropped_high": too easy, uninformative
    `background` (default 0: off) is the "teacher favours no class" cut, e.g. kappa / C: a view whose
    teacher puts under kappa times chance on every class. Unlabeled views (gt == -1) are always 2 "teacher".
    """
    if mid is None:
        mid = (low + high) / 2
    if not (low <= mid <= high):
        raise ConfigError(f"need low <= mid <= high, got {low}, {mid}, {high}")
    if background > 0 and top_prob is None:
        raise ConfigError("ferkd_bands: background > 0 needs top_prob, the teacher's largest probability per view")
    labeled = gt >= 0
    hard = gt_prob < low
    if background > 0:
        hard = hard | (top_prob < background)
    band = torch.full(gt.shape, 2, dtype=torch.long, device=gt.device)
    band[labeled & (gt_prob < mid)] = 1
    band[labeled & (gt_prob > high)] = 3
    band[labeled & hard] = 0
    return band


def ferkd_targets(
    topk_values: Tensor,
    topk_indices: Tensor,
    gt: Tensor,
    gt_prob: Tensor,
    num_classes: int,
    low: float = 0.05,
    high: float = 0.95,
    epsilon: float = 0.1,
    fill: str = "marginal",
    *,
    mid: float | None = None,
    background: float = 0.0,
) -> tuple[Tensor, Tensor, dict[str, int]]:
    """FerKD label adaptation (this project's concrete reading; thresholds are not published).

    topk_values, topk_indices: [B, K] stored teacher top-k; gt: [B] long (-1 = unlabeled);
    gt_prob: [B] teacher probability of the ground-truth class for this view.
    returns targets [B, C], keep [B] bool, counts {band name: views} (BANDS).

    Per view, by its band (ferkd_bands(gt, gt_prob, low, high, mid, top_prob=topk_values.max(1),
    background=background)):
        dropped_low, dropped_high -> keep False
        softened                  -> hard label: 1 - epsilon on gt, epsilon / (C - 1) elsewhere
        teacher                   -> dense teacher label dense_soft_labels(..., fill)
    Dropped rows hold the teacher label too, so targets is always a valid distribution;
    mask them out with `keep`.
    """
    if num_classes < 2:
        raise ConfigError("ferkd_targets needs num_classes >= 2")
    top = topk_values.max(dim=1).values if background > 0 else None  # [B]
    band = ferkd_bands(gt, gt_prob, low, high, mid, top_prob=top, background=background)  # [B]
    teacher = dense_soft_labels(topk_values, topk_indices, num_classes, fill)  # [B, C]
    off = epsilon / (num_classes - 1)
    hard = torch.full_like(teacher, off)  # [B, C]
    hard.scatter_(1, gt.clamp_min(0).long()[:, None], 1.0 - epsilon)
    targets = torch.where((band == 1)[:, None], hard, teacher)  # [B, C]
    keep = (band == 1) | (band == 2)
    counts = {name: int((band == b).sum()) for b, name in enumerate(BANDS)}
    return targets, keep, counts
