"""Plain knowledge distillation (Hinton, Vinyals & Dean, 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from labelstore.errors import ConfigError


def xlogx(q: Tensor) -> Tensor:
    """Elementwise q * log(q) with 0 * log 0 = 0, finite value AND gradient at q = 0.

    Double-where trick: log is only ever evaluated on a safe input, so the unused
    branch cannot put NaN/inf into the backward pass (gradient at q = 0 is 0).
    """
    pos = q > 0
    q_safe = torch.where(pos, q, torch.ones_like(q))
    return torch.where(pos, q * torch.log(q_safe), torch.zeros_like(q))


def soften(q: Tensor, temperature: float) -> Tensor:
    """The teacher distribution at temperature T, from its T = 1 probabilities q [..., C]:

        q_T,c = q_c^(1/T) / sum_j q_j^(1/T)  =  softmax(log q / T)_c       (log 0 = -inf: zeros stay 0)

    Exact when q is the teacher's full softmax (log q = z - logsumexp(z), the shift cancels). For q
    rebuilt from a stored top-k (dense_soft_labels), the top-k ratios are exact and the tail is
    the fill's (uniform) estimate; T = 1 returns q itself.
    """
    if temperature == 1.0:
        return q
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    log_q = torch.where(q > 0, q.clamp_min(torch.finfo(q.dtype).tiny).log(), torch.full_like(q, float("-inf")))
    return F.softmax(log_q / temperature, dim=-1)


def kd_kl(student_logits: Tensor, teacher_probs: Tensor, temperature: float = 1.0) -> Tensor:
    """Hinton KD loss: KL(teacher || student at temperature) * temperature^2.

    student_logits, teacher_probs: [B, C] (classes on the last dim; extra leading
    dims are averaged like the batch). Returns a scalar:

        log p = log_softmax(student_logits / temperature)
        loss  = T^2 * mean_b sum_c ( q_c log q_c - q_c log p_c ),   0 log 0 = 0,  q = soften(teacher, T)

    teacher_probs are the T = 1 probabilities: q = soften(teacher_probs, T) (Hinton's softened
    teacher; the same T on both sides).
    """
    log_p = F.log_softmax(student_logits / temperature, dim=-1)  # [B, C]
    q = soften(teacher_probs.to(log_p.dtype), temperature)
    kl = (xlogx(q) - q * log_p).sum(dim=-1)  # [B]
    return kl.mean() * temperature**2
