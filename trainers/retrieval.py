"""Training TeachCLIP students from a retrieval label store, online-teacher and InfoNCE baselines, evaluation.

A training batch is B captions of distinct videos (b = 1..B) and their videos, so the in-batch
similarity S [B texts, B videos] has its positives on the diagonal. Per step:

    x      = VideoPolicy.render(frames replayed from the stored indices aug/frames/indices[e])
    S      = student.similarity(student.encode_video(x), student.encode_text(caption))^T      [B, B]
    w      = student.frame_text_scores(...)                                                     [B, m]
    Q      = teacher similarity sub-matrix of the batch                                         [B, B]
             embeddings: logit_scale * text_emb[caps] @ video_emb[e, vids]^T
             dense:      similarity[e, caps][:, vids]
             batches:    batch_similarity[e, b]  (the student trains on the stored batch plan)
    F      = frame_scores[e, caps]                                                              [B, m]
           = softmax_f(teacher.frame_text_scores / T_f), T_f = the store's frame_score_temperature
    loss   = 0.2 * InfoNCE(S) + 1.0 * CgT(S, Q) + 2.0 * FgT(w, F)      (teachclip_loss, weights)
    then the gradient norm is clipped at 1.0 (the official code), AdamW step.

teaching="cgt" / "fgt" drops the other teaching term (the paper's ablations; InfoNCE stays).
mode="online" computes Q and F with the live teacher on the same frames and batches (F at the same
T_f: the store's, or FRAME_TEMPERATURE without a store); mode="infonce" uses InfoNCE(S) alone.
Store epoch e % E serves training epoch e.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import labelstore
from labelstore.errors import ConfigError, StoreError, StoreMismatch
from labelstore.pipeline.retrieval_data import (FRAME_TEMPERATURE, FrameCache, as_policy, caption_rows, check_feature_dim,
                                                frame_targets, load_captions, plan_batches, render_inputs)
from labelstore.pipeline.text import Caption, Tokenizer
from labelstore.pipeline.video import FrameSampler, VideoPolicy
from labelstore.trainers.losses.teachclip import TEACHING, infonce_sym, teachclip_loss

TRAIN_MODES = ("cache", "online", "infonce")
GRAD_CLIP = 1.0  # max gradient norm, as TeachCLIP's official code


def frame_temperature(store) -> float:
    """The softmax temperature of the store's frame_scores (attribute frame_score_temperature).

    A store written before the attribute existed (its frame scores were softmax_f of the teacher's
    <t, f> / 0.1) is refused with a StoreError naming the store: its targets would not match an
    online teacher's, and the teacher stage must be rerun.
    """
    t = store.attrs.get("frame_score_temperature")
    if t is None:
        raise StoreError(f"{store.path}: no attribute 'frame_score_temperature' (the temperature of frame_scores); "
                         f"the store predates it: rerun the teacher stage (labelstore teach --task retrieval)")
    return float(t)


class _Data:
    """Captions (tokenised), their video rows, and a frame cache over the video source."""

    def __init__(self, videos, caps: Sequence[Caption], tokenizer: Tokenizer, policy: VideoPolicy, text_max_len: int,
                 src_rows: np.ndarray, caption_video: np.ndarray, cache: FrameCache | None = None):
        self.videos, self.caps, self.policy = videos, list(caps), policy
        self.ids, self.mask = tokenizer.encode_batch([c.text for c in caps], text_max_len)
        self.src_rows, self.caption_video = np.asarray(src_rows), np.asarray(caption_video)
        self.cache = cache or FrameCache(videos)

    def inputs(self, vids: np.ndarray, indices: np.ndarray) -> torch.Tensor:
        """Model input of videos `vids` (store rows) at frame indices [len(vids), m]."""
        frames = [self.cache.get(int(self.src_rows[v]), indices[k]) for k, v in enumerate(vids)]
        return render_inputs(self.videos, self.policy, frames)

    def text(self, caps: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.ids[caps]), torch.from_numpy(self.mask[caps])


def _store_data(store, videos, captions) -> _Data:
    """Rows exactly as the store recorded them (its caption table and video table)."""
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
    return _Data(videos, caps, tok, policy, int(a["text_max_len"]), src_rows, cv)


def _batch_plan(store, data: _Data, epoch: int, batch_size: int, seed: int) -> np.ndarray:
    if store is not None and store.attrs["similarity_mode"] == "batches":
        return store.read_array("batch_captions", epoch % store.epochs)
    return plan_batches(data.caption_video, batch_size, seed, epoch)


def train_retrieval_student(
    student: torch.nn.Module,
    store: Any,
    videos,
    captions: str | os.PathLike | Sequence[Caption] | None = None,
    *,
    mode: str = "cache",
    weights: tuple[float, float, float] = (0.2, 1.0, 2.0),
    teaching: str = "both",
    epochs: int = 4,
    batch_size: int = 32,
    teacher: torch.nn.Module | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
    sampler: FrameSampler | VideoPolicy | None = None,
    text_max_len: int = 32,
    max_steps: int | None = None,
    dense_in_memory: int = 256 << 20,
    progress: bool = False,
) -> dict[str, Any]:
    """Train `student` in place; returns {"loss": [per epoch], "parts": [...], "seconds", "steps", "step_s"}.

    store: a LabelStore or path (task "retrieval"). It fixes the captions, frame indices and (in
    "batches" mode) the batch plan for every mode, so cache / online / infonce see the same batches.
    store=None (only with mode="infonce" or "online"): captions, tokenizer and sampler are required and
    frames are drawn with the sampler keyed by `seed` (used to train the built-in teacher).
    teaching: "both" (CgT + FgT), "cgt" or "fgt" (the ablations; InfoNCE always on; ignored by "infonce").
    teacher: required for mode="online". AdamW(lr, weight_decay), linear warm-up then cosine decay,
    gradient norm clipped at GRAD_CLIP;
    `seed` keys the batch plan (dense/embeddings stores, no store) and, without a store, the frames.
    dense_in_memory: a dense store's epoch matrix is read whole when it is at most this many bytes,
    else the batch's caption rows are read per step. max_steps: stop after this many steps (benchmarks).
    """
    if mode not in TRAIN_MODES:
        raise ConfigError(f"train_retrieval_student: mode must be one of {TRAIN_MODES}, got {mode!r}")
    if mode == "online" and teacher is None:
        raise ConfigError("train_retrieval_student: mode='online' needs the teacher")
    if teaching not in TEACHING:
        raise ConfigError(f"train_retrieval_student: teaching must be one of {TEACHING}, got {teaching!r}")
    if isinstance(store, (str, os.PathLike)):
        store = labelstore.open(store)
    if store is not None:
        if store.task != "retrieval":
            raise StoreError(f"{store.path}: task is {store.task!r}, not 'retrieval'")
        data = _store_data(store, videos, captions)
        smode = store.attrs["similarity_mode"]
    else:
        if mode == "cache":
            raise ConfigError("train_retrieval_student: mode='cache' needs a store")
        if captions is None or tokenizer is None or sampler is None:
            raise ConfigError("train_retrieval_student: without a store, captions, tokenizer and sampler are required")
        caps, path = load_captions(captions)
        src_rows, cv = caption_rows(videos, caps, path)
        data = _Data(videos, caps, tokenizer, as_policy(sampler), text_max_len, src_rows, cv)
        smode = None
    check_feature_dim(videos, student)
    if teacher is not None:
        teacher = teacher.eval()
    t_frame = frame_temperature(store) if store is not None and mode != "infonce" else FRAME_TEMPERATURE
    Nv = len(data.src_rows)
    n_frames = videos.src_shapes(data.src_rows)
    text_emb = None
    if mode == "cache" and smode == "embeddings":
        text_emb = torch.from_numpy(store.read_array("text_emb").astype(np.float32))  # [Nc, D]
        scale = float(store.attrs["logit_scale"])

    plans = [_batch_plan(store, data, e, batch_size, seed) for e in range(epochs)]
    total = sum(len(p) for p in plans) if max_steps is None else min(max_steps, sum(len(p) for p in plans))
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / max(1, total // 20)) * 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))
    hist: dict[str, Any] = {"loss": [], "parts": []}
    t0, step = time.perf_counter(), 0
    student.train()
    for e in range(epochs):
        se = e % store.epochs if store is not None else e
        if store is not None:
            indices = store.read_array("aug/frames/indices", se)  # [Nv, m]
        else:
            indices = data.policy.sample(seed, e, np.arange(Nv), n_frames, Nv)["frames/indices"]
        fscores = store.read_array("frame_scores", se) if mode == "cache" else None  # [Nc, m]
        dense = None  # the epoch's [Nc, Nv] similarity, read once when it fits in `dense_in_memory` bytes
        if mode == "cache" and smode == "dense" and 2 * len(data.caps) * Nv <= dense_in_memory:
            dense = store.read_array("similarity", se)
        losses, parts_acc = [], []
        for b, row in enumerate(plans[e]):
            if max_steps is not None and step >= max_steps:
                break
            caps = row[row >= 0].astype(np.int64)
            vids = data.caption_video[caps]
            x = data.inputs(vids, indices[vids])
            ids, mask = data.text(caps)
            vr, tr = student.encode_video(x), student.encode_text(ids, mask)
            S = student.similarity(vr, tr).T  # [B texts, B videos]
            if mode == "infonce":
                loss, parts = infonce_sym(S), {}
            else:
                w = student.frame_text_scores(vr, tr)  # [B, m]
                if mode == "cache":
                    if dense is not None:
                        Q = torch.from_numpy(dense[np.ix_(caps, vids)].astype(np.float32))
                    else:
                        Q = _cached_similarity(store, smode, se, b, caps, vids, text_emb,
                                               scale if text_emb is not None else 1.0)
                    Fs = torch.from_numpy(fscores[caps].astype(np.float32))
                else:
                    with torch.no_grad():
                        tv, tt = teacher.encode_video(x), teacher.encode_text(ids, mask)
                        Q = teacher.similarity(tv, tt).T.float()
                        Fs = frame_targets(teacher.frame_text_scores(tv, tt), t_frame)
                loss, parts = teachclip_loss(S, w, [Q], [Fs], weights=weights, teaching=teaching)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), GRAD_CLIP)
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
            parts_acc.append({k: float(v.detach()) for k, v in parts.items()})
        hist["loss"].append(float(np.mean(losses)) if losses else float("nan"))
        hist["parts"].append({k: float(np.mean([p[k] for p in parts_acc])) for k in (parts_acc[0] if parts_acc else {})})
        if progress:
            print(f"  [{mode}] epoch {e}: loss {hist['loss'][-1]:.4f} {hist['parts'][-1]} "
                  f"({time.perf_counter() - t0:.1f}s)", flush=True)
    student.eval()
    hist["seconds"] = time.perf_counter() - t0
    hist["steps"] = step
    hist["step_s"] = hist["seconds"] / max(step, 1)
    return hist


def _cached_similarity(store, smode: str, epoch: int, b: int, caps: np.ndarray, vids: np.ndarray,
                       text_emb: torch.Tensor | None, scale: float) -> torch.Tensor:
    """The teacher's [B texts, B videos] similarity block of the batch, from the store (float32)."""
    if smode == "dense":
        rows = store.read_array("similarity", epoch, caps)  # [B, Nv]
        return torch.from_numpy(rows[:, vids].astype(np.float32))
    if smode == "embeddings":
        v = torch.from_numpy(store.read_array("video_emb", epoch, vids).astype(np.float32))  # [B, D]
        return scale * F.normalize(text_emb[caps], dim=-1) @ F.normalize(v, dim=-1).T
    block = store.group["batch_similarity"][epoch, b]  # [B, B]
    n = len(caps)
    return torch.from_numpy(block[:n, :n].astype(np.float32))


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


