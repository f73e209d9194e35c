"""Video data layer: frame sampling (the recorded "augmentation" of a video view) and sources.

A video view is the list of `m` frame indices drawn for (epoch, video). The indices are
a pure function of (seed, epoch, sample id, number of frames) through the counter-based
RNG in `labelstore.pipeline.rng`, so they do not depend on batch size, order, worker count or resume
point. The teacher stage records them ("frames/indices", int16 [m]) and a student replays
the identical view by decoding exactly those frames.

Sources
-------
* `VideoFolder(root)`: video files under a directory (decoded with PyAV).
* `FeatureH5(path)`: pre-extracted per-frame features, one HDF5 dataset [n_frames, D] per video.

Both expose `__len__`, `ids`, `src_shape(i) -> (n_frames,)`, `load_frames(i, indices)` and
`fingerprint()`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
from labelstore.errors import ConfigError, DataError, StoreError
from labelstore.extras import require

from labelstore.pipeline import rng
from labelstore.pipeline.images import src_shapes

__all__ = [
    "FrameSampler",
    "VideoPolicy",
    "VideoFolder",
    "FeatureH5",
    "VideoDecodeError",
    "video_index",
    "VIDEO_EXTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INT16_MAX = np.iinfo(np.int16).max


class VideoDecodeError(DataError):
    """A video file is missing, unreadable, has no video stream or fewer frames than requested."""


def _loads(obj: str | bytes | dict) -> dict:
    if isinstance(obj, dict):
        return obj
    return json.loads(obj)


# --------------------------------------------------------------------------------------
# Frame sampling
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameSampler:
    """Segment-based frame sampling (TSN style).

    [0, n_frames) is split into `num_frames` integer segments
    ``[j*n//m, (j+1)*n//m)``; one index is taken per segment, at a random offset
    ("random-offset", training) or at the segment middle ("uniform", evaluation; the
    same for every epoch and seed). When n_frames < m, empty segments repeat the index of
    their start so the result is sorted and non-decreasing and covers every frame.
    """

    num_frames: int = 8
    mode: str = "random-offset"

    name: ClassVar[str] = "frames"
    MODES: ClassVar[tuple[str, ...]] = ("random-offset", "uniform")

    def __post_init__(self) -> None:
        if not isinstance(self.num_frames, (int, np.integer)) or isinstance(self.num_frames, bool) or self.num_frames < 1:
            raise ConfigError(f"FrameSampler: num_frames must be a positive int, got {self.num_frames!r}")
        object.__setattr__(self, "num_frames", int(self.num_frames))
        if self.mode not in self.MODES:
            raise ConfigError(f"FrameSampler: mode must be one of {self.MODES}, got {self.mode!r}")

    # -- spec / sampling ---------------------------------------------------------------
    def param_spec(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {"indices": ("int16", (self.num_frames,))}

    def sample(
        self,
        seed: int,
        epoch: int,
        ids: np.ndarray,
        src_shape: np.ndarray,
        num_samples: int | None = None,
        *,
        output_size=None,
    ) -> dict[str, np.ndarray]:
        """ids int64 [N]; src_shape [N, 1] (or [N]) frame counts -> {"indices": int16 [N, m]}.

        `output_size` is accepted (and ignored) for signature compatibility with `augment.Op`."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        n = np.asarray(src_shape, dtype=np.int64).reshape(len(ids), -1)[:, 0]
        if num_samples is not None and len(ids) and (ids.min() < 0 or ids.max() >= num_samples):
            raise ConfigError(f"FrameSampler: sample ids must be in [0, {num_samples}), got range [{ids.min()}, {ids.max()}]")
        if len(n) and n.min() < 1:
            bad = ids[np.argmin(n)]
            raise DataError(f"FrameSampler: sample {bad} has {n.min()} frames; every video needs at least one frame")
        if len(n) and n.max() > _INT16_MAX + 1:
            bad = ids[np.argmax(n)]
            raise DataError(
                f"FrameSampler: sample {bad} has {n.max()} frames; frame indices are recorded as int16 "
                f"(at most {_INT16_MAX + 1} frames per video) — subsample the video first"
            )
        m = self.num_frames
        j = np.arange(m, dtype=np.int64)[None, :]
        start = (j * n[:, None]) // m  # [N, m]
        stop = ((j + 1) * n[:, None]) // m
        width = np.maximum(stop - start, 1)
        if self.mode == "uniform":
            off = (width - 1) // 2
        else:
            u = rng.uniform(seed, epoch, ids, rng.stream_id("frames/offset"), m)  # [N, m]
            off = np.minimum((u * width).astype(np.int64), width - 1)
        idx = np.minimum(start + off, n[:, None] - 1)
        return {"indices": idx.astype(np.int16)}

    # -- serialisation -----------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"num_frames": self.num_frames, "mode": self.mode}

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (like `augment.Policy.to_json`)."""
        return {"type": type(self).__name__, "name": self.name, "config": self.config()}

    @classmethod
    def from_json(cls, obj: str | bytes | dict) -> "FrameSampler":
        d = _loads(obj)
        if d.get("type", cls.__name__) != cls.__name__:
            raise StoreError(f"FrameSampler.from_json: expected type {cls.__name__!r}, got {d.get('type')!r}")
        return cls(**d["config"])


@dataclass(frozen=True)
class VideoPolicy:
    """The recorded view of a video sample: which frames, at which size, with which normalisation."""

    sampler: FrameSampler = field(default_factory=FrameSampler)
    frame_size: tuple[int, int] = (64, 64)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    version: int = 1

    kind: ClassVar[str] = "video"

    def __post_init__(self) -> None:
        object.__setattr__(self, "frame_size", tuple(int(v) for v in self.frame_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.frame_size) != 2 or min(self.frame_size) < 1:
            raise ConfigError(f"VideoPolicy: frame_size must be (H, W) with positive entries, got {self.frame_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"VideoPolicy: mean/std need 3 entries with std > 0, got {self.mean}, {self.std}")

    @property
    def num_frames(self) -> int:
        return self.sampler.num_frames

    def param_spec(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {f"{self.sampler.name}/{k}": v for k, v in self.sampler.param_spec().items()}

    def sample(self, seed: int, epoch: int, ids: np.ndarray, src_shape: np.ndarray, num_samples: int | None = None) -> dict[str, np.ndarray]:
        out = self.sampler.sample(seed, epoch, ids, src_shape, num_samples)
        return {f"{self.sampler.name}/{k}": v for k, v in out.items()}

    def render(self, frames):
        """uint8 [..., m, H, W, 3] (numpy or torch) -> torch.float32 [..., m, 3, h, w], resized and normalised."""
        import torch
        import torch.nn.functional as F

        x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
        if x.dtype != torch.uint8 or x.ndim < 4 or x.shape[-1] != 3:
            raise DataError(f"VideoPolicy.render expects uint8 [..., H, W, 3] frames, got {tuple(x.shape)} {x.dtype}")
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(x.shape[-2:]) != self.frame_size:
            x = F.interpolate(x, size=self.frame_size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        x = (x - mean) / std
        return x.reshape(*lead, 3, *self.frame_size).contiguous()

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (like `augment.Policy.to_json`)."""
        return {
            "kind": self.kind,
            "sampler": self.sampler.to_json(),
            "frame_size": list(self.frame_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "version": self.version,
        }

    config = to_json

    @classmethod
    def from_json(cls, obj: str | bytes | dict) -> "VideoPolicy":
        cfg = dict(_loads(obj))
        kind = cfg.pop("kind", cls.kind)
        if kind != cls.kind:
            raise StoreError(f"VideoPolicy.from_json: expected kind {cls.kind!r}, got {kind!r}")
        version = int(cfg.pop("version", 1))
        if version != 1:
            raise StoreError(f"VideoPolicy.from_json: unsupported version {version} (this code reads version 1)")
        return cls(sampler=FrameSampler.from_json(cfg.pop("sampler")), version=version, **cfg)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _video_key(vid: str) -> str:
    p = PurePosixPath(vid)
    return p.stem if p.suffix.lower() in VIDEO_EXTS else p.name


def video_index(ids: Iterable[str]) -> dict[str, int]:
    """Map video id (file stem, or dataset name's last component) -> row. Raises on duplicate keys."""
    out: dict[str, int] = {}
    dups: dict[str, list[str]] = {}
    ids = list(ids)
    for row, vid in enumerate(ids):
        key = _video_key(vid)
        if key in out:
            dups.setdefault(key, [ids[out[key]]]).append(vid)
        else:
            out[key] = row
    if dups:
        shown = "; ".join(f"{k!r}: {v}" for k, v in list(dups.items())[:10])
        raise DataError(f"video_index: {len(dups)} video id(s) are ambiguous (same stem in several files): {shown}")
    return out


def _check_indices(where: str, indices, n: int) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1:
        idx = idx.reshape(-1)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ConfigError(f"{where}: frame indices must be integers, got {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"{where}: frame indices must be in [0, {n}), got range [{idx.min()}, {idx.max()}]")
    return idx


# --------------------------------------------------------------------------------------
# Video files
# --------------------------------------------------------------------------------------


class _SeekFailed(Exception):
    pass


class VideoFolder:
    """Video files under `root` (recursively), sorted by relative path.

    `frame_size=(H, W)` resizes decoded frames (area interpolation). Videos longer than
    `seek_threshold` frames are decoded with keyframe seeking, using a per-video index of
    packet timestamps (built once by demuxing, cached); frame k is always the k-th frame
    in presentation order. Shorter videos are decoded from the start.
    """

    kind = "video_folder"

    def __init__(
        self,
        root: str | os.PathLike,
        exts: Sequence[str] = VIDEO_EXTS,
        *,
        frame_size: tuple[int, int] | None = None,
        interpolation: str = "AREA",
        seek_threshold: int = 256,
        single_thread_max_pixels: int = 640 * 480,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"VideoFolder: {self.root} is not a directory")
        self.exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in exts)
        self.frame_size = None if frame_size is None else (int(frame_size[0]), int(frame_size[1]))
        self.interpolation = interpolation
        self.seek_threshold = int(seek_threshold)
        self.single_thread_max_pixels = int(single_thread_max_pixels)
        files = [p for p in self.root.rglob("*") if p.suffix.lower() in self.exts and p.is_file()]
        self.ids: list[str] = sorted(p.relative_to(self.root).as_posix() for p in files)
        if not self.ids:
            raise DataError(f"VideoFolder: no videos with extensions {self.exts} under {self.root}")
        self._nframes: dict[int, int] = {}
        self._ptsidx: dict[int, tuple[np.ndarray, np.ndarray, dict[int, int]] | None] = {}
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, i: int) -> Path:
        return self.root / self.ids[i]

    def index(self) -> dict[str, int]:
        return video_index(self.ids)

    # -- metadata ----------------------------------------------------------------------
    def _open(self, i: int):
        av = require("av", "video data")

        path = self.path(i)
        if not path.is_file():
            raise VideoDecodeError(f"{path}: video file is missing")
        try:
            container = av.open(str(path))
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoDecodeError(f"{path}: cannot open video ({e})") from e
        if not container.streams.video:
            container.close()
            raise VideoDecodeError(f"{path}: file has no video stream")
        return container

    def src_shape(self, i: int) -> tuple[int]:
        """(n_frames,) from container metadata, or by counting packets when the container has none; cached."""
        n = self._nframes.get(i)
        if n is None:
            av = require("av", "video data")

            with self._open(i) as c:
                s = c.streams.video[0]
                n = int(s.frames or 0)
                if n <= 0:
                    try:
                        n = sum(1 for p in c.demux(s) if p.size > 0)
                    except (av.FFmpegError, OSError) as e:
                        raise VideoDecodeError(f"{self.path(i)}: cannot read video packets ({e})") from e
            if n <= 0:
                raise VideoDecodeError(f"{self.path(i)}: video has no frames")
            self._nframes[i] = n
        return (n,)

    def src_shapes(self, indices=None) -> np.ndarray:
        """int64 [n, 1] frame counts of `indices` (all videos by default)."""
        return src_shapes(self, indices, width=1)

    def _pts_index(self, i: int):
        """(sorted frame pts, sorted keyframe pts, pts -> frame index) or None if timestamps are unusable."""
        if i not in self._ptsidx:
            av = require("av", "video data")

            pts, keys = [], []
            with self._open(i) as c:
                s = c.streams.video[0]
                try:
                    for p in c.demux(s):
                        if p.size == 0:
                            continue
                        if p.pts is None:
                            pts = None
                            break
                        pts.append(int(p.pts))
                        if p.is_keyframe:
                            keys.append(int(p.pts))
                except (av.FFmpegError, OSError) as e:
                    raise VideoDecodeError(f"{self.path(i)}: cannot read video packets ({e})") from e
            res = None
            if pts and keys and len(set(pts)) == len(pts):
                p = np.sort(np.asarray(pts, dtype=np.int64))
                res = (p, np.sort(np.asarray(keys, dtype=np.int64)), {int(v): k for k, v in enumerate(p)})
            self._ptsidx[i] = res
        return self._ptsidx[i]

    # -- decoding ----------------------------------------------------------------------
    def __getstate__(self):
        st = self.__dict__.copy()
        del st["_local"]  # per-thread reformatters are not picklable
        return st

    def __setstate__(self, st):
        self.__dict__.update(st)
        self._local = threading.local()

    def _convert(self, frame) -> np.ndarray:
        # One swscale context per thread, reused across frames and videos (creating one per
        # frame, as VideoFrame.to_ndarray(format=...) does, costs ~3x the decode itself).
        fmt = getattr(self._local, "reformatter", None)
        if fmt is None:
            from av.video.reformatter import VideoReformatter

            fmt = self._local.reformatter = VideoReformatter()
        if self.frame_size is None:
            return fmt.reformat(frame, format="rgb24").to_ndarray()
        h, w = self.frame_size
        return fmt.reformat(frame, format="rgb24", width=w, height=h, interpolation=self.interpolation).to_ndarray()

    def _threads(self, stream) -> None:
        # Frame threads cost more than they save on small frames (thread start-up per container).
        cc = stream.codec_context
        if (cc.width or 0) * (cc.height or 0) <= self.single_thread_max_pixels:
            cc.thread_count = 1
        else:
            stream.thread_type = "AUTO"

    def _decode_sequential(self, i: int, targets: np.ndarray) -> dict[int, np.ndarray]:
        need = set(int(t) for t in targets)
        last = int(targets[-1])
        out: dict[int, np.ndarray] = {}
        with self._open(i) as c:
            s = c.streams.video[0]
            self._threads(s)
            for k, frame in enumerate(c.decode(s)):
                if k in need:
                    out[k] = self._convert(frame)
                if k >= last:
                    break
        return out

    def _decode_seeking(self, i: int, targets: np.ndarray, index) -> dict[int, np.ndarray]:
        pts, keypts, pos = index
        need = set(int(t) for t in targets)
        out: dict[int, np.ndarray] = {}
        with self._open(i) as c:
            s = c.streams.video[0]
            self._threads(s)
            gen = None
            cur = -1  # presentation index of the last frame decoded since the last seek
            floor = 0  # frames before this index (after a seek) may be broken references: ignore them
            for t in targets:
                t = int(t)
                if t in out:
                    continue
                kp = keypts[max(int(np.searchsorted(keypts, pts[t], side="right")) - 1, 0)]
                kidx = pos[int(kp)]
                if gen is None or kidx > cur + 1:
                    c.seek(int(kp), stream=s, backward=True, any_frame=False)
                    gen = c.decode(s)
                    cur, floor = -1, kidx
                for frame in gen:
                    if frame.pts is None or int(frame.pts) not in pos:
                        raise _SeekFailed
                    k = pos[int(frame.pts)]
                    if k < floor:
                        continue
                    cur = k
                    if k in need and k not in out:
                        out[k] = self._convert(frame)
                    if k >= t:
                        break
                if t not in out:
                    raise _SeekFailed
        return out

    def load_frames(self, i: int, indices) -> np.ndarray:
        """uint8 [m, H, W, 3]: frame indices[j] (presentation order) of video i, in the order given."""
        av = require("av", "video data")

        path = self.path(i)
        (n,) = self.src_shape(i)
        idx = _check_indices(f"{path}", indices, n)
        if idx.size == 0:
            h, w = self.frame_size or (0, 0)
            return np.zeros((0, h, w, 3), np.uint8)
        targets = np.unique(idx)
        try:
            frames = None
            if n > self.seek_threshold:
                index = self._pts_index(i)
                if index is not None and len(index[0]) == n:  # else the two numberings could disagree
                    try:
                        frames = self._decode_seeking(i, targets, index)
                    except _SeekFailed:
                        frames = None
            if frames is None:
                frames = self._decode_sequential(i, targets)
        except VideoDecodeError:
            raise
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoDecodeError(f"{path}: cannot decode video ({e})") from e
        missing = [int(t) for t in targets if int(t) not in frames]
        if missing:
            raise VideoDecodeError(
                f"{path}: requested frame {missing[0]} but decoding ended before it although the container "
                f"reports {n} frames (video truncated or corrupt?)"
            )
        return np.stack([frames[int(k)] for k in idx])

    # -- identity ----------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        h = hashlib.sha256()
        for rel in self.ids:  # already sorted
            size = (self.root / rel).stat().st_size if (self.root / rel).exists() else -1
            h.update(rel.encode())
            h.update(b"\0")
            h.update(str(size).encode())
            h.update(b"\n")
        return {"kind": self.kind, "num_samples": len(self), "digest": h.hexdigest()}

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "root": str(self.root.resolve()),
            "num_samples": len(self),
            "frame_size": None if self.frame_size is None else list(self.frame_size),
        }

    def __repr__(self) -> str:
        return f"VideoFolder({str(self.root)!r}, n={len(self)}, frame_size={self.frame_size})"


