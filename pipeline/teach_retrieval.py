"""The teacher stage for text-to-video retrieval: frame sampling, frame-text scores and similarities, once.

Rows: the Nv videos that the captions refer to (in video-source order) and the Nc captions (in
file order). One work unit = one epoch e (progress[e, 0]); it writes whole epoch arrays:

  aug/frames/indices [E,Nv,m] i16 = sampler(seed, e, video row, n_frames)      (the recorded view)
  view_digest        [E,Nv]   u32 = crc32c(float32 teacher input of the video)
  frame_scores       [E,Nc,m] f16 = softmax_f( teacher.frame_text_scores(V[caption_video[c]], T[c]) )
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

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import torch
import zarr

import labelstore
from labelstore import schema, writer
from labelstore.errors import TeacherOutputError
from labelstore.integrity import StoreMismatch, json_digest, view_digest

from . import rng
from .prefetch import prefetch
from .teacher import weights_hash
from .text import Caption, Tokenizer, check_videos, read_captions
from .video import FeatureH5, FrameSampler, VideoFolder, VideoPolicy

MODES = ("embeddings", "dense", "batches")


def is_dual_encoder(model) -> bool:
    """Duck-typed: a dual encoder embeds videos and texts separately and has a learned similarity scale."""
    return all(hasattr(model, a) for a in ("video_embedding", "text_embedding", "similarity_scale"))


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


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


def teacher_info(teacher: torch.nn.Module, name: str | None = None) -> dict:
    return {"name": name or getattr(teacher, "name", type(teacher).__name__), "weights_sha256": weights_hash(teacher),
            "params": int(sum(p.numel() for p in teacher.parameters()))}


def check_feature_dim(videos, teacher: torch.nn.Module) -> None:
    """A FeatureH5 source must match the model's feature dimension (ValueError naming file, dataset, both dims)."""
    fdim = getattr(teacher, "feature_dim", None)
    if isinstance(videos, FeatureH5):
        if fdim is None:
            raise ValueError(f"{videos.path}: the video source holds features (dimension {videos.dim}) but the "
                             f"model {type(teacher).__name__} takes frames (no feature_dim)")
        videos.check_dim(fdim)
    elif fdim is not None:
        raise ValueError(f"{videos}: the video source holds frames but the model {type(teacher).__name__} "
                         f"takes features of dimension {fdim}")


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------

_RESUME_KEYS = ("task", "epochs", "seed", "num_videos", "num_captions", "num_frames", "similarity_mode", "text_max_len")