@torch.no_grad()
def similarity_matrix(model: torch.nn.Module, videos, captions, tokenizer: Tokenizer, num_frames: int,
                      frame_size: tuple[int, int] = (32, 32), text_max_len: int = 32, batch_size: int = 64,
                      policy: VideoPolicy | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sim float32 [Nc, Nv] over the captions' videos, caption_video int [Nc]); frames: uniform sampling."""
    from labelstore.pipeline.teach_retrieval import dense_similarity, repr_cat

    caps, path = load_captions(captions)
    src_rows, cv = caption_rows(videos, caps, path)
    policy = policy or VideoPolicy(FrameSampler(num_frames, "uniform"), frame_size=frame_size)
    data = _Data(videos, caps, tokenizer, policy, text_max_len, src_rows, cv)
    model = model.eval()
    idx = policy.sample(0, 0, np.arange(len(src_rows)), videos.src_shapes(src_rows))["frames/indices"]
    vr = repr_cat([model.encode_video(data.inputs(np.arange(s, min(len(src_rows), s + batch_size)),
                                                  idx[s:s + batch_size])) for s in range(0, len(src_rows), batch_size)])
    tr = repr_cat([model.encode_text(*data.text(np.arange(s, min(len(caps), s + 256)))) for s in range(0, len(caps), 256)])
    return dense_similarity(model, vr, tr).numpy(), cv


def retrieval_metrics(sim: np.ndarray, caption_video: np.ndarray) -> dict[str, float]:
    """Recall@{1,5,10} (percent) and median rank (1 = best), both directions.

    text->video: caption c's one positive is its own video; rank = 1 + #videos scored higher.
    video->text: a video's rank is the best rank among its captions (several captions per video).
    Ties count against the positive (rank = 1 + #others scoring >= the positive).
    """
    Nc, Nv = sim.shape
    pos = sim[np.arange(Nc), caption_video]  # [Nc]
    t2v = (sim >= pos[:, None]).sum(1)  # [Nc], the positive counts itself: rank >= 1
    rows = sim.T[caption_video]  # [Nc, Nc]: row c = scores of every caption for caption c's video
    ranks_c = (rows >= pos[:, None]).sum(1)  # rank of caption c among all captions for its video
    v2t = np.full(Nv, np.iinfo(np.int64).max)
    np.minimum.at(v2t, caption_video, ranks_c)
    v2t = v2t[v2t < np.iinfo(np.int64).max]
    out = {}
    for name, r in (("t2v", t2v), ("v2t", v2t)):
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = float(100.0 * np.mean(r <= k))
        out[f"{name}_MdR"] = float(np.median(r))
    return out


def evaluate_retrieval(model: torch.nn.Module, videos, captions, tokenizer: Tokenizer, *, num_frames: int = 8,
                       frame_size: tuple[int, int] = (32, 32), text_max_len: int = 32, batch_size: int = 64) -> dict[str, float]:
    """Text->video and video->text R@1/5/10 and median rank on `captions` (e.g. the test split), frames
    sampled uniformly (segment middles). See retrieval_metrics for the protocol."""
    sim, cv = similarity_matrix(model, videos, captions, tokenizer, num_frames, frame_size, text_max_len, batch_size)
    return retrieval_metrics(sim, cv)
