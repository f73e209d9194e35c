"""Retrieval data: captions resolved against a video source, decoded frames, rendered inputs, batch plans,
and the students' replay dataset (RetrievalReplay).

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
from .text import Caption, Tokenizer, check_videos, read_captions
from .replay import EpochMemo
from .video import FeatureH5, FrameSampler, VideoPolicy
from labelstore.errors import ConfigError, StoreMismatch


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

    def __getstate__(self) -> dict:  # pickled to spawned DataLoader workers: the lock stays here
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, st: dict) -> None:
        self.__dict__.update(st)
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


class CaptionData:
    """Captions (tokenised), their video rows, and a frame cache over the video source.

    src_rows [Nv]: source rows of the videos (store rows are positions in it); caption_video [Nc]:
    the store row of each caption's video.
    """

    def __init__(self, videos, caps: Sequence[Caption], tokenizer: Tokenizer, policy: VideoPolicy, text_max_len: int,
                 src_rows: np.ndarray, caption_video: np.ndarray, cache: FrameCache | None = None):
        self.videos, self.caps, self.policy = videos, list(caps), policy
        self.ids, self.mask = tokenizer.encode_batch([c.text for c in caps], text_max_len)
        self.src_rows, self.caption_video = np.asarray(src_rows), np.asarray(caption_video)
        self.cache = cache or FrameCache(videos)

    @classmethod
    def from_store(cls, store, videos, captions=None) -> "CaptionData":
        """Rows exactly as the store recorded them (its caption table and video table); StoreMismatch
        when a video of the store is missing from `videos` or `captions` (if given) differ from it."""
        a = store.attrs
        index = {vid: i for i, vid in enumerate(videos.ids)}
        sample_ids = store.read_array("sample_id")
        missing = [s for s in sample_ids if str(s) not in index]
        if missing:
            raise StoreMismatch(f"{store.path}: {len(missing)} video(s) of the store are not in {videos}, e.g. {missing[:5]}")
        src_rows = np.array([index[str(s)] for s in sample_ids], np.int64)
        texts = [str(t) for t in store.read_array("caption_text")]
        cv = store.read_array("caption_video").astype(np.int64)
        if captions is not None:
            caps, _ = load_captions(captions)
            if [c.text for c in caps] != texts:
                raise StoreMismatch(f"{store.path}: the captions given differ from the store's caption table")
        caps = [Caption(str(sample_ids[v]), t, line=i + 1) for i, (t, v) in enumerate(zip(texts, cv))]
        policy = VideoPolicy.from_json({k: v for k, v in a["policy"].items() if k != "digest"})
        tok = Tokenizer.from_json(a["tokenizer"])
        return cls(videos, caps, tok, policy, int(a["text_max_len"]), src_rows, cv)

    def inputs(self, vids: np.ndarray, indices: np.ndarray) -> torch.Tensor:
        """Model input of videos `vids` (store rows) at frame indices [len(vids), m]."""
        frames = [self.cache.get(int(self.src_rows[v]), indices[k]) for k, v in enumerate(vids)]
        return render_inputs(self.videos, self.policy, frames)

    def text(self, caps: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.ids[caps]), torch.from_numpy(self.mask[caps])


class RetrievalReplay(torch.utils.data.Dataset):
    """The batches of a retrieval student epoch, decoded where the DataLoader runs it.

        ds = RetrievalReplay(data, batch_size=32, seed=0, store=store, targets=True)
        for batch in epoch_batches(ds, num_workers=2)(epoch):    # labelstore.pipeline.replay

    Item (epoch, b): batch b of the epoch's plan (the store's batch_captions of store epoch
    epoch % E in "batches" mode, else plan_batches(caption_video, batch_size, seed, epoch)), a dict of
        caps [B] int64 (caption rows; the plan's -1 slots dropped), vids [B] (their videos' store rows),
        x (render_inputs of the videos at their frames), ids [B, L], mask [B, L],
        with targets=True (from the store): frame_scores [B, m] float32 and the teacher's similarity
        block, Q [B texts, B videos] float32 (dense, batches), or text_emb, video_emb [B, D] float32
        (embeddings: Q = logit_scale * normalize(text_emb) @ normalize(video_emb)^T is made by the
        consumer, in one process, so it does not depend on the worker count).
    Frames: the store's aug/frames/indices of store epoch epoch % E, or without a store the policy's
    sampler keyed by (seed, epoch). A dense epoch matrix of at most dense_in_memory bytes is read
    whole once per epoch and process, else the batch's caption rows are read per batch.
    """

    def __init__(self, data: CaptionData, *, batch_size: int, seed: int, store=None, targets: bool = False,
                 dense_in_memory: int = 256 << 20):
        self.data, self.store, self.batch_size, self.seed = data, store, int(batch_size), int(seed)
        self.targets, self.dense_in_memory = targets, dense_in_memory
        self.smode = store.attrs["similarity_mode"] if store is not None else None
        self._memo = EpochMemo()  # this process's plan, frames and store arrays of the last epoch

    def plan(self, epoch: int) -> np.ndarray:
        """int32 [nb, B]: the caption rows of each batch of `epoch` (-1 = empty slot)."""
        if self.smode == "batches":
            return self._memo.get("plan", epoch,
                                  lambda: self.store.read_array("batch_captions", epoch % self.store.epochs))
        return self._memo.get("plan", epoch,
                              lambda: plan_batches(self.data.caption_video, self.batch_size, self.seed, epoch))

    def num_batches(self, epoch: int) -> int:
        return len(self.plan(epoch))

    def __len__(self) -> int:
        return self.num_batches(0)

    def _frames(self, epoch: int) -> np.ndarray:
        d = self.data
        if self.store is not None:
            se = epoch % self.store.epochs
            return self._memo.get("frames", se, lambda: self.store.read_array("aug/frames/indices", se))  # [Nv, m]
        Nv = len(d.src_rows)
        return self._memo.get("frames", epoch, lambda: d.policy.sample(self.seed, epoch, np.arange(Nv),
                                                                       d.videos.src_shapes(d.src_rows), Nv)["frames/indices"])

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, b = key
        d = self.data
        row = self.plan(epoch)[b]
        caps = row[row >= 0].astype(np.int64)
        vids = d.caption_video[caps]
        ids, mask = d.text(caps)
        out = {"caps": caps, "vids": vids, "x": d.inputs(vids, self._frames(epoch)[vids]), "ids": ids, "mask": mask}
        if self.targets:
            out.update(self._targets(epoch % self.store.epochs, b, caps, vids))
        return out

    def _targets(self, se: int, b: int, caps: np.ndarray, vids: np.ndarray) -> dict:
        store, f32 = self.store, np.float32
        fscores = self._memo.get("frame_scores", se, lambda: store.read_array("frame_scores", se))  # [Nc, m]
        out = {"frame_scores": torch.from_numpy(fscores[caps].astype(f32))}
        if self.smode == "dense":
            if 2 * len(self.data.caps) * len(self.data.src_rows) <= self.dense_in_memory:
                dense = self._memo.get("similarity", se, lambda: store.read_array("similarity", se))  # [Nc, Nv]
                out["Q"] = torch.from_numpy(dense[np.ix_(caps, vids)].astype(f32))
            else:
                out["Q"] = torch.from_numpy(store.read_array("similarity", se, caps)[:, vids].astype(f32))
        elif self.smode == "embeddings":
            text_emb = self._memo.get("text_emb", 0, lambda: store.read_array("text_emb").astype(f32))  # [Nc, D]
            out["text_emb"] = torch.from_numpy(text_emb[caps])
            out["video_emb"] = torch.from_numpy(store.read_array("video_emb", se, vids).astype(f32))  # [B, D]
        else:
            n = len(caps)
            out["Q"] = torch.from_numpy(store.group["batch_similarity"][se, b][:n, :n].astype(f32))  # [B, B]
        return out
