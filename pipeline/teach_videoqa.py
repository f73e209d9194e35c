"""The teacher stage for open-ended VideoQA: answer rankings with MC-dropout uncertainty, once.

Rows are questions. For each work unit (rows [p*S, (p+1)*S), all epochs) the unit's videos are
decoded once (the union of the frames all epochs need), and per epoch and batch of questions:

  aug/frames/indices [E,N,m] i16 = FrameSampler(seed, epoch, video row)   (keyed by VIDEO row: all
                                   questions of a video see the same frames in an epoch)
  p                              = softmax(teacher(frames, question))                      [B, A]
  topk_values  [E,N,K]   f16     = top-K of p (descending),  topk_indices [E,N,K] = their answer ids
                                   (K = A by default: the teacher's full ranking, for RADI's cold lists)
  gt_prob      [E,N]     f16     = p[gt]  (NaN when the annotated answer is outside the vocabulary)
  mc_values    [E,N,T,K] f16     = softmax(head_t(feats))[topk_indices],  t = 1..T
  features/values [E,N,Q,D]      = tokens(output of teacher module NAME) of the eval-mode pass, encoded
  features/scale  [E,N]   f32      by the codec (int8: one scale per view); only with `teach --features NAME`
                                   (pipeline/features.py; the built-in teacher's module `tokens` gives its
                                   per-frame tokens h [m, D] before temporal pooling)

MC dropout: when the teacher has `.features(frames, q_ids, q_mask)` and `.head(feats)`, the
backbone runs once and only the head runs T times (dropout layers in train mode, everything else
in eval mode); otherwise the whole teacher runs T times. The passes are labelstore.pipeline.teacher's
(`mc_head_passes`, the same code as `mc_forward`): pass t draws its masks under a forked RNG seeded
by mix(mc_seed(seed, epoch, first row of the batch), t), so a resumed store is identical to an
uninterrupted one, and `teacher_targets` on the replayed inputs of a stored batch reproduces it
(up to float16 rounding). The store records this scheme as teach_config["mc_rng"] (MC_RNG).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

import labelstore
from labelstore import writer
from labelstore.errors import ConfigError
from labelstore.integrity import json_digest

from . import features, records, videoqa_store
from .stage import Item, check_teacher_output, run_stage
from .teacher import mc_head_passes, set_mc_dropout
from .teacher import teacher_info as describe_teacher
from .text import AnswerVocab, Question, Tokenizer
from .video import FrameSampler, VideoPolicy
from .videoqa_data import ClipCache, QASet, dataset_digest, frame_indices, prepare_questions


@dataclass(frozen=True)
class VideoQATeachConfig:
    """The settings of a VideoQA teacher stage (teach_videoqa); every check names its option."""

    epochs: int
    seed: int = 0
    top_k: int | None = None  # answers kept per view, clamped to the vocabulary size A; None = all A (the full ranking)
    mc_passes: int = 8
    batch_size: int = 128  # questions per teacher forward
    shard_rows: int = 8192  # questions per shard = per work unit
    chunk_rows: int | None = None  # questions per inner chunk; None = min(2048, shard_rows)
    frame_size: tuple[int, int] = (32, 32)
    max_len: int = 16  # question tokens
    strict_answers: bool = True  # False: keep questions whose answer is outside the vocabulary (gt = -1)
    decode_workers: int = 2
    features: str | None = None  # teach --features NAME: record this teacher module's token output per view
    feature_codec: str = "float16"  # --feature-codec: float16 or int8 (pipeline/features.py)

    def __post_init__(self) -> None:
        if self.chunk_rows is None and self.shard_rows >= 1:
            object.__setattr__(self, "chunk_rows", min(2048, self.shard_rows))
        object.__setattr__(self, "frame_size", tuple(self.frame_size))
        if self.epochs < 1:
            raise ConfigError(f"epochs (--epochs) must be >= 1, got {self.epochs}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed (--seed) must be in [0, 2**63), got {self.seed}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k (--top-k) must be >= 1 (or None: every answer), got {self.top_k}")
        if self.mc_passes < 0:
            raise ConfigError(f"mc_passes (--mc-passes) must be >= 0, got {self.mc_passes}")
        for name, option in (("batch_size", "--batch-size"), ("max_len", "max_len"), ("decode_workers", "--workers")):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} ({option}) must be >= 1, got {getattr(self, name)}")
        if self.shard_rows < 1 or self.chunk_rows < 1 or self.shard_rows % self.chunk_rows:
            raise ConfigError(f"shard_rows ({self.shard_rows}) must be a positive multiple of chunk_rows ({self.chunk_rows})")
        if self.feature_codec not in features.CODECS:
            raise ConfigError(f"feature_codec (--feature-codec) must be float16 or int8, got {self.feature_codec!r}")
        if len(self.frame_size) != 2 or min(self.frame_size) < 1:
            raise ConfigError(f"frame_size (--frame-size) must be two positive sizes (h, w), got {self.frame_size}")


# --------------------------------------------------------------------------------------
# MC dropout (labelstore.pipeline.teacher: set_mc_dropout, mc_head_passes)
# --------------------------------------------------------------------------------------

# how MC masks are seeded; kept in teach_config so a store is never resumed under another scheme
MC_RNG = "pass_seed(mc_seed, t)"
MC_SEED_BITS = 63  # VideoQA stores seed MC masks with the low 63 bits of records.mc_seed


def mc_seed(seed: int, epoch: int, first_row: int) -> int:
    """Seed of the MC-dropout masks of the batch starting at question `first_row` in `epoch`:
    records.mc_seed(seed, epoch, first_row, MC_SEED_BITS)."""
    return records.mc_seed(seed, epoch, first_row, MC_SEED_BITS)


def mc_forward_qa(model: nn.Module, frames: torch.Tensor, q_ids: torch.Tensor, q_mask: torch.Tensor,
                  passes: int, seed: int, head_only: bool | None = None,
                  video_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits [B, A], mc_logits [B, T, A] or None) of an eval-mode model; no gradient.

    frames [B, m, 3, H, W], or [V, m, ...] shared clips with video_index [B] (passed to the model).

    head_only (default: the model has `.features` and `.head`): feats computed once (eval mode),
    the head run T times with its dropout layers in train mode; otherwise the whole model runs
    T times. The passes are labelstore.pipeline.teacher.mc_head_passes(..., seed): pass t seeded by
    mix(seed, t) inside a forked RNG (the caller's RNG state is untouched; pass t does not depend
    on T). The model's train/eval flags are restored on return.
    """
    if head_only is None:
        head_only = hasattr(model, "features") and hasattr(model, "head")
    args = (frames, q_ids, q_mask) if video_index is None else (frames, q_ids, q_mask, video_index)
    modes = {m: m.training for m in model.modules()}
    try:
        set_mc_dropout(model, False)
        with torch.no_grad():
            if head_only:
                feats = model.features(*args)  # [B, F]
                logits = model.head(feats)
            else:
                logits = model(*args)
            if passes <= 0:
                return logits, None
            set_mc_dropout(model, True)
            if head_only:
                mc = mc_head_passes(model.head, (feats,), passes, seed, device=frames.device)  # [B, T, A]
            else:
                mc = mc_head_passes(model, args, passes, seed, device=frames.device)
    finally:
        for m, t in modes.items():
            m.training = t
    return logits, mc