# --------------------------------------------------------------------------------------
# Pre-extracted features
# --------------------------------------------------------------------------------------


class FeatureH5:
    """HDF5 file of per-frame features: one dataset [n_frames, D] per video, named by video id.

    The file is opened lazily (and reopened in a forked worker), so instances are picklable.
    """

    kind = "feature_h5"

    def __init__(self, path: str | os.PathLike) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"FeatureH5: {self.path} does not exist")
        self._h5 = None
        self._pid = None
        names: list[str] = []
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: dict[str, str] = {}
        try:
            with h5py.File(self.path, "r") as f:
                def visit(name, obj):
                    if isinstance(obj, h5py.Dataset):
                        names.append(name)
                        shapes[name] = tuple(obj.shape)
                        dtypes[name] = obj.dtype.str

                f.visititems(visit)
        except OSError as e:
            raise DataError(f"FeatureH5: cannot read {self.path} as HDF5 ({e})") from e
        self.ids: list[str] = sorted(names)
        if not self.ids:
            raise DataError(f"FeatureH5: {self.path} contains no datasets")
        self._shapes = shapes
        self._dtypes = dtypes
        for name in self.ids:
            shp = shapes[name]
            if len(shp) != 2 or shp[0] < 1:
                raise DataError(f"FeatureH5: {self.path}: dataset {name!r} has shape {shp}; expected [n_frames >= 1, D]")
            if not np.issubdtype(np.dtype(dtypes[name]), np.number):
                raise DataError(f"FeatureH5: {self.path}: dataset {name!r} has non-numeric dtype {dtypes[name]}")
        d0 = shapes[self.ids[0]][1]
        for name in self.ids:
            if shapes[name][1] != d0:
                raise DataError(
                    f"FeatureH5: {self.path}: dataset {name!r} has feature dimension {shapes[name][1]}, "
                    f"but {self.ids[0]!r} has {d0}; all videos must share one dimension"
                )
        self._dim = d0

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self):
        st = self.__dict__.copy()
        st["_h5"] = None
        st["_pid"] = None
        return st

    def _file(self):
        import h5py

        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    @property
    def dim(self) -> int:
        return self._dim

    def check_dim(self, expected: int) -> None:
        if int(expected) != self._dim:
            raise DataError(
                f"FeatureH5: {self.path}: dataset {self.ids[0]!r} has feature dimension {self._dim}, "
                f"but the model expects {int(expected)}"
            )

    def index(self) -> dict[str, int]:
        return video_index(self.ids)

    def src_shape(self, i: int) -> tuple[int]:
        return (self._shapes[self.ids[i]][0],)

    def src_shapes(self, indices=None) -> np.ndarray:
        """int64 [n, 1] frame counts of `indices` (all videos by default)."""
        return src_shapes(self, indices, width=1)

    def load_frames(self, i: int, indices) -> np.ndarray:
        """float32 [m, D]: rows indices[j] of video i's dataset, in the order given."""
        name = self.ids[i]
        (n,) = self.src_shape(i)
        idx = _check_indices(f"{self.path}:{name}", indices, n)
        if idx.size == 0:
            return np.zeros((0, self._dim), np.float32)
        uniq, inv = np.unique(idx, return_inverse=True)
        rows = self._file()[name][uniq]  # h5py needs increasing, unique indices
        return np.asarray(rows, dtype=np.float32)[inv.reshape(-1)]

    def fingerprint(self) -> dict[str, Any]:
        h = hashlib.sha256()
        f = self._file()
        for name in self.ids:
            shp = self._shapes[name]
            h.update(f"{name}\0{shp}\0{self._dtypes[name]}\n".encode())
            ds = f[name]
            for r in sorted({0, shp[0] // 2, shp[0] - 1}):
                h.update(np.ascontiguousarray(ds[r]).tobytes())
        return {"kind": self.kind, "num_samples": len(self), "digest": h.hexdigest()}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path.resolve()), "num_samples": len(self), "dim": self.dim}

    def __repr__(self) -> str:
        return f"FeatureH5({str(self.path)!r}, n={len(self)}, dim={self.dim})"
