"""TeachCLIP distillation (Tian et al., CVPR 2024).

A student text-to-video retriever with a cheap holistic video feature learns
from one or more stronger teachers through
  * CGT (coarse-grained teaching): match the teachers' text-video similarity
    distributions, row- and column-wise, with a Pearson-correlation distance;
  * FGT (fine-grained teaching): the student's per-frame attention logits are
    pushed towards the teachers' per-frame relevance scores;
plus the usual symmetric InfoNCE on the student's own similarity matrix.

Shapes: B texts, B' videos (B' = B for the usual in-batch matrix), m frames, dim features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelstore.errors import ConfigError


def _pearson(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """pearson(a, b) = sum (a - mean a)(b - mean b) / (||a - mean a|| ||b - mean b|| + 1e-8) along `dim`.

    The 1e-8 keeps constant vectors (e.g. softmax over a single column) finite: correlation 0.
    """
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    num = (a * b).sum(dim=dim)
    den = torch.linalg.vector_norm(a, dim=dim) * torch.linalg.vector_norm(b, dim=dim) + 1e-8
    return num / den


def teachclip_cgt_loss(student_sim: Tensor, teacher_sim: Tensor) -> Tensor:
    """Coarse-grained teaching loss. student_sim, teacher_sim: [B, B'] -> scalar.

        d_rows = mean_i ( 1 - pearson(softmax_row(S)_i, softmax_row(Q)_i) )     (i over B rows)
        d_cols = mean_j ( 1 - pearson(softmax_col(S)_:j, softmax_col(Q)_:j) )   (j over B' columns)
        loss   = d_rows + d_cols
    softmax_row normalises over dim 1, softmax_col over dim 0; pearson as in _pearson (+1e-8).
    """
    t = teacher_sim.to(student_sim.dtype)
    d_rows = (1 - _pearson(F.softmax(student_sim, dim=1), F.softmax(t, dim=1), dim=1)).mean()
    d_cols = (1 - _pearson(F.softmax(student_sim, dim=0), F.softmax(t, dim=0), dim=0)).mean()
    return d_rows + d_cols


def _masked_log_softmax(logits: Tensor, frame_mask: Tensor | None) -> Tensor:
    """log_softmax over frames (dim 1) ignoring padded frames; padded entries are returned as 0.

    Rows with no valid frame are softmaxed unmasked (so nothing is NaN, even in backward)
    and then zeroed like every other padded entry.
    """
    if frame_mask is None:
        return F.log_softmax(logits, dim=1)
    has_valid = frame_mask.any(dim=1, keepdim=True)  # [B, 1]
    hide = ~frame_mask & has_valid  # [B, m]
    log_w = F.log_softmax(logits.masked_fill(hide, float("-inf")), dim=1)  # [B, m]
    return torch.where(frame_mask, log_w, torch.zeros_like(log_w))


def teachclip_fgt_loss(
    student_frame_logits: Tensor,
    teacher_frame_scores: Tensor,
    frame_mask: Tensor | None = None,
) -> Tensor:
    """Fine-grained teaching loss. student_frame_logits, teacher_frame_scores: [B, m] -> scalar.

        log w = log_softmax over frames of the student's frame logits
        loss  = -(1 / (B m)) * sum_{b, f} teacher[b, f] * log w[b, f]
    With frame_mask [B, m] (bool, True = valid): padded frames are excluded from the
    softmax and the sum, and 1/(B m) becomes 1/(number of valid frames). Rows without
    any valid frame contribute 0 (and the loss is 0 if no frame at all is valid).
    """
    log_w = _masked_log_softmax(student_frame_logits, frame_mask)  # [B, m]
    t = teacher_frame_scores.to(log_w.dtype)
    if frame_mask is None:
        return -(t * log_w).sum() / log_w.numel()
    t = torch.where(frame_mask, t, torch.zeros_like(t))  # padded scores may be garbage (NaN)
    return -(t * log_w).sum() / frame_mask.sum().clamp_min(1)


def infonce_sym(sim: Tensor) -> Tensor:
    """Symmetric InfoNCE on a square similarity (already scaled) matrix sim: [B, B] -> scalar.

        loss = ( CE(sim, diag) + CE(sim^T, diag) ) / 2,   CE averaged over the B rows.
    """
    labels = torch.arange(sim.shape[0], device=sim.device)
    return (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels)) / 2


class AttentionalFrameAggregation(nn.Module):
    """Attention pooling of frame features into one video embedding (TeachCLIP's student head).

    forward(x [B, m, dim], frame_mask [B, m] bool or None) -> (video [B, dim], w [B, m])
        w     = Linear(dim -> 1)(ReLU(Linear(dim -> dim)(x)))          per-frame logits
        a     = softmax over valid frames of w / temperature              (temperature 0.1)
        video = L2-normalise( sum_f a_f * L2-normalise(x_f) )
    w is returned raw: it is the student_frame_logits of teachclip_fgt_loss. A row
    with no valid frame gets a zero embedding.
    """

    def __init__(self, dim: int, temperature: float = 0.1):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, 1)
        self.temperature = temperature

    def forward(self, x: Tensor, frame_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        w = self.fc2(F.relu(self.fc1(x))).squeeze(-1)  # [B, m]
        a = _masked_log_softmax(w / self.temperature, frame_mask).exp()  # [B, m]
        if frame_mask is not None:
            a = a * frame_mask  # padded entries of the log were 0 -> exp 1: zero them
        frames = F.normalize(x, dim=-1)  # [B, m, dim]
        video = F.normalize((a[:, :, None] * frames).sum(dim=1), dim=-1)  # [B, dim]
        return video, w


def teachclip_objective(
    infonce: Tensor, cgt: Tensor | float, fgt: Tensor | float, weights: tuple[float, float, float] = (0.2, 1.0, 2.0)
) -> Tensor:
    """L = weights[0] * L_infonce + weights[1] * L_cgt + weights[2] * L_fgt."""
    w_nce, w_cgt, w_fgt = weights
    return w_nce * infonce + w_cgt * cgt + w_fgt * fgt


TEACHING = ("both", "cgt", "fgt")  # which teaching terms run next to InfoNCE (the paper's ablations)


def teachclip_loss(
    student_sim: Tensor,
    student_frame_logits: Tensor,
    teacher_sims: list[Tensor],
    teacher_frame_scores: list[Tensor],
    frame_mask: Tensor | None = None,
    weights: tuple[float, float, float] = (0.2, 1.0, 2.0),
    teaching: str = "both",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Full TeachCLIP loss with one or more teachers.

    student_sim: [B, B]; student_frame_logits: [B, m]; teacher_sims: list of [B, B];
    teacher_frame_scores: list of [B, m] (same length, >= 1); frame_mask: [B, m] bool or None.
        cgt   = mean over teachers of teachclip_cgt_loss(student_sim, teacher_sim_k)
        fgt   = mean over teachers of teachclip_fgt_loss(student_frame_logits, teacher_frame_k, frame_mask)
        total = teachclip_objective(infonce_sym(student_sim), cgt, fgt, weights)          (teaching "both")
              = weights[0] * infonce + weights[1] * cgt                                   (teaching "cgt")
              = weights[0] * infonce + weights[2] * fgt                                   (teaching "fgt")
    The term an ablation leaves out is not computed: it has no part and no gradient.
    returns (total, {"infonce", "cgt" and/or "fgt"}), all scalar tensors in the graph.
    """
    if teaching not in TEACHING:
        raise ConfigError(f"teaching must be one of {TEACHING}, got {teaching!r}")
    if len(teacher_sims) == 0 or len(teacher_sims) != len(teacher_frame_scores):
        raise ConfigError(
            f"need >= 1 teacher and as many frame-score tensors as similarity matrices, "
            f"got {len(teacher_sims)} and {len(teacher_frame_scores)}"
        )
    nce = infonce_sym(student_sim)
    parts = {"infonce": nce}
    if teaching in ("both", "cgt"):
        parts["cgt"] = torch.stack([teachclip_cgt_loss(student_sim, t) for t in teacher_sims]).mean()
    if teaching in ("both", "fgt"):
        parts["fgt"] = torch.stack(
            [teachclip_fgt_loss(student_frame_logits, t, frame_mask) for t in teacher_frame_scores]
        ).mean()
    # a term the ablation leaves out counts as the constant 0
    return teachclip_objective(nce, parts.get("cgt", 0.0), parts.get("fgt", 0.0), weights), parts
