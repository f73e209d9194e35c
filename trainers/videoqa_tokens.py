"""`labelstore train --task videoqa --loss token-mse`: CE plus the query-token MSE to the stored teacher tokens.

The store holds per view the teacher's token outputs t [Q_t, D_t] (`teach --task videoqa --features NAME`,
pipeline/teach_videoqa.py). The student's module of the same name (for the built-in models `tokens`,
the per-frame tokens before temporal pooling) gives s [B, Q_s, D_s]; a learnt projector P = Linear(D_s, D_t)
maps each token. Token counts are matched by average pooling both sides to Q = min(Q_s, Q_t) tokens in
order (pool_tokens; nothing changes when Q_s = Q_t):

    L = CE(z, gt) + alpha * query_token_mse(pool_Q(P(s)), pool_Q(t))
      = CE(z, gt) + alpha * (1 / (B Q D_t)) sum_{b,q,d} (pool_Q(P(s))_{b,q,d} - pool_Q(t)_{b,q,d})^2

(trainers/losses/features.py, query_token_mse; docs/losses.md states how this departs from ViLA's
Q-Former distiller).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from labelstore.errors import ConfigError, StoreError
from labelstore.pipeline import features
from labelstore.pipeline.teach_videoqa import probe_tokens
from labelstore.trainers.losses import query_token_mse

TOKEN_LOSS = "token-mse"


def check_token_store(store) -> dict:
    """The store's `features` attribute; StoreError naming the store and `teach --features` without it."""
    a = features.feature_attrs(store)
    if a is None or "tokens" not in a:
        raise StoreError(f"{store.path}: --loss {TOKEN_LOSS} needs the teacher's token features, but the store has "
                         "none (taught without --features); teach it with `labelstore teach --task videoqa "
                         "--features tokens` (or another module name)")
    return a


def pool_tokens(x: Tensor, q: int) -> Tensor:
    """[B, Q, D] -> [B, q, D]: token j is the mean of tokens floor(j Q / q) .. ceil((j + 1) Q / q) - 1
    (adaptive average pooling along the token axis; x itself when Q = q)."""
    return x if x.shape[1] == q else F.adaptive_avg_pool1d(x.transpose(1, 2), q).transpose(1, 2)


class TokenStudent(nn.Module):
    """The student, a hook on its token module and the projector P = Linear(D_s, D_t) trained with it.

    forward(...) = student(...) (the logits), keeping the student's tokens [B, Q_s, D_s] for token_loss.
    """

    def __init__(self, student: nn.Module, store, num_frames: int, frame_size: tuple[int, int], max_len: int,
                 module: str | None = None):
        super().__init__()
        a = check_token_store(store)
        self.store, self.student = store, student
        name = module or a["module"]
        if name not in dict(student.named_modules()):
            raise ConfigError(f"--loss {TOKEN_LOSS}: the student has no module {name!r} (the store's teacher tokens "
                              f"come from {a['module']!r}); use a student with a module of that name")
        self.hook = features.FeatureHook(student, name, store.num_classes, tokens=True, grad=True)
        q_s, d_s = probe_tokens(student, self.hook, num_frames, frame_size, max_len)
        self.num_tokens = min(q_s, int(a["tokens"]))
        self.projector = nn.Linear(d_s, int(a["dim"]))
        self._tokens: Tensor | None = None

    def forward(self, *args) -> Tensor:
        with self.hook.capture():
            logits = self.student(*args)
        self._tokens = self.hook.take()  # [B, Q_s, D_s]
        return logits

    def token_loss(self, epoch: int, rows) -> Tensor:
        """query_token_mse of the last forward's projected tokens against the stored tokens of (epoch, rows)."""
        t = torch.from_numpy(features.read_features(self.store, epoch, np.asarray(rows)))  # [B, Q_t, D_t]
        s = self.projector(self._tokens)  # [B, Q_s, D_t]
        return query_token_mse(pool_tokens(s, self.num_tokens), pool_tokens(t, self.num_tokens))
