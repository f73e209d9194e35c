"""Feature distillation: losses on the teacher's recorded per-view features (see docs/losses.md).

The store holds, per view, the teacher's feature f_t (`teach --features NAME`; [B, D_t] pooled
penultimate features, or [B, Q, D] query tokens of a video-text teacher) and its classifier head
W_t, b_t. A student feature f_s [B, D_s] is first mapped by a learnt projector P (a Linear,
D_s -> D_t) to f = P(f_s) [B, D_t]. With h(f) = f W_t^T + b_t the teacher's head:

    feature_mse      (FitNets)  mean_{b,d} (f - f_t)^2
    simkd_loss       (SimKD)    mean_{b,d} (f - f_t)^2; the student predicts h(f)
    srrl_loss        (SRRL)     alpha * mean_{b,d} (f - f_t)^2 + beta * CE(q, softmax(h(f)))
    query_token_mse  (ViLA)     mean over valid (b, q) and d of (s_{b,q,d} - t_{b,q,d})^2

Shapes: B batch, D_t teacher feature width, C classes, Q query tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from labelstore.errors import ConfigError

from .fkd import _float_dtype, soft_target_ce


def _check_pair(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ConfigError(f"{what}: the student's (projected) features {list(student.shape)} and the teacher's "
                          f"{list(teacher.shape)} differ in shape")


def feature_mse(projected: Tensor, teacher: Tensor) -> Tensor:
    """FitNets' hint loss on one layer, after the student's projector (a scalar):

        projected: [B, D] = P(f_s);  teacher: [B, D] = f_t (any float dtype; computed in >= float32)
        loss = (1 / (B D)) sum_{b,d} (projected_{b,d} - teacher_{b,d})^2

    The teacher side is a constant (no gradient flows into it).
    """
    _check_pair(projected, teacher, "feature_mse")
    dtype = _float_dtype(projected, teacher)
    diff = projected.to(dtype) - teacher.detach().to(dtype)  # [B, D]
    return diff.pow(2).mean()


def simkd_loss(projected: Tensor, teacher: Tensor, head: torch.nn.Linear) -> tuple[Tensor, Tensor]:
    """SimKD: the feature alignment loss and the prediction through the reused teacher head.

        projected: [B, D_t] = P(f_s);  teacher: [B, D_t] = f_t;  head: the teacher's Linear(D_t, C), frozen
        loss   = (1 / (B D_t)) sum_{b,d} (projected_{b,d} - teacher_{b,d})^2      (= feature_mse)
        logits = projected W_t^T + b_t                                           [B, C]

    The loss is the whole objective (no label term); `logits` is the student's prediction.
    """
    return feature_mse(projected, teacher), head(projected)


def srrl_loss(projected: Tensor, teacher: Tensor, head: torch.nn.Linear, q: Tensor, alpha: float = 1.0,
              beta: float = 1.0, temperature: float = 1.0) -> Tensor:
    """SRRL's two distillation terms (the student's own CE with the labels is added by the caller):

        projected: [B, D_t] = P(f_s);  teacher: [B, D_t] = f_t;  head: the teacher's Linear(D_t, C), frozen;
        q: [B, C] the teacher's output distribution (rebuilt from the stored top-k) or one-hot labels
        L_FM = (1 / (B D_t)) sum_{b,d} (projected_{b,d} - teacher_{b,d})^2
        L_SR = (1 / B) sum_b -T^2 sum_c soften(q, T)_{b,c} log softmax(h(projected)_b / T)_c
        loss = alpha L_FM + beta L_SR

    L_SR is soft_target_ce of the teacher head's logits on the projected student feature; it
    differs from KL(q || softmax(h(projected))) by the entropy of q, a constant.
    """
    logits = head(projected)  # [B, C]
    dtype = _float_dtype(logits, q)
    sr = soft_target_ce(logits.to(dtype), q.to(dtype), temperature).mean()
    return alpha * feature_mse(projected, teacher) + beta * sr


def query_token_mse(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """MSE between the student's and the teacher's query-token outputs (ViLA's Q-Former distiller):

        student, teacher: [B, Q, D];  mask: [B, Q] bool (True = a token that counts) or None (all)
        loss = (1 / (N D)) sum_{(b,q) valid} sum_d (student_{b,q,d} - teacher_{b,q,d})^2,
               N = the number of valid (b, q)        (0 when none is valid)
    """
    _check_pair(student, teacher, "query_token_mse")
    if student.ndim != 3:
        raise ConfigError(f"query_token_mse: tokens must be [B, Q, D], got {list(student.shape)}")
    dtype = _float_dtype(student, teacher)
    per_token = (student.to(dtype) - teacher.detach().to(dtype)).pow(2).mean(dim=2)  # [B, Q]
    if mask is None:
        return per_token.mean()
    if mask.shape != per_token.shape:
        raise ConfigError(f"query_token_mse: mask {list(mask.shape)} is not [B, Q] = {list(per_token.shape)}")
    m = mask.bool()
    return per_token[m].mean() if m.any() else per_token.sum() * 0