def teacher_targets(teacher: nn.Module, frames: torch.Tensor, q_ids: torch.Tensor, q_mask: torch.Tensor,
                    gt: torch.Tensor, top_k: int, mc_passes: int, seed: int,
                    head_only: bool | None = None, video_index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The records of one batch (records.topk_records), float32 (the stage casts them to float16), plus "logits":

    topk_values [B, K] = top-K of p = softmax(logits), topk_indices [B, K] (int64),
    gt_prob [B] = p[gt] (NaN where gt < 0), mc_values [B, T, K] = softmax(mc_logits)[topk_indices].
    """
    logits, mc = mc_forward_qa(teacher, frames, q_ids, q_mask, mc_passes, seed, head_only, video_index)
    return {**records.topk_records(logits, gt, top_k, mc), "logits": logits.float()}


# --------------------------------------------------------------------------------------
# The task (run by labelstore.pipeline.stage.run_stage)
# --------------------------------------------------------------------------------------

_CONFIG_FIELDS = ("batch_size", "shard_rows", "chunk_rows", "max_len", "strict_answers")  # + "mc_rng"
# recorded only in a store with features (a store without stays as it was)
_FEATURE_FIELDS = ("features", "feature_codec")
RESUME_KEYS = ("task", "num_samples", "num_classes", "top_k", "mc_passes", "epochs", "seed", "dataset.digest",
               "teacher.weights_sha256", "policy.digest", "vocab", "tokenizer",
               *(f"teach_config.{f}" for f in (*_CONFIG_FIELDS, "mc_rng", *_FEATURE_FIELDS)), "features")


def probe_tokens(model: nn.Module, hook: features.FeatureHook, num_frames: int, frame_size: tuple[int, int],
                 max_len: int) -> tuple[int, int]:
    """(Q, D) of the token output `hook` records: one eval-mode pass on a zero clip [1, m, 3, H, W] and a
    one-word question (the model's train/eval flags are restored)."""
    dev = next(model.parameters()).device
    frames = torch.zeros(1, num_frames, 3, *frame_size, device=dev)
    q_ids = torch.ones(1, max_len, dtype=torch.int64, device=dev)
    q_mask = torch.zeros(1, max_len, dtype=torch.bool, device=dev)
    q_mask[:, 0] = True
    with hook.capture():
        mc_forward_qa(model, frames, q_ids, q_mask, 0, 0)
    q, d = hook.take().shape[1:]
    return int(q), int(d)


class TokenRecorder:
    """The hook and token shape [Q, D] of `teach --task videoqa --features NAME` on the teacher."""

    def __init__(self, teacher: nn.Module, name: str, codec: str, num_answers: int, num_frames: int,
                 frame_size: tuple[int, int], max_len: int):
        self.hook = features.FeatureHook(teacher, name, num_answers, tokens=True)
        self.name, self.codec = name, codec
        self.num_tokens, self.dim = probe_tokens(teacher, self.hook, num_frames, frame_size, max_len)
        self.attrs = {"name": name, "module": self.hook.module_name, "codec": codec, "tokens": int(self.num_tokens),
                      "dim": int(self.dim), "layout": "tokens [Q, D] per view: a [B, Q, D] output as it is, "
                                                      "a [B, D] output as Q = 1"}

    def take(self, epoch: int, ids: np.ndarray, name) -> dict[str, np.ndarray]:
        """The encoded tokens of the batch just run (questions ids): {VALUES [B, Q, D], SCALE [B] (int8)}."""
        f = self.hook.take()  # [B, Q, D]
        if f.shape[0] != len(ids):
            raise ConfigError(f"--features {self.name}: module {self.hook.module_name!r} gives {f.shape[0]} rows for "
                              f"{len(ids)} questions (a module that runs per clip or per frame); name one whose "
                              "output has one row per question, e.g. tokens")
        check_teacher_output(f.reshape(len(ids), -1), epoch, ids, name, what=f"feature {self.name!r}",
                             columns=(self.num_tokens * self.dim, "token values"))
        return features.encode(f, self.codec)


class VideoQATask:
    """Rows are questions; a unit decodes its videos once (the union of the frames all epochs need)."""

    name, count_unit, resume_keys = videoqa_store.TASK, "view", RESUME_KEYS

    def __init__(self, videos, qa: QASet, tokenizer: Tokenizer, vocab: AnswerVocab, teacher: nn.Module,
                 policy: VideoPolicy, cfg: VideoQATeachConfig, teacher_info: dict, head_only: bool | None):
        """cfg: with top_k resolved (an int <= the vocabulary size; teach_videoqa does it)."""
        self.videos, self.qa, self.vocab, self.teacher, self.policy = videos, qa, vocab, teacher.eval(), policy
        self.cfg, self.head_only = cfg, head_only
        self.tokens = None
        if cfg.features:
            self.tokens = TokenRecorder(self.teacher, cfg.features, cfg.feature_codec, len(vocab),
                                        policy.sampler.num_frames, cfg.frame_size, cfg.max_len)
        self.attrs = _attrs(videos, qa, tokenizer, vocab, policy, teacher_info, cfg,
                            self.tokens.attrs if self.tokens else None)
        self.specs = videoqa_store.videoqa_arrays(num_questions=len(qa), epochs=cfg.epochs, num_answers=len(vocab),
                                                  num_videos=len(videos), top_k=cfg.top_k, mc_passes=cfg.mc_passes,
                                                  num_frames=policy.sampler.num_frames,
                                                  features=(self.tokens.num_tokens, self.tokens.dim, cfg.feature_codec)
                                                  if self.tokens else None)
        self._records = records.UnitRecords(self.specs)  # the current epoch's records of the unit

    def build(self, at: str) -> None:
        qa, c = self.qa, self.cfg
        group = writer.create(at, self.specs, self.attrs, chunk_rows=c.chunk_rows, shard_rows=c.shard_rows,
                              epoch_groups=1)
        group["sample_id"][:] = np.asarray([self.videos.ids[v] for v in qa.video_rows], dtype=str)
        group["gt"][:] = qa.gt
        group["question_video"][:] = qa.video_rows.astype(np.int32)

    def _rows(self, p: int) -> np.ndarray:
        S = self.cfg.shard_rows
        return np.arange(p * S, min(len(self.qa), (p + 1) * S))

    def work(self, units) -> int:
        return sum(len(self._rows(p)) for _, p in units) * self.cfg.epochs

    def inputs(self, units, pool):
        """Per unit: decode its videos once; per epoch and batch: the rendered shared views."""
        c, videos, sampler = self.cfg, self.videos, self.policy.sampler
        for g, p in units:
            rows = self._rows(p)
            vrows = self.qa.video_rows[rows]
            idx = {e: frame_indices(sampler, c.seed, e, videos, vrows) for e in range(c.epochs)}  # e -> [n, m]
            cache = ClipCache(videos, whole=False)
            need = {int(v): np.concatenate([idx[e][vrows == v].ravel() for e in idx]) for v in np.unique(vrows)}
            list(pool.map(lambda v: cache.preload(v, need[v]), need))
            for e in range(c.epochs):
                for j0 in range(0, len(rows), c.batch_size):
                    sel = slice(j0, min(len(rows), j0 + c.batch_size))
                    yield Item("batch", (g, p), e, rows, (sel, cache.shared_views(self.policy, vrows[sel], idx[e][sel])))
                yield Item("epoch", (g, p), e, rows, idx[e])
            yield Item("unit", (g, p), None, rows)

    def label(self, item: Item):
        c, qa, e = self.cfg, self.qa, item.epoch
        if item.kind == "epoch":
            start = int(item.rows[0])
            return self._records.writes(start, e) + [("aug/frames/indices", start, item.data, e)], 0
        if item.kind == "unit":
            return [], 0
        self._records.open(len(item.rows))
        sel, (x, vi) = item.data  # shared clips [V, m, 3, h, w], question -> clip [b]
        ids = item.rows[sel]
        name = lambda i: f"{qa.questions[i].video_id}: {qa.questions[i].question}"  # noqa: E731
        with self.tokens.hook.capture() if self.tokens else contextlib.nullcontext():
            out = teacher_targets(self.teacher, x, torch.as_tensor(qa.q_ids[ids]), torch.as_tensor(qa.q_mask[ids]),
                                  torch.as_tensor(qa.gt[ids]), c.top_k, c.mc_passes, mc_seed(c.seed, e, int(ids[0])),
                                  self.head_only, vi)
        check_teacher_output(out["logits"], e, ids, name, columns=(len(self.vocab), "answers"))
        if self.tokens is not None:
            out.update(self.tokens.take(e, ids, name))
        self._records.put(sel, out)
        return [], len(ids)

    def stats(self, count: int, seconds: float) -> dict:
        return {"views": count, "views_per_s": count / max(seconds, 1e-9), "top_k": self.cfg.top_k}


def _attrs(videos, qa: QASet, tokenizer, vocab, policy: VideoPolicy, teacher_info: dict, cfg: VideoQATeachConfig,
           token_attrs: dict | None = None) -> dict:
    """The root attributes; token_attrs: the `features` attribute of a store with features (TokenRecorder.attrs)."""
    vfp = videos.fingerprint()
    pol = policy.to_json()
    fields = _CONFIG_FIELDS + (_FEATURE_FIELDS if cfg.features else ())
    extra = {"features": token_attrs} if token_attrs is not None else {}
    return {
        "task": videoqa_store.TASK,
        "tool_version": labelstore.__version__,
        "teacher": teacher_info,
        "dataset": {
            "kind": "videoqa",
            "digest": dataset_digest(vfp["digest"], qa.digest),
            "num_samples": len(qa),
            "num_videos": len(videos),
            "videos": {**vfp, **videos.describe()},
            "questions_digest": qa.digest,
            "questions_path": qa.path,
        },
        "policy": {**pol, "digest": json_digest(pol)},
        "sampler": policy.sampler.to_json(),
        "vocab": vocab.to_json(),
        "tokenizer": tokenizer.to_json(),
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "num_samples": len(qa),
        "num_classes": len(vocab),
        "classes": list(vocab.answers),
        "top_k": cfg.top_k,
        "mc_passes": cfg.mc_passes,
        "teach_config": {**{k: getattr(cfg, k) for k in fields}, "mc_rng": MC_RNG},
        **extra,
    }


def teach_videoqa(
    out: str,
    videos,
    questions: str | os.PathLike | Sequence[Question],
    tokenizer: Tokenizer,
    vocab: AnswerVocab,
    teacher: nn.Module,
    sampler: FrameSampler,
    cfg: VideoQATeachConfig,
    *,
    teacher_info: dict | None = None,
    head_only: bool | None = None,
    resume: bool = False,
    overwrite: bool = False,
    max_units: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> dict:
    """Fill the VideoQA store at `out`; returns {"views", "seconds", "views_per_s", "complete", "units", "top_k"}.

    videos: VideoFolder (or any source with ids/index/src_shape(s)/load_frames/fingerprint/describe).
    questions: questions file (JSON lines / CSV) or a list of Question. cfg: the settings (VideoQATeachConfig;
    cfg.top_k is clamped to the vocabulary size A, None keeps all A: the teacher's full ranking, which RADI's
    cold lists are drawn from). max_units stops after that many work units (an interrupted run; finish it
    with resume=True). rank / world_size: this process labels its share of the work units (run_stage).
    head_only: see mc_forward_qa.
    """
    cfg = dataclasses.replace(cfg, top_k=len(vocab) if cfg.top_k is None else min(int(cfg.top_k), len(vocab)))
    qa = prepare_questions(videos, questions, tokenizer, vocab, strict_answers=cfg.strict_answers, max_len=cfg.max_len)
    policy = VideoPolicy(sampler=sampler, frame_size=cfg.frame_size)
    if teacher_info is None:
        teacher_info = describe_teacher(teacher, type(teacher).__name__)
    task = VideoQATask(videos, qa, tokenizer, vocab, teacher, policy, cfg, teacher_info, head_only)
    return run_stage(task, out, resume=resume, overwrite=overwrite, max_units=max_units, rank=rank,
                     world_size=world_size, decode_workers=cfg.decode_workers, progress=progress)
