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

import os
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import labelstore
from labelstore.errors import ConfigError, StoreError
from labelstore.pipeline.replay import epoch_batches
from labelstore.pipeline.retrieval_data import (FRAME_TEMPERATURE, CaptionData, RetrievalReplay, as_policy, caption_rows,
                                                check_feature_dim, frame_targets, load_captions)
from labelstore.pipeline.text import Caption, Tokenizer
from labelstore.pipeline.video import FrameSampler, VideoPolicy
from labelstore.trainers.losses.teachclip import TEACHING, infonce_sym, teachclip_loss
from labelstore.trainers.loop import RECORD_KEYS, LoopConfig, StepResult, train

TRAIN_MODES = ("cache", "online", "infonce")
GRAD_CLIP = 1.0  # max gradient norm, as TeachCLIP's official code
RETRIEVAL_LOOP = LoopConfig(optimizer="adamw", weight_decay=0.01, warmup=0.05, grad_clip=GRAD_CLIP)


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
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
    sampler: FrameSampler | VideoPolicy | None = None,
    text_max_len: int = 32,
    dense_in_memory: int = 256 << 20,
    lr: float = 1e-3,
    progress: bool = False,
    max_steps: int | None = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Train `student` in place; returns {"loss": [per epoch], "parts": [...], "seconds", "steps", "step_s"}.

    store: a LabelStore or path (task "retrieval"). It fixes the captions, frame indices and (in
    "batches" mode) the batch plan for every mode, so cache / online / infonce see the same batches.
    store=None (only with mode="infonce" or "online"): captions, tokenizer and sampler are required and
    frames are drawn with the sampler keyed by `seed` (used to train the built-in teacher).
    teaching: "both" (CgT + FgT), "cgt" or "fgt" (the ablations; InfoNCE always on; ignored by "infonce").
    teacher: required for mode="online". The batches come from the RetrievalReplay dataset
    (num_workers DataLoader processes decode and render them; the same batches for any number);
    `seed` keys the batch plan (dense/embeddings stores, no store) and, without a store, the frames.
    The loop is labelstore.trainers.loop.train with RETRIEVAL_LOOP at `lr` (AdamW, weight decay 0.01,
    linear warm-up over 5 % of the steps then cosine decay, the gradient norm clipped at GRAD_CLIP as
    TeachCLIP's code); max_steps: stop after this many steps (benchmarks).
    dense_in_memory: a dense store's epoch matrix is read whole when it is at most this many bytes,
    else the batch's caption rows are read per step.
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
        data = CaptionData.from_store(store, videos, captions)
    else:
        if mode == "cache":
            raise ConfigError("train_retrieval_student: mode='cache' needs a store")
        if captions is None or tokenizer is None or sampler is None:
            raise ConfigError("train_retrieval_student: without a store, captions, tokenizer and sampler are required")
        caps, path = load_captions(captions)
        src_rows, cv = caption_rows(videos, caps, path)
        data = CaptionData(videos, caps, tokenizer, as_policy(sampler), text_max_len, src_rows, cv)
    check_feature_dim(videos, student)
    if teacher is not None:
        teacher = teacher.eval()
    t_frame = frame_temperature(store) if store is not None and mode != "infonce" else FRAME_TEMPERATURE
    scale = float(store.attrs["logit_scale"]) if store is not None and store.attrs["similarity_mode"] == "embeddings" else 1.0
    ds = RetrievalReplay(data, batch_size=batch_size, seed=seed, store=store, targets=mode == "cache",
                         dense_in_memory=dense_in_memory)

    def step(model: torch.nn.Module, b: dict) -> StepResult:
        x, ids, mask = b["x"], b["ids"], b["mask"]
        vr, tr = model.encode_video(x), model.encode_text(ids, mask)
        S = model.similarity(vr, tr).T  # [B texts, B videos]
        if mode == "infonce":
            return StepResult(infonce_sym(S), 1)
        w = model.frame_text_scores(vr, tr)  # [B, m]
        if mode == "cache":
            Q = b["Q"] if "Q" in b else scale * F.normalize(b["text_emb"], dim=-1) @ F.normalize(b["video_emb"], dim=-1).T
            Fs = b["frame_scores"]
        else:
            with torch.no_grad():
                tv, tt = teacher.encode_video(x), teacher.encode_text(ids, mask)
                Q = teacher.similarity(tv, tt).T.float()
                Fs = frame_targets(teacher.frame_text_scores(tv, tt), t_frame)
        loss, parts = teachclip_loss(S, w, [Q], [Fs], weights=weights, teaching=teaching)
        return StepResult(loss, 1, {k: float(v.detach()) for k, v in parts.items()})

    cfg = replace(RETRIEVAL_LOOP, epochs=epochs, lr=lr, progress=progress, max_steps=max_steps, desc=mode)
    on_epoch = None
    if progress:
        on_epoch = lambda rec: print(f"  [{mode}] epoch {rec['epoch']}: loss {rec['loss']:.4f} "  # noqa: E731
                                     f"({rec['seconds']:.1f}s)", flush=True)
    res = train(student, epoch_batches(ds, num_workers), step, cfg, lengths=[ds.num_batches(e) for e in range(epochs)],
                on_epoch=on_epoch)
    hist: dict[str, Any] = {"loss": [r["loss"] for r in res["history"]],
                            "parts": [{k: r[k] / r["steps"] for k in r if k not in RECORD_KEYS} for r in res["history"]]}
    hist["seconds"] = res["seconds"]
    hist["steps"] = res["steps"]
    hist["step_s"] = hist["seconds"] / max(res["steps"], 1)
    return hist


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
    data = CaptionData(videos, caps, tokenizer, policy, text_max_len, src_rows, cv)
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