def _create_array(group: zarr.Group, spec: schema.ArraySpec, chunk_rows: int) -> None:
    """Per-array chunking: inner chunks of `chunk_rows` rows; one shard = all rows (of one epoch)."""
    rows = spec.shape[spec.row_axis]
    chunk = max(1, min(chunk_rows, rows))
    shard = -(-rows // chunk) * chunk
    tail = tuple(spec.shape[spec.row_axis + 1 :])
    lead = (1,) if spec.per_epoch else ()
    group.create_array(
        spec.name, shape=spec.shape, chunks=(*lead, chunk, *tail), shards=(*lead, shard, *tail),
        dtype=str if spec.dtype == "str" else spec.dtype, compressors=writer.codecs_for(spec.dtype),
        fill_value=spec.fill_value, dimension_names=spec.dims,
        attributes={"meaning": spec.meaning, "units": spec.units, **spec.attrs},
    )


def _check_resume(have: dict, want: dict, path: str) -> None:
    for key in _RESUME_KEYS:
        if have.get(key) != want.get(key):
            raise StoreMismatch(f"{path}: cannot resume: {key} is {have.get(key)!r} in the store, {want.get(key)!r} now")
    for key, field in (("dataset", "digest"), ("captions", "digest"), ("teacher", "weights_sha256"),
                       ("policy", "digest"), ("tokenizer", "digest")):
        if have[key].get(field) != want[key].get(field):
            raise StoreMismatch(f"{path}: cannot resume: {key} {field} differs (store {have[key].get(field)!r}, "
                                f"now {want[key].get(field)!r}): another {key} than the one the store was started with")
    if have.get("teach_config") != want["teach_config"]:
        raise StoreMismatch(f"{path}: cannot resume: teach_config is {have.get('teach_config')} in the store, "
                            f"{want['teach_config']} now")


def teach_retrieval(
    out: str,
    videos: VideoFolder | FeatureH5,
    captions: str | os.PathLike | Sequence[Caption],
    tokenizer: Tokenizer,
    teacher: torch.nn.Module,
    sampler: FrameSampler | VideoPolicy,
    *,
    epochs: int,
    seed: int = 0,
    mode: str = "dense",
    batch_size: int = 64,
    text_max_len: int = 32,
    chunk_rows: int = 256,
    teacher_name: str | None = None,
    digests: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    decode_workers: int = 2,
    stop_after_units: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fill the retrieval store at `out` (see the module docstring); returns run statistics.

    batch_size: videos per teacher forward and, in "batches" mode, captions per training batch B.
    stop_after_units: write only this many pending units, then return (to test resume).
    Errors: CaptionsError (malformed captions file, or captions whose video is missing: line and
    video named), VideoDecodeError (file named), ValueError (feature dimension differs from the model).
    """
    if mode not in MODES:
        raise ValueError(f"teach_retrieval: mode must be one of {MODES}, got {mode!r}")
    if mode == "embeddings" and not is_dual_encoder(teacher):
        raise ValueError(f"teach_retrieval: mode 'embeddings' needs a dual-encoder teacher (video_embedding, "
                         f"text_embedding, similarity_scale); {type(teacher).__name__} is cross-modal: use 'dense' or 'batches'")
    caps, cap_path = load_captions(captions)
    src_rows, caption_video = caption_rows(videos, caps, cap_path)
    check_feature_dim(videos, teacher)
    policy = as_policy(sampler)
    Nv, Nc, m, E = len(src_rows), len(caps), policy.num_frames, int(epochs)
    n_frames = videos.src_shapes(src_rows)  # [Nv, 1]; a missing/unreadable file raises VideoDecodeError here
    teacher = teacher.eval()
    texts = [c.text for c in caps]
    ids, mask = tokenizer.encode_batch(texts, text_max_len)
    nb = Nc // batch_size if mode == "batches" else 0
    if mode == "batches" and nb == 0:
        raise ValueError(f"teach_retrieval: batch_size {batch_size} exceeds the {Nc} captions")

    pol = policy.to_json()
    tok = tokenizer.to_json()
    cap_digest = json_digest([[c.video_id, c.text] for c in caps])
    attrs = {
        "task": schema.RETRIEVAL,
        "tool_version": labelstore.__version__,
        "teacher": teacher_info(teacher, teacher_name),
        "dataset": {**videos.fingerprint(), **videos.describe()},
        "captions": {"path": cap_path, "num_captions": Nc, "digest": cap_digest},
        "policy": {**pol, "digest": json_digest(pol)},
        "sampler": policy.sampler.to_json(),
        "tokenizer": {**tok, "digest": json_digest(tok)},
        "text_max_len": text_max_len,
        "seed": int(seed),
        "epochs": E,
        "num_samples": Nv,
        "num_videos": Nv,
        "num_captions": Nc,
        "num_frames": m,
        "similarity_mode": mode,
        "teach_config": {"batch_size": batch_size, "chunk_rows": chunk_rows, "digests": digests},
    }
    with torch.inference_mode():
        t_all = repr_cat([teacher.encode_text(torch.from_numpy(ids[i:i + 256]), torch.from_numpy(mask[i:i + 256]))
                          for i in range(0, Nc, 256)])  # text_repr of every caption
    embed_dim = 0
    if mode == "embeddings":
        embed_dim = int(teacher.text_embedding(repr_take(t_all, slice(0, 1))).shape[1])
        attrs["logit_scale"] = teacher.similarity_scale()
    if mode == "batches":
        attrs["batch_size"] = batch_size
        attrs["num_batches"] = nb

    def build(at: str) -> None:
        specs = schema.retrieval_arrays(num_videos=Nv, num_captions=Nc, epochs=E, num_frames=m, mode=mode,
                                        embed_dim=embed_dim, num_batches=nb, batch_size=batch_size, digests=digests)
        group = writer.create(at, [], attrs, chunk_rows=chunk_rows, shard_rows=chunk_rows, epoch_groups=E)
        for spec in specs:
            _create_array(group, spec, chunk_rows)
        group.attrs["layout"] = {"chunk_rows": chunk_rows, "shard_rows": "all rows of one epoch", "epoch_groups": E,
                                 "partitions": 1, "work_unit": "one epoch"}
        group["sample_id"][:] = np.asarray([videos.ids[int(i)] for i in src_rows], dtype=str)
        group["caption_video"][:] = caption_video
        group["caption_text"][:] = np.asarray(texts, dtype=str)
        if mode == "embeddings":
            group["text_emb"][:] = teacher.text_embedding(t_all).float().numpy().astype(np.float16)

    group = writer.open_or_create(out, build, lambda g: _check_resume(g.attrs.asdict(), attrs, out),
                                  resume=resume, overwrite=overwrite)

    units = writer.pending_units(group)
    if stop_after_units is not None:
        units = units[:stop_after_units]
    cache = FrameCache(videos)
    cv_t = torch.from_numpy(caption_video.astype(np.int64))

    def produce():
        """Per unit: (epoch, indices [Nv, m]) then batches (start, x, digests)."""
        with ThreadPoolExecutor(decode_workers) as pool:
            for e, _ in units:
                idx = policy.sample(seed, e, np.arange(Nv), n_frames, Nv)["frames/indices"]  # int16 [Nv, m]
                yield ("epoch", e, idx, None)
                for s in range(0, Nv, batch_size):
                    rows = range(s, min(Nv, s + batch_size))
                    frames = list(pool.map(lambda r: cache.get(int(src_rows[r]), idx[r]), rows))
                    x = render_inputs(videos, policy, frames)  # [b, m, ...] float32
                    dig = np.array([view_digest(v) for v in x.numpy()], np.uint32) if digests else None
                    yield ("batch", s, x, dig)

    t0, n_pairs = time.perf_counter(), 0
    with writer.BackgroundWriter(group) as bg, contextlib.closing(prefetch(produce(), depth=4)) as it:
        for e, _ in units:
            kind, e2, idx, _ = next(it)
            assert kind == "epoch" and e2 == e
            parts, dig = [], np.zeros(Nv, np.uint32)
            while sum(_rows(p) for p in parts) < Nv:
                kind, s, x, d = next(it)
                with torch.inference_mode():
                    parts.append(teacher.encode_video(x))
                if digests:
                    dig[s:s + len(d)] = d
            v_all = repr_cat(parts)  # video_repr of every video (this epoch's view)
            with torch.inference_mode():
                fs = []
                for c0 in range(0, Nc, 256):
                    sl = slice(c0, min(Nc, c0 + 256))
                    r = teacher.frame_text_scores(repr_take(v_all, cv_t[sl]), repr_take(t_all, sl)).float()
                    if r.shape != (sl.stop - sl.start, m):
                        raise TeacherOutputError(f"frame_text_scores returned {tuple(r.shape)}, expected [{sl.stop - sl.start}, {m}]")
                    fs.append(r.softmax(-1))
                fs = torch.cat(fs)
                _check_finite(fs, "frame scores", e, caps)
                bg.write("aug/frames/indices", 0, idx, epoch=e)
                bg.write("frame_scores", 0, fs.numpy().astype(np.float16), epoch=e)
                if digests:
                    bg.write("view_digest", 0, dig, epoch=e)
                if mode == "embeddings":
                    ve = teacher.video_embedding(v_all).float()
                    bg.write("video_emb", 0, ve.numpy().astype(np.float16), epoch=e)
                elif mode == "dense":
                    sim = dense_similarity(teacher, v_all, t_all)  # [Nc, Nv]
                    _check_finite(sim, "similarity", e, caps)
                    bg.write("similarity", 0, sim.numpy().astype(np.float16), epoch=e)
                else:
                    plan = plan_batches(caption_video, batch_size, seed, e)  # [nb, B]
                    blocks = np.full((nb, batch_size, batch_size), np.nan, np.float16)
                    for b in range(nb):
                        sel = plan[b][plan[b] >= 0]
                        q = teacher.similarity(repr_take(v_all, cv_t[sel]), repr_take(t_all, sel)).float().T  # [B, B]
                        _check_finite(q, "similarity", e, caps)
                        blocks[b, : len(sel), : len(sel)] = q.numpy()
                    bg.write("batch_captions", 0, plan, epoch=e)
                    bg.write("batch_similarity", 0, blocks, epoch=e)
            n_pairs += Nc * (Nv if mode != "batches" else batch_size)
            bg.done((e, 0))
            if progress:
                print(f"teach_retrieval: epoch {e} done ({time.perf_counter() - t0:.1f}s)", flush=True)
    seconds = time.perf_counter() - t0
    complete = writer.finalize(group)
    return {"units": len(units), "seconds": seconds, "videos": Nv * len(units), "captions": Nc,
            "pairs": n_pairs, "pairs_per_s": n_pairs / max(seconds, 1e-9), "complete": complete, "mode": mode}


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


def _check_finite(x: torch.Tensor, what: str, epoch: int, caps: Sequence[Caption]) -> None:
    bad = ~torch.isfinite(x).reshape(len(x), -1).all(1)
    if bad.any():
        rows = torch.nonzero(bad)[:5, 0].tolist()
        named = [f"{caps[r].video_id}: {caps[r].text!r}" for r in rows if r < len(caps)]
        raise TeacherOutputError(f"teacher {what} are NaN/inf at epoch {epoch} for rows {rows} ({named})")
