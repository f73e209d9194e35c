"""Cross-fitted (out-of-fold) VideoQA teachers for `labelstore experiment radi`: every training question
labelled by a teacher that never saw its clip, through the real teacher stage.

The training clips are split into K folds (clip_folds); teacher k learns from the questions of the
clips outside fold k. FoldTeachers holds the K teachers as ONE module for `teach_videoqa`: its
forward picks, per question, the teacher of the question's fold, found from the frames the stage
hands it (frame_keys, fold_table), so one teacher-stage run writes one store, with its MC-dropout
passes, and the store's weights hash covers the K teachers and the fold table.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from labelstore.errors import DataError


def clip_folds(video_rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    """int64 [N]: the fold in [0, k) of each question, by clip: the distinct clips of video_rows [N] in a
    random order keyed by (seed, k), clip j of that order in fold j % k (fold sizes differ by <= 1 clip)."""
    clips, inv = np.unique(np.asarray(video_rows, np.int64), return_inverse=True)
    fold = np.empty(len(clips), np.int64)
    fold[np.random.default_rng([seed, k]).permutation(len(clips))] = np.arange(len(clips)) % k
    return fold[inv.reshape(-1)]


def frame_keys(frames: torch.Tensor, mean, std, weights: torch.Tensor) -> torch.Tensor:
    """frames float [n, 3, H, W] (normalised by mean, std) -> int64 [n], key = sum_p x_p * weights_p over the
    frame's uint8 pixel values x_p = round(255 * (frames * std + mean)) (exact: the rendering divided them by
    255), weights int64 [3 H W] in [0, 2^31): the same key for a frame in every view that holds it."""
    x = frames * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    return ((x * 255).round().long().flatten(1) * weights).sum(1)


class FoldTeachers(nn.Module):
    """K teachers and the fold of every training frame: question b is answered by teacher fold(b), the
    one trained on the clips outside that fold. The teachers are VideoQA heads on frozen features (the
    testbed's SlotQA or FeatureQA: `.features(frames, q_ids, q_mask, video_index)` without parameters, the same
    for every teacher, `.head(feats)`, `.mean` / `.std` of the rendering).

    The fold comes from what the teacher stage hands a model, the frames: a view's fold is that of its
    frames, looked up by frame_keys in the buffers frame_key (sorted, int64 [n]) / frame_fold (int64 [n])
    (fold_table: the frames of one training clip only); a view of no training clip is a DataError.
    features(...) = [the frozen features, fold] [B, F + W + 1]; head(feats) = the logits of the fold's
    head [B, A]. So the stage's MC passes run the fold's head (every head draws dropout
    masks, the fold's are kept), and the buffers are in the state_dict: the store's teacher.weights_sha256
    covers the K teachers and the fold table. mean_probs(feats) [B, A] = the K teachers' averaged
    probabilities, for questions of no training clip (the test set)."""

    name = "FoldTeachers"

    def __init__(self, teachers: list[nn.Module], frame_key: torch.Tensor, frame_fold: torch.Tensor,
                 key_weights: torch.Tensor):
        super().__init__()
        self.teachers = nn.ModuleList(teachers)
        order = torch.argsort(frame_key)
        self.register_buffer("frame_key", frame_key[order].clone())
        self.register_buffer("frame_fold", frame_fold[order].clone())
        self.register_buffer("key_weights", key_weights.clone())

    def fold_of(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [V, m, 3, H, W] -> int64 [V], the fold of each view's clip: that of its frames found in the
        table (a blank frame, held by several clips, is not in it); a DataError for a view with none found,
        or with frames of two folds."""
        t0 = self.teachers[0]
        key = frame_keys(frames.flatten(0, 1), t0.mean, t0.std, self.key_weights).view(frames.shape[:2])  # [V, m]
        pos = torch.searchsorted(self.frame_key, key).clamp_max(len(self.frame_key) - 1)
        found = self.frame_key[pos] == key
        fold = self.frame_fold[pos]  # [V, m], valid where found
        first = fold.gather(1, found.long().argmax(1, keepdim=True))  # [V, 1], the first found frame's
        bad = (~found.any(1) | ((fold != first) & found).any(1)).nonzero().flatten()
        if len(bad):
            raise DataError(f"FoldTeachers: view {int(bad[0])} of the batch is of no training clip (none of its "
                            f"frames, or frames of two folds, in the fold table of {len(self.frame_key)} frames)")
        return first[:, 0]

    def features(self, frames, q_ids, q_mask, video_index=None) -> torch.Tensor:
        fold = self.fold_of(frames)
        if video_index is not None:
            fold = fold[video_index]
        feats = self.teachers[0].features(frames, q_ids, q_mask, video_index)  # [B, F + W]
        return torch.cat([feats, fold[:, None].to(feats.dtype)], dim=1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        x, fold = feats[:, :-1], feats[:, -1].long()
        logits = torch.stack([t.head(x) for t in self.teachers], dim=1)  # [B, K, A]
        return logits[torch.arange(len(x)), fold]

    def forward(self, frames, q_ids, q_mask, video_index=None) -> torch.Tensor:
        return self.head(self.features(frames, q_ids, q_mask, video_index))

    def mean_probs(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [B, F + W] (the teachers' .features) -> [B, A] = mean over k of softmax(head_k(feats))."""
        return torch.stack([t.head(feats).softmax(1) for t in self.teachers]).mean(0)


def fold_table(cache, policy, video_rows: np.ndarray, fold: np.ndarray, weights: torch.Tensor,
               mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """(frame_key, frame_fold) int64 [n]: the keys of the frames of the clips of video_rows [N] (rendered by
    policy, as the teacher stage does) that belong to one clip only, and that clip's fold (fold [N], per
    question); a frame of several clips (a blank one: every object outside the picture) is left out."""
    keys, clips = [], []
    for v in np.unique(video_rows):
        x = cache.views(policy, np.array([v]), np.arange(cache.videos.src_shape(int(v))[0])[None])[0]  # [n, 3, H, W]
        k = torch.unique(frame_keys(x, mean, std, weights))
        keys.append(k)
        clips.append(torch.full((len(k),), int(v)))
    key, clip = torch.cat(keys), torch.cat(clips)
    _, inv, count = torch.unique(key, return_inverse=True, return_counts=True)
    one = count[inv] == 1  # the frames of one clip only
    clip_fold = dict(zip(video_rows.tolist(), fold.tolist()))
    return key[one], torch.as_tensor([clip_fold[int(v)] for v in clip[one]], dtype=torch.int64)
