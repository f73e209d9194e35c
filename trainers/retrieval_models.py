"""Built-in text-to-video retrieval models: a cross-modal teacher and a holistic TeachCLIP student.

Both follow the retrieval-model protocol used by `labelstore.pipeline.teach_retrieval` and
`labelstore.trainers.retrieval` (B videos, N texts, m frames, D embedding size):

    encode_video(x)            x: frames float [B, m, 3, H, W] or features [B, m, F] -> video_repr
    encode_text(ids, mask)     ids int64 [N, L], mask bool [N, L]                    -> text_repr
    similarity(v, t)           -> [B, N] scaled similarity logits s(video, text)
    frame_text_scores(v, t)    matched pairs (row i of v with row i of t) -> [N, m] per-frame scores
                               (a teacher: the scores whose softmax over frames at the store's
                               frame_score_temperature is the fine-grained target; a student: its
                               frame logits)

A repr is a tensor or a tuple of tensors with the batch on dim 0. Dual encoders (usable as
teachers in the store's "embeddings" mode) also expose

    video_embedding(v) -> [B, D], text_embedding(t) -> [N, D] (L2-normalised) and
    similarity_scale() -> float, with similarity(v, t) = scale * video_embedding(v) @ text_embedding(t).T

* `CrossModalTeacher` (X-CLIP-like): per-frame CNN, temporal transformer, text transformer; the
  sentence attends over the frames:  r_f = <t, f_f> / tau,  a = softmax_f(r),
  s = scale * cos(sum_f a_f f_f, t);  frame_text_scores = cos(t, f_f) = tau * r (the official
  TeachCLIP target is softmax_f of this cosine at temperature 1, not of r).
* `HolisticStudent` (TeachCLIP): per-frame CNN, temporal transformer, AttentionalFrameAggregation
  (text-independent frame weights w), text transformer; s = scale * cos(v, t), scale = exp(logit_scale)
  clamped at 100;  frame_text_scores = w (the student's frame logits of its own video).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelstore.trainers.losses.teachclip import AttentionalFrameAggregation
from labelstore.errors import DataError

MAX_SCALE = 100.0


class FrameEncoder(nn.Module):
    """Per-frame encoder. Images [B, m, 3, H, W] -> [B, m, D] through a small strided CNN that keeps the
    spatial layout (flattened, not pooled: motion direction needs positions); or features
    [B, m, F] -> [B, m, D] through a linear layer when `feature_dim` is set."""

    def __init__(self, dim: int, frame_size: int = 32, width: int = 16, feature_dim: int | None = None):
        super().__init__()
        self.feature_dim = feature_dim
        if feature_dim is not None:
            self.net = nn.Linear(feature_dim, dim)
        else:
            side = frame_size // 8
            self.net = nn.Sequential(
                nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
                nn.Flatten(), nn.Linear(2 * width * side * side, dim),
            )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        B, m = x.shape[:2]
        if self.feature_dim is not None and x.shape[-1] != self.feature_dim:
            raise DataError(f"FrameEncoder: features have dimension {x.shape[-1]}, the model expects {self.feature_dim}")
        y = self.net(x.reshape(B * m, *x.shape[2:]))  # [B*m, D]
        return self.norm(y).reshape(B, m, -1)


class TemporalTransformer(nn.Module):
    """Frame features [B, m, D] + learned position embedding -> transformer layers -> [B, m, D] (residual)."""

    def __init__(self, dim: int, max_frames: int = 64, layers: int = 1, heads: int = 4):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(max_frames, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.enc(x + self.pos[: x.shape[1]])


class TextEncoder(nn.Module):
    """Word embedding + position embedding -> transformer layers -> masked mean pool -> Linear: [N, L] -> [N, D]."""

    def __init__(self, vocab_size: int, dim: int, max_len: int = 32, layers: int = 1, heads: int = 4):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(max_len, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        mask = mask.bool()
        empty = ~mask.any(1)  # an empty caption would make every key masked: keep its first token
        mask = mask.clone()
        mask[empty, 0] = True
        h = self.enc(self.emb(ids) + self.pos[: ids.shape[1]], src_key_padding_mask=~mask)  # [N, L, D]
        w = mask.float()[..., None]
        return self.proj((h * w).sum(1) / w.sum(1))  # [N, D]


class _Scale(nn.Module):
    """Learned logit scale: scale = min(exp(log_scale), 100), initialised at 1/0.07."""

    def __init__(self):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self) -> Tensor:
        return self.log_scale.exp().clamp(max=MAX_SCALE)


class CrossModalTeacher(nn.Module):
    """X-CLIP-like teacher: text-conditioned frame pooling (see module docstring).

    video_repr = f [B, m, D] L2-normalised frame features; text_repr = t [N, D] L2-normalised.
        r[b, n, f] = <t_n, f_bf> / tau          (tau = 0.1, frame-text relevance)
        p[b, n]    = normalise(sum_f softmax_f(r)[b, n, f] * f_bf)
        s[b, n]    = scale * (<p[b, n], t_n> + <mean_f f_bf / |.|, t_n>) / 2
        frame_text_scores(v, t)[n, f] = <t_n, f_nf> = cos(sentence n, frame f of its video)
    """

    name = "builtin-xclip-teacher"

    def __init__(self, vocab_size: int, dim: int = 64, frame_size: int = 32, num_frames: int = 8,
                 feature_dim: int | None = None, max_len: int = 32, tau: float = 0.1):
        super().__init__()
        self.feature_dim = feature_dim
        self.frames = FrameEncoder(dim, frame_size, width=16, feature_dim=feature_dim)
        self.temporal = TemporalTransformer(dim, max(64, num_frames), layers=1)
        self.text = TextEncoder(vocab_size, dim, max_len, layers=1)
        self.scale = _Scale()
        self.tau = tau

    def encode_video(self, x: Tensor) -> Tensor:
        return F.normalize(self.temporal(self.frames(x)), dim=-1)  # [B, m, D]

    def encode_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        return F.normalize(self.text(ids, mask), dim=-1)  # [N, D]

    def similarity(self, v: Tensor, t: Tensor) -> Tensor:
        r = torch.einsum("bfd,nd->bnf", v, t) / self.tau  # [B, N, m]
        pooled = F.normalize(torch.einsum("bnf,bfd->bnd", r.softmax(-1), v), dim=-1)  # [B, N, D]
        s_att = (pooled * t[None]).sum(-1)  # [B, N]
        s_mean = F.normalize(v.mean(1), dim=-1) @ t.T  # [B, N]
        return self.scale() * (s_att + s_mean) / 2

    def frame_text_scores(self, v: Tensor, t: Tensor) -> Tensor:
        return torch.einsum("bfd,bd->bf", v, t)  # [N, m] cosines (v, t are L2-normalised)


class HolisticStudent(nn.Module):
    """TeachCLIP student: one video embedding per clip (AttentionalFrameAggregation), cosine similarity.

    video_repr = (v [B, D] L2-normalised, w [B, m] frame logits); text_repr = t [N, D] L2-normalised;
    s = scale * v @ t.T; frame_text_scores((v, w), t) = w.
    """

    name = "builtin-teachclip-student"

    def __init__(self, vocab_size: int, dim: int = 64, frame_size: int = 32, num_frames: int = 8,
                 feature_dim: int | None = None, max_len: int = 32):
        super().__init__()
        self.feature_dim = feature_dim
        self.frames = FrameEncoder(dim, frame_size, width=16, feature_dim=feature_dim)
        self.temporal = TemporalTransformer(dim, max(64, num_frames), layers=1)
        self.pool = AttentionalFrameAggregation(dim)
        self.text = TextEncoder(vocab_size, dim, max_len, layers=1)
        self.scale = _Scale()

    def encode_video(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.pool(self.temporal(self.frames(x)))  # ([B, D], [B, m])

    def encode_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        return F.normalize(self.text(ids, mask), dim=-1)

    def similarity(self, v: tuple[Tensor, Tensor], t: Tensor) -> Tensor:
        return self.scale() * v[0] @ t.T  # [B, N]

    def frame_text_scores(self, v: tuple[Tensor, Tensor], t: Tensor) -> Tensor:
        return v[1]  # [N, m]: text-independent

    # dual-encoder interface ("embeddings" mode when used as a teacher)
    def video_embedding(self, v: tuple[Tensor, Tensor]) -> Tensor:
        return v[0]

    def text_embedding(self, t: Tensor) -> Tensor:
        return t

    def similarity_scale(self) -> float:
        return float(self.scale().detach())
