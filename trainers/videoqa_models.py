"""Built-in VideoQA models: a teacher classifier over an answer vocabulary and a smaller student.

Both expose the split the teacher stage uses for cheap MC dropout:

    feats  = model.features(frames, q_ids, q_mask)   # backbone: frames [B, m, 3, H, W] -> [B, F]
    logits = model.head(feats)                         # answer head with dropout: [B, F] -> [B, A]
    model(frames, q_ids, q_mask) == model.head(model.features(...))

Architecture (per question; frames may be shared by the questions of a video, `video_index`):
    frame encoder  : 3 strided 3x3 conv-BN-ReLU (H, W -> g x g cells, g = H/8), per frame
                     cells c_ts [C] (+ cell position embedding) and a global f_t = Linear(flatten) [D]
                     (the flattened grid keeps *where* things are)
    question       : word embedding, then a GRU (teacher) or a masked mean (student): q [D]
    spatial attn   : b_ts = softmax_s(<W_c c_ts, q>),  o_t = sum_s b_ts c_ts,  y_t = sum_s b_ts (row_s, col_s)
                     (y_t: where the asked-about object is in frame t; its trajectory gives the motion)
    temporal       : h_t = f_t + pos_t + Linear([o_t, y_t]), then + ReLU(Conv1d_k3(h))
                     module `tokens` (an nn.Identity) outputs h [B, m, D], the per-frame token sequence
                     before temporal pooling: what `teach --task videoqa --features tokens` records
    temporal attn  : a_t = softmax_t(<W h_t, q> / sqrt(D)),  v = sum_t a_t h_t
    feats          : [v * q, v, q, Linear(y_1..y_m)]  [4D]
    head           : Dropout(p) -> Linear(4D, D) -> ReLU -> Dropout(p) -> Linear(D, A)

`video_index` (optional, int64 [B]): frames hold V distinct clips [V, m, 3, H, W] and question b
uses clip video_index[b], so each clip is encoded once per batch (questions of a video share their
frames in an epoch: the store keys frame indices by video row).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from labelstore.errors import ConfigError


class FrameEncoder(nn.Module):
    """uint-normalised frames [N, 3, H, W] -> [N, D]; H, W divisible by 8."""

    def __init__(self, width: int, dim: int, frame_size: int):
        super().__init__()
        c1, c2, c3 = width // 2, width, width
        self.convs = nn.Sequential(
            nn.Conv2d(3, c1, 3, stride=2, padding=1), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.BatchNorm2d(c3), nn.ReLU(inplace=True),
        )
        g = frame_size // 8
        self.pool = nn.AdaptiveAvgPool2d(4) if g > 4 else nn.Identity()
        self.proj = nn.Linear(c3 * min(g, 4) ** 2, dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, 3, H, W] -> (global [N, D], cells [N, S, C] with S = min(g, 4)^2)."""
        c = self.pool(self.convs(x))  # [N, C, g, g]
        return F.relu(self.proj(c.flatten(1))), c.flatten(2).transpose(1, 2)


