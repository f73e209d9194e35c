"""Adaptive Distillation Loss (Tang et al., 2019, arXiv:1901.00366).

ADL re-weights the teacher->student KL of every output by an "adaptive
distillation weight" that is large for outputs where the student is far from the
teacher (large KL) or where the teacher itself is uncertain (large entropy), in
the spirit of the focal loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .kd import xlogx
from labelstore.errors import ConfigError


def _adw(kl: Tensor, entropy: Tensor, gamma: float, beta: float) -> Tensor:
    """ADW = (1 - exp(-(KL + beta * T(q))))^gamma, via -expm1 for accuracy near 0.

    The argument is clamped at 0: mathematically KL, T >= 0, but rounding can give
    -1e-16, and a negative base under a fractional gamma would be NaN.
    """
    return (-torch.expm1(-(kl + beta * entropy).clamp_min(0.0))) ** gamma


def adl_loss(
    student_logits: Tensor,
    teacher_probs: Tensor,
    gamma: float = 2.0,
    beta: float = 1.0,
    theta: float = 1.8,
    mode: str = "binary",
    detach_weight: bool = False,
) -> Tensor:
    """Adaptive distillation loss. Returns a scalar.

    mode="binary": student_logits, teacher_probs of any (equal) shape, one sigmoid per element.
        log p = logsigmoid(x), log(1 - p) = logsigmoid(-x)         (finite for x = +-1e4)
        KL    = q log q - q log p + (1-q) log(1-q) - (1-q) log(1-p)   (teacher || student)
        T(q)  = -(q log q + (1-q) log(1-q))
        ADW   = (1 - exp(-(KL + beta * T(q))))^gamma
        loss  = sum(ADW * KL) / max(N, 1),   N = sum(q^theta) over all elements
    mode="softmax": last dim is classes, [..., C]; per sample
        KL    = sum_c q_c (log q_c - log_softmax(x)_c),   T(q) = -sum_c q_c log q_c
        loss  = mean over samples of ADW * KL
    0 log 0 = 0 everywhere (value and gradient finite at q in {0, 1}).
    ADW is part of the autograd graph unless detach_weight=True.
    """
    q = teacher_probs.to(student_logits.dtype)
    if mode == "binary":
        log_p = F.logsigmoid(student_logits)
        log_1mp = F.logsigmoid(-student_logits)
        neg_entropy = xlogx(q) + xlogx(1 - q)  # -T(q), elementwise
        kl = neg_entropy - q * log_p - (1 - q) * log_1mp
        weight = _adw(kl, -neg_entropy, gamma, beta)
        if detach_weight:
            weight = weight.detach()
        n = (q**theta).sum().clamp_min(1.0)
        return (weight * kl).sum() / n
    if mode == "softmax":
        log_p = F.log_softmax(student_logits, dim=-1)  # [..., C]
        neg_entropy = xlogx(q).sum(dim=-1)  # [...]
        kl = neg_entropy - (q * log_p).sum(dim=-1)  # [...]
        weight = _adw(kl, -neg_entropy, gamma, beta)
        if detach_weight:
            weight = weight.detach()
        return (weight * kl).mean()
    raise ConfigError(f"mode must be 'binary' or 'softmax', got {mode!r}")


def adl_select_unlabeled(
    teacher_probs: Tensor, gt: Tensor, threshold: float = 0.9
) -> tuple[Tensor, Tensor]:
    """ADL semi-supervised selection of training labels.

    teacher_probs: [B, C]; gt: [B] long with -1 = unlabeled.
    returns labels [B] long, mask [B] bool:
        labeled (gt >= 0):   label = gt, mask = True
        unlabeled, max_c teacher_probs >= threshold: label = argmax_c teacher_probs, mask = True
        unlabeled otherwise: label = -1, mask = False
    """
    conf, top = teacher_probs.max(dim=-1)  # [B], [B]
    labeled = gt >= 0
    confident = conf >= threshold
    mask = labeled | confident
    labels = torch.where(labeled, gt.long(), torch.where(confident, top, torch.full_like(top, -1)))
    return labels, mask
