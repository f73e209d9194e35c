"""VideoQA data: questions resolved against a video source, decoded clips, per-epoch frame indices.

Shared by the teacher stage (labelstore.pipeline.teach_videoqa) and the students
(labelstore.trainers.videoqa): frames are keyed by (seed, epoch, VIDEO row), so all questions of a
video see the same frames in an epoch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from labelstore.integrity import json_digest

from .text import AnswerVocab, Question, Tokenizer, check_answers, check_videos, read_questions
from .replay import EpochMemo
from .video import FrameSampler, VideoPolicy


def dataset_digest(videos_digest: str, questions_digest: str) -> str:
    """The store's dataset.digest of a VideoQA dataset: sha256(videos digest + NUL + questions digest)."""
    return hashlib.sha256(f"{videos_digest}\0{questions_digest}".encode()).hexdigest()


@dataclass
class QASet:
    """Questions resolved against a video source, a tokenizer and an answer vocabulary."""

    questions: list[Question]
    video_rows: np.ndarray  # int64 [N], row of each question's video
    gt: np.ndarray  # int64 [N], annotated answer id, -1 outside the vocabulary
    q_ids: np.ndarray  # int64 [N, L]
    q_mask: np.ndarray  # bool [N, L]
    digest: str  # sha256 of the questions file (or of the records' canonical JSON)
    path: str | None

    def __len__(self) -> int:
        return len(self.questions)

    def answer_sets(self, vocab: AnswerVocab) -> list[set[int]] | None:
        """Acceptable answer ids per question (`answers` when every question has them), else None."""
        if any(q.answers is None for q in self.questions):
            return None
        return [{k for k in (vocab.index(a) for a in q.answers) if k >= 0} for q in self.questions]


def prepare_questions(videos, questions: str | os.PathLike | Sequence[Question], tokenizer: Tokenizer,
                      vocab: AnswerVocab, *, strict_answers: bool = True, max_len: int = 16) -> QASet:
    """Resolve questions: video rows (QuestionsError listing questions whose video is missing),
    answer ids (strict_answers: QuestionsError listing answers outside the vocabulary; else gt = -1),
    and question tokens."""
    path = None
    if isinstance(questions, (str, os.PathLike)):
        path = str(questions)
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        questions = read_questions(path)
    else:
        questions = list(questions)
        recs = [[q.video_id, q.question, q.answer, q.answers] for q in questions]
        digest = json_digest(recs)
    rows = np.asarray(check_videos(questions, videos.index(), path), dtype=np.int64)
    check_answers(questions, vocab, path, strict=strict_answers)
    gt = vocab.indices(q.answer for q in questions)
    ids, mask = tokenizer.encode_batch([q.question for q in questions], max_len)
    return QASet(questions, rows, gt, ids, mask, digest, path)


