"""The teacher stage for text-to-video retrieval: frame sampling, frame-text scores and similarities, once.

Rows: the Nv videos that the captions refer to (in video-source order) and the Nc captions (in
file order). One work unit = one epoch e (progress[e, 0]); it writes whole epoch arrays:

  aug/frames/indices [E,Nv,m] i16 = sampler(seed, e, video row, n_frames)      (the recorded view)
  view_digest        [E,Nv]   u32 = crc32c(float32 teacher input of the video)
  frame_scores       [E,Nc,m] f16 = softmax_f( teacher.frame_text_scores(V[caption_video[c]], T[c]) / T_f )
                     T_f = frame_temperature (attribute frame_score_temperature; default 1, the official
                     TeachCLIP convention: softmax over frames of cos(sentence, frame) at temperature 1)
and, by similarity mode,
  "embeddings": video_emb [E,Nv,D] f16, text_emb [Nc,D] f16 (L2-normalised; attrs logit_scale):
                s(c, v) = logit_scale * <text_emb[c], video_emb[e, v]>
  "dense":      similarity [E,Nc,Nv] f16 = teacher.similarity(V, T)^T, computed in blocks
  "batches":    batch_captions [E,nb,B] i32 = plan_batches(caption_video, B, seed, e)
                batch_similarity [E,nb,B,B] f16: [b, i, j] = s(caption i, video of caption j)

All randomness is keyed by (seed, epoch, row), so a resumed store equals an uninterrupted one.
Decoding and rendering run one epoch batch ahead of the teacher on a thread; writes on another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

import labelstore
from labelstore import writer
from labelstore.errors import ConfigError, TeacherOutputError
from labelstore.integrity import json_digest, view_digest
from labelstore.manifest import PROGRESS

from . import retrieval_store
from .stage import Item, check_teacher_output, run_stage
from .teacher import teacher_info
from .retrieval_data import (FRAME_TEMPERATURE, FrameCache, as_policy, caption_rows, check_feature_dim, frame_targets,
                             load_captions, plan_batches, render_inputs)
from .text import Caption, Tokenizer
from .video import FeatureH5, FrameSampler, VideoFolder, VideoPolicy

MODES = ("embeddings", "dense", "batches")


@dataclass(frozen=True)
class RetrievalTeachConfig:
    """The settings of a retrieval teacher stage (teach_retrieval); every check names its option."""

    epochs: int
    seed: int = 0
    mode: str = "dense"  # similarity mode: "embeddings", "dense" or "batches" (module docstring)
    batch_size: int = 64  # videos per teacher forward and, in "batches" mode, captions per training batch B
    text_max_len: int = 32  # caption tokens
    chunk_rows: int = 256  # rows per inner chunk (one shard = all rows of one epoch)
    digests: bool = True  # store view_digest
    # frame_scores = softmax over frames of frame_text_scores / frame_temperature (recorded as the attribute
    # frame_score_temperature; 1 = the official TeachCLIP convention for cosine scores)
    frame_temperature: float = FRAME_TEMPERATURE
    decode_workers: int = 2

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"teach_retrieval: mode (--similarity-mode) must be one of {MODES}, got {self.mode!r}")
        if not self.frame_temperature > 0:
            raise ConfigError(f"teach_retrieval: frame_temperature must be > 0, got {self.frame_temperature}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"teach_retrieval: seed (--seed) must be in [0, 2**63), got {self.seed}")
        for name, option in (("epochs", "--epochs"), ("batch_size", "--batch-size"), ("text_max_len", "text_max_len"),
                             ("chunk_rows", "chunk_rows"), ("decode_workers", "--workers")):
            if getattr(self, name) < 1:
                raise ConfigError(f"teach_retrieval: {name} ({option}) must be >= 1, got {getattr(self, name)}")


def is_dual_encoder(model) -> bool:
    """Duck-typed: a dual encoder embeds videos and texts separately and has a learned similarity scale."""
    return all(hasattr(model, a) for a in ("video_embedding", "text_embedding", "similarity_scale"))


# --------------------------------------------------------------------------------------
# Reprs: a tensor or a tuple of tensors with the batch on dim 0
# --------------------------------------------------------------------------------------


def repr_cat(parts: list):
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return tuple(torch.cat([p[k] for p in parts]) for k in range(len(parts[0])))


def repr_take(r, idx):
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long) if not isinstance(idx, slice) else idx
    return r[idx] if isinstance(r, torch.Tensor) else tuple(x[idx] for x in r)


def _rows(r) -> int:
    return len(r) if isinstance(r, torch.Tensor) else len(r[0])


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------

RESUME_KEYS = ("task", "epochs", "seed", "num_videos", "num_captions", "num_frames", "similarity_mode", "text_max_len",
               "dataset.digest", "captions.digest", "teacher.weights_sha256", "policy.digest", "tokenizer.digest",
               "teach_config.batch_size", "teach_config.chunk_rows", "teach_config.digests", "frame_score_temperature")


class RetrievalTask:
    """Rows are videos and captions; one work unit = one epoch (unit (e, 0)), written whole."""

    name, count_unit, resume_keys = retrieval_store.TASK, "pair", RESUME_KEYS

    def __init__(self, videos, caps: list[Caption], cap_path: str | None, tokenizer: Tokenizer,
                 teacher: torch.nn.Module, policy: VideoPolicy, cfg: RetrievalTeachConfig, teacher_name: str | None):
        self.videos, self.caps, self.teacher, self.policy = videos, caps, teacher.eval(), policy
        mode, batch_size, text_max_len, chunk_rows, digests = (cfg.mode, cfg.batch_size, cfg.text_max_len, cfg.chunk_rows,
                                                               cfg.digests)
        self.mode, self.batch_size, self.seed, self.digests, self.chunk_rows = mode, batch_size, int(cfg.seed), digests, chunk_rows
        self.frame_temperature = float(cfg.frame_temperature)
        self.src_rows, self.caption_video = caption_rows(videos, caps, cap_path)
        check_feature_dim(videos, teacher)
        self.Nv, self.Nc, self.m, self.E = len(self.src_rows), len(caps), policy.num_frames, int(cfg.epochs)
        self.n_frames = videos.src_shapes(self.src_rows)  # [Nv, 1]; a missing/unreadable file raises VideoDecodeError here
        self.texts = [c.text for c in caps]
        ids, mask = tokenizer.encode_batch(self.texts, text_max_len)
        self.nb = self.Nc // batch_size if mode == "batches" else 0
        if mode == "batches" and self.nb == 0:
            raise ConfigError(f"teach_retrieval: batch_size {batch_size} exceeds the {self.Nc} captions")
        pol, tok = policy.to_json(), tokenizer.to_json()
        self.attrs = {
            "task": retrieval_store.TASK,
            "tool_version": labelstore.__version__,
            "teacher": teacher_info(teacher, teacher_name),
            "dataset": {**videos.fingerprint(), **videos.describe()},
            "captions": {"path": cap_path, "num_captions": self.Nc, "digest": json_digest([[c.video_id, c.text] for c in caps])},
            "policy": {**pol, "digest": json_digest(pol)},
            "sampler": policy.sampler.to_json(),
            "tokenizer": {**tok, "digest": json_digest(tok)},
            "text_max_len": text_max_len,
            "seed": self.seed,
            "epochs": self.E,
            "num_samples": self.Nv,
            "num_videos": self.Nv,
            "num_captions": self.Nc,
            "num_frames": self.m,
            "similarity_mode": mode,
            "frame_score_temperature": self.frame_temperature,
            "teach_config": {"batch_size": batch_size, "chunk_rows": chunk_rows, "digests": digests},
        }
        with torch.inference_mode():
            self.t_all = repr_cat([teacher.encode_text(torch.from_numpy(ids[i:i + 256]), torch.from_numpy(mask[i:i + 256]))
                                   for i in range(0, self.Nc, 256)])  # text_repr of every caption
        self.embed_dim = 0
        if mode == "embeddings":
            self.embed_dim = int(teacher.text_embedding(repr_take(self.t_all, slice(0, 1))).shape[1])
            self.attrs["logit_scale"] = teacher.similarity_scale()
        if mode == "batches":
            self.attrs["batch_size"] = batch_size
            self.attrs["num_batches"] = self.nb
        self.cache = FrameCache(videos)
        self.cv_t = torch.from_numpy(self.caption_video.astype(np.int64))
        self._parts: list = []  # video_repr batches of the current epoch
        self._dig = np.zeros(self.Nv, np.uint32)
        self._epochs_done = 0

    def build(self, at: str) -> None:
        specs = retrieval_store.retrieval_arrays(num_videos=self.Nv, num_captions=self.Nc, epochs=self.E, num_frames=self.m,
                                        mode=self.mode, embed_dim=self.embed_dim, num_batches=self.nb,
                                        batch_size=self.batch_size, digests=self.digests)
        whole = {s.name: -(-s.shape[s.row_axis] // self.chunk_rows) * self.chunk_rows for s in specs}  # one shard: all rows
        group = writer.create(at, specs, self.attrs, chunk_rows=self.chunk_rows, shard_rows=whole, epoch_groups=self.E)
        # the layout and coordinates attributes retrieval stores have always recorded
        group.attrs.update({"layout": {"chunk_rows": self.chunk_rows, "shard_rows": "all rows of one epoch",
                                       "epoch_groups": self.E, "partitions": 1, "work_unit": "one epoch"},
                            "coordinates": PROGRESS})
        group["sample_id"][:] = np.asarray([self.videos.ids[int(i)] for i in self.src_rows], dtype=str)
        group["caption_video"][:] = self.caption_video
        group["caption_text"][:] = np.asarray(self.texts, dtype=str)
        if self.mode == "embeddings":
            group["text_emb"][:] = self.teacher.text_embedding(self.t_all).float().numpy().astype(np.float16)

    def pairs_per_epoch(self) -> int:
        return self.Nc * (self.Nv if self.mode != "batches" else self.batch_size)

    def work(self, units) -> int:
        return len(units) * self.pairs_per_epoch()

    def inputs(self, units, pool):
        """Per unit (epoch e): the rendered views of batches of videos, then the epoch's frame indices."""
        rows_all = np.arange(self.Nv)
        for e, p in units:
            idx = self.policy.sample(self.seed, e, rows_all, self.n_frames, self.Nv)["frames/indices"]  # int16 [Nv, m]
            for s in range(0, self.Nv, self.batch_size):
                rows = range(s, min(self.Nv, s + self.batch_size))
                frames = list(pool.map(lambda r: self.cache.get(int(self.src_rows[r]), idx[r]), rows))
                x = render_inputs(self.videos, self.policy, frames)  # [b, m, ...] float32
                dig = np.array([view_digest(v) for v in x.numpy()], np.uint32) if self.digests else None
                yield Item("batch", (e, p), e, rows_all, (s, x, dig))
            yield Item("epoch", (e, p), e, rows_all, idx)
            yield Item("unit", (e, p), None, rows_all)

    def label(self, item: Item):
        if item.kind == "batch":
            s, x, d = item.data
            with torch.inference_mode():
                self._parts.append(self.teacher.encode_video(x))
            if self.digests:
                self._dig[s:s + len(d)] = d
            return [], 0
        if item.kind == "unit":
            self._epochs_done += 1
            return [], 0
        e, v_all = item.epoch, repr_cat(self._parts)  # video_repr of every video (this epoch's view)
        self._parts = []
        with torch.inference_mode():
            writes = [("aug/frames/indices", 0, item.data, e),
                      ("frame_scores", 0, self.frame_scores(v_all, e).numpy().astype(np.float16), e)]
            if self.digests:
                writes.append(("view_digest", 0, self._dig.copy(), e))
            writes += self.similarities(v_all, e)
        return writes, self.pairs_per_epoch()

    def _check(self, x: torch.Tensor, what: str, epoch: int) -> None:
        rows = np.arange(len(x))
        check_teacher_output(x, epoch, rows, lambda r: f"{self.caps[r].video_id}: {self.caps[r].text!r}" if r < self.Nc else "",
                             what=what)

    def frame_scores(self, v_all, e: int) -> torch.Tensor:
        """float32 [Nc, m] = frame_targets(teacher.frame_text_scores, frame_temperature), in blocks of 256 captions."""
        fs = []
        for c0 in range(0, self.Nc, 256):
            sl = slice(c0, min(self.Nc, c0 + 256))
            r = self.teacher.frame_text_scores(repr_take(v_all, self.cv_t[sl]), repr_take(self.t_all, sl)).float()
            if r.shape != (sl.stop - sl.start, self.m):
                raise TeacherOutputError(f"frame_text_scores returned {tuple(r.shape)}, expected [{sl.stop - sl.start}, {self.m}]")
            fs.append(frame_targets(r, self.frame_temperature))
        fs = torch.cat(fs)
        self._check(fs, "frame scores", e)
        return fs

    def similarities(self, v_all, e: int) -> list:
        """The writes of the similarity mode (module docstring)."""
        t = self.teacher
        if self.mode == "embeddings":
            return [("video_emb", 0, t.video_embedding(v_all).float().numpy().astype(np.float16), e)]
        if self.mode == "dense":
            sim = dense_similarity(t, v_all, self.t_all)  # [Nc, Nv]
            self._check(sim, "similarity", e)
            return [("similarity", 0, sim.numpy().astype(np.float16), e)]
        B = self.batch_size
        plan = plan_batches(self.caption_video, B, self.seed, e)  # [nb, B]
        blocks = np.full((self.nb, B, B), np.nan, np.float16)
        for b in range(self.nb):
            sel = plan[b][plan[b] >= 0]
            q = t.similarity(repr_take(v_all, self.cv_t[sel]), repr_take(self.t_all, sel)).float().T  # [B, B]
            self._check(q, "similarity", e)
            blocks[b, : len(sel), : len(sel)] = q.numpy()
        return [("batch_captions", 0, plan, e), ("batch_similarity", 0, blocks, e)]

    def stats(self, count: int, seconds: float) -> dict:
        return {"videos": self.Nv * self._epochs_done, "captions": self.Nc, "pairs": count,
                "pairs_per_s": count / max(seconds, 1e-9), "mode": self.mode}