class VideoQAClassifier(nn.Module):
    """Open-ended VideoQA as classification over the answer vocabulary (see module docstring)."""

    def __init__(
        self,
        num_tokens: int,
        num_answers: int,
        *,
        dim: int = 64,
        width: int = 32,
        num_frames: int = 8,
        frame_size: int = 32,
        dropout: float = 0.3,
        question_encoder: str = "gru",
    ):
        super().__init__()
        if question_encoder not in ("gru", "mean"):
            raise ConfigError(f"question_encoder must be 'gru' or 'mean', got {question_encoder!r}")
        self.config = dict(num_tokens=num_tokens, num_answers=num_answers, dim=dim, width=width, num_frames=num_frames,
                           frame_size=frame_size, dropout=dropout, question_encoder=question_encoder)
        self.frames = FrameEncoder(width, dim, frame_size)
        g = min(frame_size // 8, 4)
        yy, xx = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        self.register_buffer("cell_xy", torch.stack([yy, xx], -1).flatten(0, 1).float() / max(g - 1, 1) - 0.5)  # [S, 2]
        self.cell_pos = nn.Parameter(torch.zeros(g * g, width))
        self.cell_att = nn.Linear(width, dim, bias=False)
        self.cell_proj = nn.Linear(width + 2, dim)
        self.traj = nn.Linear(2 * num_frames, dim)
        self.pos = nn.Parameter(torch.zeros(num_frames, dim))
        self.temporal = nn.Conv1d(dim, dim, 3, padding=1)
        self.embed = nn.Embedding(num_tokens, dim, padding_idx=0)
        self.gru = nn.GRU(dim, dim, batch_first=True) if question_encoder == "gru" else None
        self.tokens = nn.Identity()  # h [B, m, D]: the per-frame tokens before pooling, named for a forward hook
        self.att = nn.Linear(dim, dim, bias=False)
        self.answer_head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(4 * dim, dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(dim, num_answers),
        )

    def encode_question(self, q_ids: Tensor, q_mask: Tensor) -> Tensor:
        """q_ids int64 [B, L], q_mask bool [B, L] -> [B, D]."""
        e = self.embed(q_ids)  # [B, L, D]
        mask = q_mask.to(e.dtype)[..., None]  # [B, L, 1]
        if self.gru is not None:
            e, _ = self.gru(e)
        return (e * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def features(self, frames: Tensor, q_ids: Tensor, q_mask: Tensor, video_index: Tensor | None = None) -> Tensor:
        """frames [B, m, 3, H, W] (or [V, m, ...] with video_index [B]), q_ids [B, L], q_mask [B, L]
        -> feats [B, 4D] (no dropout here)."""
        V, m = frames.shape[:2]
        f, cells = self.frames(frames.flatten(0, 1))  # [V*m, D], [V*m, S, C]
        f = f.view(V, m, -1)
        cells = cells.reshape(V, m, cells.shape[1], -1) + self.cell_pos  # [V, m, S, C]
        if video_index is not None:
            f, cells = f[video_index], cells[video_index]  # [B, m, D], [B, m, S, C]
        q = self.encode_question(q_ids, q_mask)  # [B, D]
        b = torch.softmax(torch.einsum("btsd,bd->bts", self.cell_att(cells), q) / math.sqrt(q.shape[1]), dim=2)  # [B, m, S]
        o = torch.einsum("bts,btsc->btc", b, cells)  # [B, m, C]
        y = b @ self.cell_xy  # [B, m, 2], attended position per frame
        h = f + self.pos[:m] + self.cell_proj(torch.cat([o, y], dim=2))  # [B, m, D]
        h = self.tokens(F.relu(self.temporal(h.transpose(1, 2))).transpose(1, 2) + h)  # [B, m, D]
        a = torch.softmax((self.att(h) @ q[:, :, None]).squeeze(2) / math.sqrt(h.shape[2]), dim=1)  # [B, m]
        v = (a[:, :, None] * h).sum(1)  # [B, D]
        return torch.cat([v * q, v, q, F.relu(self.traj(y.flatten(1)))], dim=1)

    def head(self, feats: Tensor) -> Tensor:
        """feats [B, 4D] -> answer logits [B, A]; the only dropout of the model."""
        return self.answer_head(feats)

    def forward(self, frames: Tensor, q_ids: Tensor, q_mask: Tensor, video_index: Tensor | None = None) -> Tensor:
        return self.head(self.features(frames, q_ids, q_mask, video_index))


def videoqa_teacher(num_tokens: int, num_answers: int, *, num_frames: int = 8, frame_size: int = 32,
                    dropout: float = 0.3) -> VideoQAClassifier:
    """The built-in teacher: D = 64, conv width 32, GRU question encoder."""
    return VideoQAClassifier(num_tokens, num_answers, dim=64, width=32, num_frames=num_frames, frame_size=frame_size,
                             dropout=dropout, question_encoder="gru")


def videoqa_student(num_tokens: int, num_answers: int, *, num_frames: int = 8, frame_size: int = 32,
                    dropout: float = 0.1) -> VideoQAClassifier:
    """The built-in student: D = 32, conv width 16, mean-pooled question words."""
    return VideoQAClassifier(num_tokens, num_answers, dim=32, width=16, num_frames=num_frames, frame_size=frame_size,
                             dropout=dropout, question_encoder="mean")