class ClipCache:
    """Decoded frames per video row, and gathering of views [B, m] from them.

    `preload(v, frames)` decodes exactly those frames of video v (the teacher stage: the union
    over a unit's epochs); `get` decodes whole videos on first use when `whole=True` (students on
    short clips: decode once, replay every epoch from memory).
    """

    def __init__(self, videos, whole: bool = True):
        self.videos = videos
        self.whole = whole
        self._clips: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # v -> (sorted frame ids, uint8 [u, H, W, 3])

    def preload(self, v: int, frames: np.ndarray) -> None:
        frames = np.unique(np.asarray(frames, dtype=np.int64))
        self._clips[v] = (frames, self.videos.load_frames(v, frames))

    def get(self, video_rows: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """uint8 [B, m, H, W, 3]: frame indices[b, j] of video video_rows[b]."""
        out = []
        for v, idx in zip(np.asarray(video_rows).tolist(), np.asarray(indices, dtype=np.int64)):
            if v not in self._clips:
                if not self.whole:
                    raise KeyError(f"video row {v} was not preloaded")
                self.preload(v, np.arange(self.videos.src_shape(v)[0]))
            have, frames = self._clips[v]
            pos = np.searchsorted(have, idx)
            if (pos >= len(have)).any() or (have[np.minimum(pos, len(have) - 1)] != idx).any():
                raise KeyError(f"video row {v}: frames {idx.tolist()} were not all decoded")
            out.append(frames[pos])
        return np.stack(out)

    def views(self, policy: VideoPolicy, video_rows: np.ndarray, indices: np.ndarray) -> torch.Tensor:
        """float32 [B, m, 3, h, w]: the rendered (resized, normalised) views."""
        return policy.render(self.get(video_rows, indices))

    def shared_views(self, policy: VideoPolicy, video_rows: np.ndarray, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(x float32 [V, m, 3, h, w], video_index int64 [B]): each distinct (video, frame indices)
        view rendered once; question b's view is x[video_index[b]]."""
        key = np.concatenate([np.asarray(video_rows, np.int64)[:, None], np.asarray(indices, np.int64)], axis=1)  # [B, 1+m]
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        return self.views(policy, uniq[:, 0], uniq[:, 1:]), torch.as_tensor(inv.reshape(-1), dtype=torch.int64)


def video_grouped_order(video_rows: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """A permutation of the questions keyed by (seed, epoch): videos in random order, each video's
    questions together, so a batch encodes each of its clips once (see ClipCache.shared_views)."""
    video_rows = np.asarray(video_rows, np.int64)
    uniq = np.unique(video_rows)
    rank = np.empty(int(uniq.max()) + 1, np.int64)
    rank[np.random.default_rng([seed, epoch]).permutation(uniq)] = np.arange(len(uniq))
    return np.argsort(rank[video_rows], kind="stable")


def frame_indices(sampler: FrameSampler, seed: int, epoch: int, videos, video_rows: np.ndarray) -> np.ndarray:
    """int16 [n, m]: the frames of each row's video in `epoch`, keyed by video row."""
    uniq, inv = np.unique(np.asarray(video_rows, dtype=np.int64), return_inverse=True)
    idx = sampler.sample(seed, epoch, uniq, videos.src_shapes(uniq), len(videos))["indices"]  # [u, m]
    return idx[inv.reshape(-1)]


class QAReplay(torch.utils.data.Dataset):
    """The batches of a VideoQA student (or teacher) epoch, decoded where the DataLoader runs it.

        ds = QAReplay(videos, qa, policy, batch_size=64, seed=0, store=store, targets=True)
        for batch in epoch_batches(ds, num_workers=2)(epoch):    # labelstore.pipeline.replay
            ...

    Item (epoch, b): batch b of `video_grouped_order(qa.video_rows, seed, epoch)` (batch_size
    questions), a dict of
        rows [B] int64 (question rows), epoch, batch (b), store_epoch (epoch % E; None without a store),
        x [V, m, 3, h, w] float32 and video_index [B] (ClipCache.shared_views), q_ids [B, L],
        q_mask [B, L], gt [B] int64,
        with targets=True (from the store): topk_values [B, K] float32, topk_indices [B, K] int64,
        mc_values [B, T, K] float32 when recorded.
    Frames: the store's aug/frames/indices of store epoch epoch % E, or without a store the
    policy's sampler keyed by (seed, epoch, video row) (frame_indices). Everything is a function
    of (epoch, b), so any worker count gives the same batches. `fingerprint` is the store's
    dataset digest (sha256 of the video source's digest and the questions' digest), for
    labelstore.pipeline.replay.check_data.
    """

    def __init__(self, videos, qa: QASet, policy: VideoPolicy, *, batch_size: int, seed: int, store=None,
                 targets: bool = False, cache: ClipCache | None = None):
        self.videos, self.qa, self.policy, self.store = videos, qa, policy, store
        self.batch_size, self.seed, self.targets = int(batch_size), int(seed), targets
        self.cache = cache or ClipCache(videos)
        self._memo = EpochMemo()  # this process's order and frames of the last epoch

    def fingerprint(self) -> dict:
        return {"kind": "videoqa", "num_samples": len(self.qa),
                "digest": dataset_digest(self.videos.fingerprint()["digest"], self.qa.digest)}

    def num_batches(self, epoch: int) -> int:
        return -(-len(self.qa) // self.batch_size)

    def __len__(self) -> int:
        return self.num_batches(0)

    def prepare(self, epoch: int) -> None:
        """Read the store epoch into the shared epoch cache here (the workers map it)."""
        if self.store is not None and self.store.fits_cache():
            self.store.epoch_cache.epoch(self.store, epoch % self.store.epochs)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, b = key
        qa = self.qa
        order = self._memo.get("order", epoch, lambda: video_grouped_order(qa.video_rows, self.seed, epoch))
        rows = order[b * self.batch_size : (b + 1) * self.batch_size]
        out: dict = {"rows": torch.as_tensor(rows), "epoch": epoch, "batch": b, "store_epoch": None}
        if self.store is not None:
            se = epoch % self.store.epochs
            rec = self.store.read(se, rows, include_rows=False)
            idx = rec["frames/indices"]  # [B, m]
            out["store_epoch"] = se
            if self.targets:
                out["topk_values"] = torch.from_numpy(rec["topk_values"].astype(np.float32))  # [B, K]
                out["topk_indices"] = torch.from_numpy(rec["topk_indices"].astype(np.int64))  # [B, K]
                if "mc_values" in rec and self.store.mc_passes:
                    out["mc_values"] = torch.from_numpy(rec["mc_values"].astype(np.float32))  # [B, T, K]
        else:
            idx = self._memo.get("frames", epoch, lambda: frame_indices(self.policy.sampler, self.seed, epoch,
                                                                     self.videos, qa.video_rows))[rows]
        out["x"], out["video_index"] = self.cache.shared_views(self.policy, qa.video_rows[rows], idx)
        out["q_ids"], out["q_mask"] = torch.as_tensor(qa.q_ids[rows]), torch.as_tensor(qa.q_mask[rows])
        out["gt"] = torch.as_tensor(qa.gt[rows])
        return out
