"""Dense sigmoid losses of the ADL testbed (`labelstore experiment adl`): the focal loss (Lin et al.,
2017, RetinaNet) as the hard-label term, and the distillation terms ADL is compared with.

Every distillation term here is Σ w · D / N over all outputs, with the same base D (the alpha-balanced
BCE against the teacher, `adl.balanced_bce`) and normaliser N = max(Σ q^θ, 1) as ADL's official code,
so between the arms only the weight w changes: 1 (`bce_distillation`), the focal term (1 - p_t)^γ
(`focal_distillation_loss`) or ADW (`adl.adl_loss`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .adl import balanced_bce, soft_normalizer


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0, alpha: float = 0.25) -> Tensor:
    """RetinaNet's focal loss over every sigmoid output, normalised by the positives. Returns a scalar.

        p_t     = p if y = 1 else 1 - p,        alpha_t = alpha if y = 1 else 1 - alpha
        FL      = -alpha_t · (1 - p_t)^gamma · log p_t
        loss    = Σ FL / max(Σ y, 1)
    targets y in {0, 1}, the shape of logits; log p_t = logsigmoid(±x) (finite for x = ±1e4).
    """
    y = targets.to(logits.dtype)
    p = logits.sigmoid()
    p_t = y * p + (1 - y) * (1 - p)
    log_pt = y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits)
    alpha_t = y * alpha + (1 - y) * (1 - alpha)
    return -(alpha_t * (1 - p_t) ** gamma * log_pt).sum() / y.sum().clamp_min(1.0)


def bce_distillation(logits: Tensor, teacher_probs: Tensor, alpha: float = 0.5, theta: float = 1.8) -> Tensor:
    """Plain distillation to the teacher's sigmoid outputs: Σ D / N (D = alpha-balanced BCE, N = max(Σ q^θ, 1)).

    At alpha = 0.5, D = (KL + T(q)) / 2 with T(q) constant: the gradient is (p - q) / (2N), half the binary KL's.
    """
    q = teacher_probs.to(logits.dtype)
    return balanced_bce(logits, q, alpha).sum() / soft_normalizer(q, theta)


def focal_distillation_loss(logits: Tensor, teacher_probs: Tensor, targets: Tensor, gamma: float = 2.0,
                            alpha: float = 0.5, theta: float = 1.8) -> Tensor:
    """The paper's focal distillation loss (FDL), the focal term of the hard label times the distillation term:

        p_t  = p if y = 1 else 1 - p            (y: the hard label, ground truth or the teacher's pseudo label)
        loss = Σ (1 - p_t)^gamma · D / N         (D = alpha-balanced BCE to q, N = max(Σ q^θ, 1))
    The focal term stays in the autograd graph.
    """
    q = teacher_probs.to(logits.dtype)
    y = targets.to(logits.dtype)
    p = logits.sigmoid()
    p_t = y * p + (1 - y) * (1 - p)
    return ((1 - p_t) ** gamma * balanced_bce(logits, q, alpha)).sum() / soft_normalizer(q, theta)
