"""Plain knowledge distillation (Hinton, Vinyals & Dean, 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def xlogx(q: Tensor) -> Tensor:
    """Elementwise q * log(q) with 0 * log 0 = 0, finite value AND gradient at q = 0.

    Double-where trick: log is only ever evaluated on a safe input, so the unused
    branch cannot put NaN/inf into the backward pass (gradient at q = 0 is 0).
    """
    pos = q > 0
    q_safe = torch.where(pos, q, torch.ones_like(q))
    return torch.where(pos, q * torch.log(q_safe), torch.zeros_like(q))


def kd_kl(student_logits: Tensor, teacher_probs: Tensor, temperature: float = 1.0) -> Tensor:
    """Hinton KD loss: KL(teacher || student at temperature) * temperature^2.

    student_logits, teacher_probs: [B, C] (classes on the last dim; extra leading
    dims are averaged like the batch). Returns a scalar:

        log p = log_softmax(student_logits / temperature)
        loss  = T^2 * mean_b sum_c ( q_c log q_c - q_c log p_c ),   0 log 0 = 0

    teacher_probs are used as given (soften them with the same temperature
    upstream if that is what you want).
    """
    log_p = F.log_softmax(student_logits / temperature, dim=-1)  # [B, C]
    q = teacher_probs.to(log_p.dtype)
    kl = (xlogx(q) - q * log_p).sum(dim=-1)  # [B]
    return kl.mean() * temperature**2
