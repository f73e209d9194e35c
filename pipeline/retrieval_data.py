"""Retrieval data: captions resolved against a video source, decoded frames, rendered inputs, batch plans.

Shared by the teacher stage (labelstore.pipeline.teach_retrieval) and the students
(labelstore.trainers.retrieval).
"""

from __future__ import annotations

import os
import threading
from typing import Sequence

import numpy as np
import torch

from . import rng
from .text import Caption, check_videos, read_captions
from .video import FeatureH5, FrameSampler, VideoPolicy
from labelstore.errors import ConfigError


def load_captions(captions: str | os.PathLike | Sequence[Caption]) -> tuple[list[Caption], str | None]:
    """(captions, path or None). A path is read with `read_captions` (malformed lines raise CaptionsError)."""
    if isinstance(captions, (str, os.PathLike)):
        return read_captions(captions), str(captions)
    return list(captions), None


def caption_rows(videos, captions: Sequence[Caption], path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(src_rows int64 [Nv], caption_video int32 [Nc]).

    src_rows: rows in the video source of the videos the captions refer to, in source order;
    caption_video[c]: row of caption c's video in src_rows. Raises CaptionsError naming the
    line and video of every caption whose video is not in the source.
    """
    rows = np.asarray(check_videos(captions, videos.index(), path), dtype=np.int64)  # [Nc] source rows
    src_rows, inverse = np.unique(rows, return_inverse=True)
    return src_rows, inverse.astype(np.int32)


def as_policy(sampler: FrameSampler | VideoPolicy) -> VideoPolicy:
    return sampler if isinstance(sampler, VideoPolicy) else VideoPolicy(sampler=sampler)


class FrameCache:
    """Frames of a video source, decoded once per video and kept in memory (up to `max_bytes`).

    get(i, indices) returns exactly `videos.load_frames(i, indices)`: short videos (<= max_frames)
    are decoded whole once and indexed, longer ones are decoded per call.
    """

    def __init__(self, videos, max_bytes: int = 2 << 30, max_frames: int = 256):
        self.videos, self.max_bytes, self.max_frames = videos, max_bytes, max_frames
        self._cache: dict[int, np.ndarray] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, i: int, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        full = self._cache.get(i)
        if full is None:
            (n,) = self.videos.src_shape(i)
            if n > self.max_frames or self._bytes > self.max_bytes:
                return self.videos.load_frames(i, idx)
            full = self.videos.load_frames(i, np.arange(n))
            with self._lock:
                self._cache[i] = full
                self._bytes += full.nbytes
        if idx.size and (idx.min() < 0 or idx.max() >= len(full)):
            raise IndexError(f"{self.videos}: video {i}: frame indices must be in [0, {len(full)})")
        return full[idx]


def render_inputs(videos, policy: VideoPolicy, frames: Sequence[np.ndarray]) -> torch.Tensor:
    """Teacher/student input of a batch: images [B, m, 3, H, W] (rendered) or features [B, m, F]."""
    if isinstance(videos, FeatureH5):
        return torch.from_numpy(np.stack(frames).astype(np.float32))
    return policy.render(np.stack(frames))


def plan_batches(caption_video: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """int32 [nb, B] batch plan of one epoch: captions in a random order keyed by (seed, epoch), packed
    greedily into batches of B captions of distinct videos; nb = Nc // B. A caption that would repeat a
    video in the current batch waits for the next one. Slots that cannot be filled (only when some
    video has more than nb captions left at the end) are -1; captions left over are not used in that epoch.
    """
    cv = np.asarray(caption_video)
    Nc, B = len(cv), int(batch_size)
    nb = Nc // B
    u = rng.uniform(seed, epoch, np.arange(Nc), rng.stream_id("retrieval/batch_order"))[:, 0]
    pending = list(np.argsort(u, kind="stable"))
    plan = np.full((nb, B), -1, np.int32)
    for b in range(nb):
        seen: set[int] = set()
        taken, waiting = [], []
        k = 0
        while k < len(pending) and len(taken) < B:
            c = int(pending[k])
            (waiting if int(cv[c]) in seen else taken).append(c)
            seen.add(int(cv[c]))
            k += 1
        pending = waiting + pending[k:]
        plan[b, : len(taken)] = taken
    return plan


FRAME_TEMPERATURE = 1.0  # TeachCLIP's official code: softmax over frames of cos(sentence, frame), temperature 1


def frame_targets(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Fine-grained teaching targets: float32 [N, m] = softmax over the m frames of scores / temperature.

    scores [N, m]: the teacher's frame_text_scores of matched (video, caption) pairs; for the built-in
    teacher cos(caption, frame). The teacher stage stores this (float16, its temperature in the store's
    attribute `frame_score_temperature`) and the online trainer computes it with the same temperature.
    """
    return (scores.float() / float(temperature)).softmax(-1)


def check_feature_dim(videos, teacher: torch.nn.Module) -> None:
    """A FeatureH5 source must match the model's feature dimension (ValueError naming file, dataset, both dims)."""
    fdim = getattr(teacher, "feature_dim", None)
    if isinstance(videos, FeatureH5):
        if fdim is None:
            raise ConfigError(f"{videos.path}: the video source holds features (dimension {videos.dim}) but the "
                              f"model {type(teacher).__name__} takes frames (no feature_dim)")
        videos.check_dim(fdim)
    elif fdim is not None:
        raise ConfigError(f"{videos}: the video source holds frames but the model {type(teacher).__name__} "
                          f"takes features of dimension {fdim}")
