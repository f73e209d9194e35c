"""Adaptive Distillation Loss (Tang et al., 2019, arXiv:1901.00366), in the form of the official code.

ADL re-weights the teacher->student distillation term of every output by an "adaptive distillation
weight" ADW, large where the student is far from the teacher (large KL: hard to mimic) or where the
teacher itself is uncertain (large entropy T(q): hard to learn), in the spirit of the focal loss.
The paper writes the loss as ADW · KL; the official kernel (caffe2
`sigmoid_adaptive_distillation_loss_op.cu`) multiplies ADW into an alpha-balanced binary
cross-entropy, and that is what `adl_loss` computes (docs/losses.md lists the differences).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .kd import xlogx
from labelstore.errors import ConfigError


def binary_kl(student_logits: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """Elementwise (KL, T): KL(q || σ(x)) per sigmoid output and the teacher entropy T(q).

        log p = logsigmoid(x), log(1 - p) = logsigmoid(-x)             (finite for x = +-1e4)
        T(q)  = -(q log q + (1-q) log(1-q))                           (0 log 0 = 0)
        KL    = -q log p - (1-q) log(1-p) - T(q)                       (= BCE(x, q) - T(q))
    """
    neg_entropy = xlogx(q) + xlogx(1 - q)
    bce = -(q * F.logsigmoid(student_logits) + (1 - q) * F.logsigmoid(-student_logits))
    return bce + neg_entropy, -neg_entropy


def balanced_bce(student_logits: Tensor, q: Tensor, alpha: float = 0.5) -> Tensor:
    """Elementwise alpha-balanced BCE against soft targets q (the official distillation kernels' base):

        D = -(alpha · q · log p + (1 - alpha) · (1-q) · log(1-p))      (alpha = 0.5: BCE / 2)
    """
    return -(alpha * q * F.logsigmoid(student_logits) + (1 - alpha) * (1 - q) * F.logsigmoid(-student_logits))


def soft_normalizer(q: Tensor, theta: float = 1.8) -> Tensor:
    """ADL's normaliser N = max(Σ q^θ, 1) over every element (the official PowSum, LOGITS_POWER 1.8)."""
    return (q**theta).sum().clamp_min(1.0)


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
    alpha: float = 0.5,
    mode: str = "binary",
    detach_weight: bool = False,
) -> Tensor:
    """Adaptive distillation loss. Returns a scalar.

    mode="binary" (the official kernel): student_logits, teacher_probs of any (equal) shape, one
    sigmoid per element; KL, T(q) as in `binary_kl`, D as in `balanced_bce`:
        ADW   = (1 - exp(-(KL + beta · T(q))))^gamma
        loss  = Σ ADW · D / N,     N = max(Σ q^theta, 1)   (sums over all elements)
    With beta = 1 the exponent is the plain BCE, as in the official kernel at its configs' LOSS_BETA 0
    (the kernel computes KL + (1 - LOSS_BETA) · T).
    mode="softmax" (no official counterpart): last dim is classes, [..., C]; per sample
        KL    = Σ_c q_c (log q_c - log_softmax(x)_c),   T(q) = -Σ_c q_c log q_c
        loss  = mean over samples of ADW · (KL + T(q))   (ADW times the soft cross-entropy)
    0 log 0 = 0 everywhere (value and gradient finite at q in {0, 1}).
    ADW is part of the autograd graph (as in the official gradient kernel) unless detach_weight=True.
    """
    q = teacher_probs.to(student_logits.dtype)
    if mode == "binary":
        kl, entropy = binary_kl(student_logits, q)
        weight = _adw(kl, entropy, gamma, beta)
        if detach_weight:
            weight = weight.detach()
        return (weight * balanced_bce(student_logits, q, alpha)).sum() / soft_normalizer(q, theta)
    if mode == "softmax":
        log_p = F.log_softmax(student_logits, dim=-1)  # [..., C]
        entropy = -xlogx(q).sum(dim=-1)  # [...]
        ce = -(q * log_p).sum(dim=-1)  # [...]
        weight = _adw(ce - entropy, entropy, gamma, beta)
        if detach_weight:
            weight = weight.detach()
        return (weight * ce).mean()
    raise ConfigError(f"mode must be 'binary' or 'softmax', got {mode!r}")


def adl_select_unlabeled(
    teacher_probs: Tensor, gt: Tensor, threshold: float = 0.9
) -> tuple[Tensor, Tensor]:
    """ADL semi-supervised selection of training labels (classification: one label per view).

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


def adl_select_images(teacher_probs: Tensor, threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """ADL semi-supervised selection for dense outputs (the paper: keep the unlabelled images in which
    the teacher finds at least one object).

    teacher_probs: [B, ...] per-image sigmoid outputs (cells x classes).
    returns pseudo labels [B, ...] float (1 where q >= threshold, else 0) and keep [B] bool
    (images with at least one pseudo positive).
    """
    pseudo = (teacher_probs >= threshold).to(teacher_probs.dtype)
    return pseudo, pseudo.flatten(1).amax(dim=1) > 0