def teach_retrieval(
    out: str,
    videos: VideoFolder | FeatureH5,
    captions: str | os.PathLike | Sequence[Caption],
    tokenizer: Tokenizer,
    teacher: torch.nn.Module,
    sampler: FrameSampler | VideoPolicy,
    cfg: RetrievalTeachConfig,
    *,
    teacher_name: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    stop_after_units: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fill the retrieval store at `out` (see the module docstring) with the settings `cfg`; returns run statistics.

    stop_after_units: write only this many pending units, then return (to test resume).
    Errors: ConfigError (mode "embeddings" with a cross-modal teacher), CaptionsError (malformed captions
    file, or captions whose video is missing: line and video named), VideoDecodeError (file named),
    ValueError (feature dimension differs from the model).
    """
    if cfg.mode == "embeddings" and not is_dual_encoder(teacher):
        raise ConfigError(f"teach_retrieval: mode 'embeddings' needs a dual-encoder teacher (video_embedding, "
                          f"text_embedding, similarity_scale); {type(teacher).__name__} is cross-modal: use 'dense' or 'batches'")
    caps, cap_path = load_captions(captions)
    task = RetrievalTask(videos, caps, cap_path, tokenizer, teacher, as_policy(sampler), cfg, teacher_name)
    return run_stage(task, out, resume=resume, overwrite=overwrite, max_units=stop_after_units,
                     decode_workers=cfg.decode_workers, progress=progress)


def dense_similarity(teacher: torch.nn.Module, v_all, t_all, block: int = 256) -> torch.Tensor:
    """float32 [Nc, Nv] = teacher.similarity(V, T)^T, in blocks of `block` videos x `block` captions."""
    Nv, Nc = _rows(v_all), _rows(t_all)
    out = torch.empty(Nc, Nv)
    for v0 in range(0, Nv, block):
        vb = repr_take(v_all, slice(v0, min(Nv, v0 + block)))
        for c0 in range(0, Nc, block):
            s = teacher.similarity(vb, repr_take(t_all, slice(c0, min(Nc, c0 + block)))).float()  # [nv, nc]
            out[c0:c0 + s.shape[1], v0:v0 + s.shape[0]] = s.T
    return out
