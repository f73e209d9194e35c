"""Recordable augmentation: ops whose parameters are sampled once, stored, and replayed.

A view of sample `i` in epoch `e` is a pure function of (source image, params), and the
params are a pure function of (seed, e, i, source shape, num_samples), drawn from the
counter-based RNG in :mod:`labelstore.pipeline.rng`. The teacher samples and records the params; a
student replays the identical pixels from the recorded params with :meth:`Policy.render_batch`.

Ops are small frozen dataclasses:

* ``param_spec()``  -> {param: (numpy dtype string, trailing shape per view)}
* ``sample(seed, epoch, ids, src_shape, num_samples, *, output_size=None)``
  -> {param: ndarray[N, ...]} already cast to the storage dtype
* ``config()``      -> JSON-able constructor arguments (including ``name``)
* ``apply(...)``    -> the pure pixel operation (signature depends on the op's role)

Roles: a *geometry* op (``RandomResizedCrop`` or ``Resize``; exactly one per policy) turns
the uint8 source into a float32 [3, out_H, out_W] view in [0, 1]; *base* ops (flip, jitter,
selfmix) edit that view (flip also works on the source before the geometry op); at most one
*mixing* op (``CutMix`` / ``MixUp``, last in the policy) combines the view with the base view
of a partner sample of the same epoch. Mean/std normalisation happens at the very end
(Policy.to_input, for teacher and students alike).

Every random draw uses stream ``rng.stream_id(f"{op.name}/{param}")`` so ops never share draws.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from labelstore.integrity import view_digest
from labelstore.pipeline import kernels as K
from labelstore.pipeline import rng
from labelstore.errors import ConfigError, DataError, StoreError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "POLICY_NAMES",
    "RENDER_VERSION",
    "SAMPLE_VERSION",
    "ColorJitter",
    "CutMix",
    "HorizontalFlip",
    "MixUp",
    "Op",
    "Policy",
    "Views",
    "RandomResizedCrop",
    "Resize",
    "SelfMix",
    "eval_policy",
    "make_policy",
    "op_from_json",
    "register_op",
    "registered_ops",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Bump when the pixel semantics of render_batch() change: views recorded under another render
# version cannot be replayed bit-identically.
RENDER_VERSION = 3  # 2: uint8 views from the integer kernels of pipeline/kernels.py; 3: vertical pass first

# Bump when what Policy.sample draws changes (pipeline/rng.py or any built-in op's sample): a store whose
# parameters are derived rather than stored (the default) records it, and replay refuses another version.
SAMPLE_VERSION = 1

_MAX_SIDE = 65535  # boxes are stored as uint16
_GAMMA_ATTEMPTS = 16  # Marsaglia-Tsang attempts per gamma draw (P(all rejected) < 1e-20)


# --------------------------------------------------------------------------- helpers


def _pair(v, what: str) -> tuple[float, float]:
    t = tuple(float(x) for x in v)
    if len(t) != 2:
        raise ConfigError(f"{what} must have 2 values, got {v!r}")
    return t


def _check_range(scale: tuple[float, float], ratio: tuple[float, float], who: str) -> None:
    if not (0.0 < scale[0] <= scale[1] <= 1.0):
        raise ConfigError(f"{who}: scale must satisfy 0 < lo <= hi <= 1, got {scale}")
    if not (0.0 < ratio[0] <= ratio[1]):
        raise ConfigError(f"{who}: ratio must satisfy 0 < lo <= hi, got {ratio}")


def _as_ids(ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ConfigError(f"ids must be 1-D, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ConfigError(f"ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ConfigError("ids must be >= 0")
    return ids


def _as_shapes(src_shape, n: int, who: str) -> np.ndarray:
    s = np.asarray(src_shape, dtype=np.int64).reshape(-1, 2) if np.size(src_shape) else np.zeros((0, 2), np.int64)
    if s.shape[0] != n:
        raise ConfigError(f"src_shape has {s.shape[0]} rows for {n} ids")
    if n and s.min() < 0:
        raise DataError(f"{who}: negative source size {s[s.min(1) < 0][0].tolist()}")
    if n and s.max() > _MAX_SIDE:
        bad = s[s.max(1) > _MAX_SIDE][0].tolist()
        raise DataError(f"{who}: source size {bad} too large: H and W must be < 65536 (boxes are uint16)")
    return s


def _out_size(output_size, who: str) -> tuple[int, int]:
    if output_size is None:
        raise ConfigError(f"{who}: sampling needs the policy output_size (call Policy.sample)")
    oh, ow = (int(v) for v in output_size)
    return oh, ow


def _rrc_boxes(u: np.ndarray, H: np.ndarray, W: np.ndarray, scale, ratio) -> np.ndarray:
    """torchvision RandomResizedCrop.get_params, vectorised over N.

    u: [N, 22] uniforms (10 areas, 10 log-ratios, 2 positions); H, W: int64 [N].
    Returns int64 [N, 4] boxes (y, x, h, w); an empty source (H or W = 0, e.g. an image that
    failed to decode and is skipped) gets the empty box (0, 0, 0, 0).
    """
    n = u.shape[0]
    empty = (H < 1) | (W < 1)
    H, W = np.where(empty, 1, H), np.where(empty, 1, W)
    Hf = H.astype(np.float64)[:, None]
    Wf = W.astype(np.float64)[:, None]
    target = Hf * Wf * (scale[0] + (scale[1] - scale[0]) * u[:, 0:10])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    ar = np.exp(lo + (hi - lo) * u[:, 10:20])
    w = np.round(np.sqrt(target * ar)).astype(np.int64)
    h = np.round(np.sqrt(target / ar)).astype(np.int64)
    ok = (w > 0) & (w <= W[:, None]) & (h > 0) & (h <= H[:, None])
    found = ok.any(axis=1)
    first = ok.argmax(axis=1)
    rows = np.arange(n)
    hs, ws = h[rows, first], w[rows, first]
    ys = np.minimum((u[:, 20] * (H - hs + 1)).astype(np.int64), H - hs)
    xs = np.minimum((u[:, 21] * (W - ws + 1)).astype(np.int64), W - ws)
    # fallback: whole image, clamped to the ratio range, centred
    in_ratio = W / H
    rmin, rmax = min(ratio), max(ratio)
    fw = np.where(in_ratio > rmax, np.round(H * rmax).astype(np.int64), W)
    fh = np.where(in_ratio < rmin, np.round(W / rmin).astype(np.int64), H)
    fw = np.clip(fw, 1, W)
    fh = np.clip(fh, 1, H)
    fy, fx = (H - fh) // 2, (W - fw) // 2
    box = np.stack(
        [np.where(found, ys, fy), np.where(found, xs, fx), np.where(found, hs, fh), np.where(found, ws, fw)], axis=1
    )
    box[empty] = 0
    return box


def _gamma(u: np.ndarray, k: float) -> np.ndarray:
    """Gamma(k, 1) from uniforms u [N, 3*A + 1] (Marsaglia-Tsang, fixed attempt count)."""
    a = _GAMMA_ATTEMPTS
    kk = k + 1.0 if k < 1.0 else k
    d = kk - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    u1, u2, u3 = u[:, 0:a], u[:, a : 2 * a], u[:, 2 * a : 3 * a]
    x = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * math.pi * u2)  # standard normal (Box-Muller)
    v = (1.0 + c * x) ** 3
    vs = np.where(v > 0, v, 1.0)
    accept = (v > 0) & (np.log1p(-u3) < 0.5 * x * x + d - d * vs + d * np.log(vs))
    first = accept.argmax(axis=1)
    g = d * vs[np.arange(u.shape[0]), first]
    g = np.where(accept.any(axis=1), g, d)
    if k < 1.0:
        g = g * (1.0 - u[:, 3 * a]) ** (1.0 / k)
    return g


def _beta(seed: int, epoch: int, ids: np.ndarray, stream: int, alpha: float) -> np.ndarray:
    """Beta(alpha, alpha) [N] float64, a pure function of (seed, epoch, id, stream)."""
    m = 3 * _GAMMA_ATTEMPTS + 1
    u = rng.uniform(seed, epoch, ids, stream, 2 * m)
    g1, g2 = _gamma(u[:, :m], alpha), _gamma(u[:, m:], alpha)
    return g1 / (g1 + g2)


def _partners(seed: int, epoch: int, ids: np.ndarray, stream: int, num_samples: int) -> np.ndarray:
    """Uniform over the other num_samples - 1 samples (int64 [N])."""
    if num_samples < 2:
        return np.full(ids.shape, -1, np.int64)
    if ids.size and ids.max() >= num_samples:
        raise ConfigError(f"ids must be < num_samples={num_samples} for mixing ops, got {int(ids.max())}")
    r = rng.randint(seed, epoch, ids, stream, num_samples - 1)[:, 0]
    return r + (r >= ids)


def _check_box(box, src_hw, who: str) -> tuple[int, int, int, int]:
    y, x, h, w = (int(v) for v in box)
    H, W = (int(v) for v in src_hw)
    if h < 1 or w < 1 or y < 0 or x < 0 or y + h > H or x + w > W:
        raise DataError(f"{who}: box (y={y}, x={x}, h={h}, w={w}) is not inside the {H}x{W} source")
    return y, x, h, w


# --------------------------------------------------------------------------- ops


@dataclass(frozen=True)
class Op:
    """Base class. Subclasses set GEOMETRY / MIXING and implement the interface."""

    GEOMETRY: ClassVar[bool] = False
    MIXING: ClassVar[bool] = False

    def param_spec(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {}

    def sample(self, seed, epoch, ids, src_shape, num_samples, *, output_size=None) -> dict[str, np.ndarray]:
        return {}

    def config(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def _stream(self, param: str) -> int:
        return rng.stream_id(f"{self.name}/{param}")


@dataclass(frozen=True)
class Resize(Op):
    """Deterministic resize of the whole image to the output size (no params).

    keep_aspect=True first takes the largest centred crop with the output aspect ratio.
    """

    keep_aspect: bool = False
    name: str = "resize"
    GEOMETRY: ClassVar[bool] = True

    def box(self, params: dict, src_hw, output_size) -> tuple[int, int, int, int]:
        """(y, x, h, w) of the source that is resized to the output."""
        (H, W), (oh, ow) = src_hw, output_size
        if not self.keep_aspect:
            return 0, 0, H, W
        if W * oh > H * ow:  # too wide
            w = max(1, round(H * ow / oh))
            return 0, (W - w) // 2, H, w
        h = max(1, round(W * oh / ow))
        return (H - h) // 2, 0, h, W


@dataclass(frozen=True)
class RandomResizedCrop(Op):
    """torchvision's RandomResizedCrop; param box = (y, x, h, w) in source pixels."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    name: str = "rrc"
    GEOMETRY: ClassVar[bool] = True

    def __post_init__(self):
        object.__setattr__(self, "scale", _pair(self.scale, "scale"))
        object.__setattr__(self, "ratio", _pair(self.ratio, "ratio"))
        _check_range(self.scale, self.ratio, self.name)

    def param_spec(self):
        return {"box": ("uint16", (4,))}

    def sample(self, seed, epoch, ids, src_shape, num_samples, *, output_size=None):
        ids = _as_ids(ids)
        s = _as_shapes(src_shape, len(ids), self.name)
        u = rng.uniform(seed, epoch, ids, self._stream("box"), 22)
        return {"box": _rrc_boxes(u, s[:, 0], s[:, 1], self.scale, self.ratio).astype(np.uint16)}

    def box(self, params: dict, src_hw, output_size) -> tuple[int, int, int, int]:
        return _check_box(params["box"], src_hw, self.name)


@dataclass(frozen=True)
class HorizontalFlip(Op):
    p: float = 0.5
    name: str = "flip"

    def __post_init__(self):
        if not 0.0 <= float(self.p) <= 1.0:
            raise ConfigError(f"{self.name}: p must be in [0, 1], got {self.p}")
        object.__setattr__(self, "p", float(self.p))

    def param_spec(self):
        return {"flag": ("bool", ())}

    def sample(self, seed, epoch, ids, src_shape, num_samples, *, output_size=None):
        ids = _as_ids(ids)
        return {"flag": rng.uniform(seed, epoch, ids, self._stream("flag"))[:, 0] < self.p}

    def program(self, params: dict, src_hw, output_size) -> list[tuple]:
        return [(K.OP_FLIP,)] if bool(params["flag"]) else []


@dataclass(frozen=True)
class ColorJitter(Op):
    """Brightness, contrast, saturation (fixed order); factors uniform in [1-x, 1+x]."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    name: str = "jitter"

    def __post_init__(self):
        for k in ("brightness", "contrast", "saturation"):
            v = float(getattr(self, k))
            if v < 0:
                raise ConfigError(f"{self.name}: {k} must be >= 0, got {v}")
            object.__setattr__(self, k, v)

    def param_spec(self):
        return {"factors": ("float16", (3,))}

    def sample(self, seed, epoch, ids, src_shape, num_samples, *, output_size=None):
        ids = _as_ids(ids)
        u = rng.uniform(seed, epoch, ids, self._stream("factors"), 3)
        x = np.array([self.brightness, self.contrast, self.saturation])
        lo = np.maximum(1.0 - x, 0.0)
        f = lo + (1.0 + x - lo) * u
        return {"factors": f.astype(np.float16)}

    def program(self, params: dict, src_hw, output_size) -> list[tuple]:
        """Factors as Q11 integers (exact for float16 factors < 32), see pipeline/kernels.py."""
        q = [int(np.float64(v) * 2048) for v in np.asarray(params["factors"], dtype=np.float16)]
        return [] if q == [2048, 2048, 2048] else [(K.OP_JITTER, *q)]


@dataclass(frozen=True)
class SelfMix(Op):
    """FerKD-style self-mix: paste a second crop of the same image into the view.

    box2: (y, x, h, w) second crop in source pixels (RandomResizedCrop algorithm with
    scale/ratio); paste: (y, x, h, w) region in output pixels (same algorithm on the output
    size with paste_scale/ratio); the second crop is resized to (h, w) and pasted there.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p: float = 0.5
    paste_scale: tuple[float, float] = (0.1, 0.5)
    name: str = "selfmix"

    def __post_init__(self):
        object.__setattr__(self, "scale", _pair(self.scale, "scale"))
        object.__setattr__(self, "ratio", _pair(self.ratio, "ratio"))
        object.__setattr__(self, "paste_scale", _pair(self.paste_scale, "paste_scale"))
        _check_range(self.scale, self.ratio, self.name)
        _check_range(self.paste_scale, self.ratio, self.name)
        if not 0.0 <= float(self.p) <= 1.0:
            raise ConfigError(f"{self.name}: p must be in [0, 1], got {self.p}")
        object.__setattr__(self, "p", float(self.p))

    def param_spec(self):
        return {"box2": ("uint16", (4,)), "paste": ("uint16", (4,)), "apply": ("bool", ())}

    def sample(self, seed, epoch, ids, src_shape, num_samples, *, output_size=None):
        ids = _as_ids(ids)
        s = _as_shapes(src_shape, len(ids), self.name)
        oh, ow = _out_size(output_size, self.name)
        n = len(ids)
        on = rng.uniform(seed, epoch, ids, self._stream("apply"))[:, 0] < self.p
        u = rng.uniform(seed, epoch, ids, self._stream("box2"), 22)
        box2 = _rrc_boxes(u, s[:, 0], s[:, 1], self.scale, self.ratio)
        u = rng.uniform(seed, epoch, ids, self._stream("paste"), 22)
        paste = _rrc_boxes(u, np.full(n, oh, np.int64), np.full(n, ow, np.int64), self.paste_scale, self.ratio)
        box2[~on] = 0
        paste[~on] = 0
        return {"box2": box2.astype(np.uint16), "paste": paste.astype(np.uint16), "apply": on}

    def program(self, params: dict, src_hw, output_size) -> list[tuple]:
        if not bool(params["apply"]):
            return []
        y, x, h, w = (int(v) for v in params["paste"])
        if h < 1 or w < 1 or y + h > output_size[0] or x + w > output_size[1]:
            raise DataError(f"{self.name}: paste box {(y, x, h, w)} is not inside the {tuple(output_size)} view")
        return [(K.OP_PASTE, *_check_box(params["box2"], src_hw, self.name), y, x, h, w)]


class _Mixing(Op):
    """Shared by the mixing ops: a partner sample of the same epoch, Beta(alpha, alpha), probability p."""

    MIXING: ClassVar[bool] = True

    def __post_init__(self):
        if not float(self.alpha) > 0:
            raise ConfigError(f"{self.name}: alpha must be > 0, got {self.alpha}")
        if not 0.0 <= float(self.p) <= 1.0:
            raise ConfigError(f"{self.name}: p must be in [0, 1], got {self.p}")
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "p", float(self.p))


@dataclass(frozen=True)
class CutMix(_Mixing):
    """Paste a box of the partner's view into the own view (box in output pixels).

    lam ~ Beta(alpha, alpha) sets the box size (timm's rand_bbox); the stored lam is the
    fraction of the own view that is kept, 1 - box area / output area.
    """

    alpha: float = 1.0
    p: float = 1.0
    name: str = "cutmix"


    def param_spec(self):
        return {"partner": ("int32", ()), "box": ("uint16", (4,)), "lam": ("float16", ())}

    def sample(self, seed, epoch, ids, src_shape, num_samples, *, output_size=None):
        ids = _as_ids(ids)
        oh, ow = _out_size(output_size, self.name)
        partner = _partners(seed, epoch, ids, self._stream("partner"), num_samples)
        on = (rng.uniform(seed, epoch, ids, self._stream("apply"))[:, 0] < self.p) & (partner >= 0)
        lam = _beta(seed, epoch, ids, self._stream("lam"), self.alpha)
        cut = np.sqrt(1.0 - lam)
        ch, cw = (oh * cut).astype(np.int64), (ow * cut).astype(np.int64)
        c = rng.randint(seed, epoch, ids, self._stream("box"), np.array([[oh, ow]]), 2)
        y1, y2 = np.clip(c[:, 0] - ch // 2, 0, oh), np.clip(c[:, 0] + ch // 2, 0, oh)
        x1, x2 = np.clip(c[:, 1] - cw // 2, 0, ow), np.clip(c[:, 1] + cw // 2, 0, ow)
        box = np.stack([y1, x1, y2 - y1, x2 - x1], axis=1)
        box[~on] = 0
        kept = 1.0 - box[:, 2] * box[:, 3] / float(oh * ow)
        return {
            "partner": np.where(on, partner, -1).astype(np.int32),
            "box": box.astype(np.uint16),
            "lam": kept.astype(np.float16),
        }

    def weights(self, params: dict, output_size) -> np.ndarray:
        """float64 [N] kept fraction, exact from the box (not the float16-rounded lam)."""
        box = np.asarray(params["box"]).astype(np.int64).reshape(-1, 4)
        kept = 1.0 - box[:, 2] * box[:, 3] / float(output_size[0] * output_size[1])
        return np.where(np.asarray(params["partner"]).reshape(-1) < 0, 1.0, kept)


@dataclass(frozen=True)
class MixUp(_Mixing):
    """lam * own + (1 - lam) * partner, lam ~ Beta(alpha, alpha) stored as float16."""

    alpha: float = 0.2
    p: float = 1.0
    name: str = "mixup"


    def param_spec(self):
        return {"partner": ("int32", ()), "lam": ("float16", ())}

    def sample(self, seed, epoch, ids, src_shape, num_samples, *, output_size=None):
        ids = _as_ids(ids)
        partner = _partners(seed, epoch, ids, self._stream("partner"), num_samples)
        on = (rng.uniform(seed, epoch, ids, self._stream("apply"))[:, 0] < self.p) & (partner >= 0)
        lam = np.where(on, _beta(seed, epoch, ids, self._stream("lam"), self.alpha), 1.0)
        return {"partner": np.where(on, partner, -1).astype(np.int32), "lam": lam.astype(np.float16)}

    def weights(self, params: dict, output_size) -> np.ndarray:
        """float64 [N] own weight: exactly the float32 lam used by apply."""
        lam = np.asarray(params["lam"]).astype(np.float32).astype(np.float64).reshape(-1)
        return np.where(np.asarray(params["partner"]).reshape(-1) < 0, 1.0, lam)


_OP_TYPES: dict[str, type[Op]] = {}


def register_op(cls: type) -> type:
    """Class decorator: make a recordable Op subclass replayable (Policy.from_json finds it by class name).

    A user's op is a frozen dataclass subclass of Op with a unique `name` field, `param_spec()`,
    `sample(...)` (see the module docstring) and `apply_u8(view, params)`, which edits one
    uint8 [3, H, W] view in place, a pure function of (view, params). User ops run after the
    built-in base ops (and before a mixing op), per view, in policy order. Register the class
    again (import its module) in every process that opens a store using it.
    """
    if not (isinstance(cls, type) and issubclass(cls, Op)):
        raise TypeError(f"register_op needs an Op subclass, got {cls!r}")
    have = _OP_TYPES.get(cls.__name__)
    if have is not None and have is not cls and (have.__module__, have.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ConfigError(f"op type {cls.__name__!r} is already registered by {have.__module__}")
    _OP_TYPES[cls.__name__] = cls
    return cls


for _cls in (Resize, RandomResizedCrop, HorizontalFlip, ColorJitter, SelfMix, CutMix, MixUp):
    register_op(_cls)


def registered_ops() -> dict[str, type[Op]]:
    """{class name: class} of every registered op (the built-in ones and register_op's)."""
    return dict(_OP_TYPES)


def op_from_json(d: dict) -> Op:
    cls = _OP_TYPES.get(d.get("type"))
    if cls is None:
        raise ConfigError(f"unknown op type {d.get('type')!r}: a user op must be registered with "
                          f"labelstore.pipeline.augment.register_op (import the module defining it) before the "
                          f"policy is loaded; registered: {sorted(_OP_TYPES)}")
    return cls(**d.get("config", {}))


def _is_user_op(op: Op) -> bool:
    return hasattr(op, "apply_u8")


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class Policy:
    ops: tuple
    output_size: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    version: int = 1
    _mix: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        ops = tuple(self.ops)
        object.__setattr__(self, "ops", ops)
        oh, ow = (int(v) for v in self.output_size)
        if oh < 1 or ow < 1:
            raise ConfigError(f"output_size must be positive, got {self.output_size}")
        object.__setattr__(self, "output_size", (oh, ow))
        mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(mean) != 3 or len(std) != 3 or not min(std) > 0 or not all(math.isfinite(v) for v in mean + std):
            raise ConfigError(f"mean/std must be 3 values with std > 0, got {self.mean}, {self.std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "version", int(self.version))
        for op in ops:
            if not isinstance(op, Op):
                raise ConfigError(f"not an augmentation op: {op!r}")
            if "/" in op.name or not op.name:
                raise ConfigError(f"op name {op.name!r} must be non-empty without '/'")
        names = [op.name for op in ops]
        if len(set(names)) != len(names):
            raise ConfigError(f"op names must be unique, got {names}")
        geo = [i for i, op in enumerate(ops) if op.GEOMETRY]
        if len(geo) != 1:
            raise ConfigError(f"a policy needs exactly one geometry op (RandomResizedCrop or Resize), got {names}")
        mix = [i for i, op in enumerate(ops) if op.MIXING]
        if len(mix) > 1 or (mix and mix[0] != len(ops) - 1):
            raise ConfigError(f"at most one mixing op (CutMix/MixUp), and it must be last; got {names}")
        user = [i for i, op in enumerate(ops) if _is_user_op(op)]
        if user and any(not ops[i].MIXING and not _is_user_op(ops[i]) for i in range(user[0], len(ops))):
            raise ConfigError(f"user ops (apply_u8) must follow every built-in base op; got {names}")
        if user and user[0] < geo[0]:
            raise ConfigError(f"user ops must come after the geometry op; got {names}")
        for i, op in enumerate(ops):
            if isinstance(op, SelfMix) and i < geo[0]:
                raise ConfigError(f"{op.name} must come after the geometry op")
        object.__setattr__(self, "_mix", ops[mix[0]] if mix else None)

    # ---- parameters

    def param_spec(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {f"{op.name}/{k}": v for op in self.ops for k, v in op.param_spec().items()}

    def sample(self, seed: int, epoch: int, ids, src_shape, num_samples: int) -> dict[str, np.ndarray]:
        ids = _as_ids(ids)
        src_shape = np.asarray(src_shape, dtype=np.int64).reshape(-1, 2)
        if len(src_shape) != len(ids):
            raise ConfigError(f"src_shape has {len(src_shape)} rows for {len(ids)} ids")
        out = {}
        for op in self.ops:
            got = op.sample(seed, epoch, ids, src_shape, num_samples, output_size=self.output_size)
            for k, (dt, shape) in op.param_spec().items():
                v = got[k]
                assert v.dtype == np.dtype(dt) and v.shape == (len(ids), *shape), (op.name, k, v.dtype, v.shape)
                out[f"{op.name}/{k}"] = v
        return out

    def unmix(self, params: dict, drop: np.ndarray) -> dict:
        """params with the mixing partner set to -1 where drop [N] is True (a partner that could not be
        decoded); the other params are kept as drawn, so mix weights become 1 there."""
        if self._mix is not None and np.any(drop):
            key = f"{self._mix.name}/partner"
            params = {**params, key: np.where(drop, -1, params[key]).astype(params[key].dtype)}
        return params

    def partners(self, params: dict, n: int | None = None) -> np.ndarray:
        """int64 [N]: the partner sample of each view (-1 where no other sample is needed)."""
        if self._mix is not None:
            return np.asarray(params[f"{self._mix.name}/partner"]).astype(np.int64).reshape(-1)
        if n is None:
            lens = {len(v) for v in params.values()}
            if len(lens) != 1:
                raise ConfigError("cannot infer the number of views from params; pass n=")
            n = lens.pop()
        return np.full(int(n), -1, np.int64)

    def mix_weights(self, row: dict) -> float:
        """Weight of the own sample in the view (1.0 unmixed; the kept fraction / lam when mixed)."""
        if self._mix is None:
            return 1.0
        return float(self._mix.weights(self._op_params(self._mix, row), self.output_size)[0])

    def mix_weight_array(self, params: dict, n: int | None = None) -> np.ndarray:
        """float64 [N]: mix_weights for a batch of params (vectorised)."""
        if self._mix is None:
            return np.ones(len(self.partners(params, n)), np.float64)
        p = {k: np.asarray(params[f"{self._mix.name}/{k}"]) for k in self._mix.param_spec()}
        return self._mix.weights(p, self.output_size)

    # ---- rendering

    def _op_params(self, op: Op, row: dict) -> dict:
        out = {}
        for k, (dt, shape) in op.param_spec().items():
            key = f"{op.name}/{k}"
            if key not in row:
                raise StoreError(f"{op.name}: row is missing param {key!r}")
            v = np.asarray(row[key])
            if v.shape != shape:
                raise StoreError(f"{op.name}: param {key!r} has shape {v.shape}, expected {shape}")
            out[k] = v
        return out

    def _program(self, src_hw, row: dict) -> list[tuple]:
        """Kernel program of the base (unmixed) view: a flip before the geometry op mirrors its box."""
        prog, pre_flip, geo_done = [], False, False
        for op in self.ops:
            if op.MIXING or _is_user_op(op):
                continue
            p = self._op_params(op, row)
            if op.GEOMETRY:
                y, x, h, w = op.box(p, src_hw, self.output_size)
                if pre_flip:
                    x = int(src_hw[1]) - x - w
                prog.append((K.OP_RESIZE, y, x, h, w, int(pre_flip)))
                geo_done = True
            elif isinstance(op, HorizontalFlip) and not geo_done:
                pre_flip ^= bool(p["flag"])
            elif isinstance(op, HorizontalFlip) and prog and prog[-1][0] == K.OP_RESIZE:
                if bool(p["flag"]):  # folded into the resize's taps: it writes mirrored columns
                    prog[-1] = (*prog[-1][:5], 1 - prog[-1][5])
            else:
                prog += op.program(p, src_hw, self.output_size)
        return prog

    def plan(self, shapes: list, rows: dict, partner_shapes=None, partner_rows=None):
        """The kernel programs of a batch: (progs int64 [V, n_ops, 9], rowdicts, mixed int64 [M]).

        shapes: N source (H, W); views 0..N-1 are the batch's own, views N.. the partner views of
        the mixed views `mixed` (in that order), whose sources are partner_images[mixed].
        """
        n = len(shapes)
        rowdicts = [{k: v[i] for k, v in rows.items()} for i in range(n)]
        progs = [self._program(hw, r) for hw, r in zip(shapes, rowdicts)]
        mixed = np.zeros(0, np.int64)
        if self._mix is not None:
            mixed = np.nonzero(self.partners(rows, n) >= 0)[0]
            for i in mixed.tolist():
                if partner_shapes is None or partner_rows is None or partner_shapes[i] is None:
                    raise ConfigError(f"{self._mix.name}: view {i} is mixed with another sample "
                                     "but its partner image/row were not given")
                rowdicts.append({k: v[i] for k, v in partner_rows.items()})
                progs.append(self._program(partner_shapes[i], rowdicts[-1]))
        prog = np.zeros((len(progs), max([len(p) for p in progs], default=0) + 1, K.OP_WIDTH), np.int64)
        for b, p in enumerate(progs):
            for k, op in enumerate(p):
                prog[b, k, : len(op)] = op
        return prog, rowdicts, mixed

    def render_batch(self, images: list, rows: dict, partner_images=None, partner_rows=None,
                     parallel: bool = True, empty=np.empty) -> "Views":
        """uint8 views of a batch, rendered in parallel without the GIL (pipeline/kernels.py).

        images: N uint8 [H, W, 3] sources; rows: {param key: array [N, ...]} aligned with images;
        partner_images / partner_rows: the partner sample's source and params per view (None
        where a view is not mixed). CutMix is pasted here; MixUp is blended later by Policy.to_input.
        The same bytes on any device: pipeline/render_torch.py. parallel=False renders on the
        calling thread only (for callers that render several batches on their own threads).
        empty(shape, dtype): the array the views are rendered into (the teacher stage's
        pipeline/recycle.Recycler); every view's geometry op writes all of its pixels.
        """
        n = len(images)
        H, W = self.output_size
        srcs = [_check_image(im) for im in images]
        psrcs = [None if im is None else _check_image(im) for im in partner_images] if partner_images is not None else None
        prog, rowdicts, mixed = self.plan([im.shape[:2] for im in srcs], rows,
                                          [None if im is None else im.shape[:2] for im in psrcs] if psrcs else None,
                                          partner_rows)
        srcs += [psrcs[i] for i in mixed.tolist()]
        out = empty((len(srcs), 3, H, W), np.uint8)
        if len(srcs):
            K.render_views(srcs, np.arange(len(srcs), dtype=np.int64), prog, out, parallel)
        for op in self.ops:
            if _is_user_op(op):
                for b, r in enumerate(rowdicts):
                    op.apply_u8(out[b], self._op_params(op, r))
        x = out[:n]
        if isinstance(self._mix, CutMix):
            partner = np.zeros_like(x)
            partner[mixed] = out[n:]
            K.paste_boxes(x, partner, self.cutmix_boxes(rows, n))
        if isinstance(self._mix, MixUp):
            partner = np.zeros_like(x)
            partner[mixed] = out[n:]
            lam = self.mix_weight_array(rows, n).astype(np.float32)
            return Views(torch.from_numpy(x), torch.from_numpy(partner), torch.from_numpy(lam))
        return Views(torch.from_numpy(x), None, None)

    def cutmix_boxes(self, rows: dict, n: int) -> np.ndarray:
        """int64 [N, 4] CutMix boxes (y, x, h, w) in output pixels; empty where a view is not mixed."""
        boxes = np.asarray(rows[f"{self._mix.name}/box"]).astype(np.int64).reshape(n, 4)
        boxes[self.partners(rows, n) < 0] = 0
        return boxes

    def to_input(self, views: "Views", device=None, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 views [B, 3, H, W] -> float32 model input on `device`: the one input convention of
        teacher and students alike (a student's policy is the store's, so are its mean and std).

            v   = lam * x + (1 - lam) * partner        (MixUp; v = x without a partner)
            out = (v / 255 - mean) / std = (v - 255 mean) / (255 std)    (per RGB channel)

        A replay batch (x, t) is `Views.from_batch(x, t)`; device None keeps the views' device.
        out: a float32 tensor of x's shape on `device` to write into (the teacher stage on a CPU
        reuses its memory: pipeline/recycle.py); None: a new one.
        """
        x, partner, lam = views.x, views.partner, views.lam
        device = device if device is not None else x.device
        v = x.to(device, non_blocking=True)
        v = out.copy_(v) if out is not None else v.float()
        if partner is not None:
            w = lam.to(device, non_blocking=True).float().view(-1, 1, 1, 1)
            v = w * v + (1.0 - w) * partner.to(device, non_blocking=True).float()
        m = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
        s = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
        return v.sub_(m).div_(s)  # in place: the same values as (v - m) / s, one allocation

    # ---- serialisation

    def to_json(self) -> dict:
        return {
            "ops": [{"type": type(op).__name__, "config": op.config()} for op in self.ops],
            "output_size": list(self.output_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "version": self.version,
            "render_version": RENDER_VERSION,
            "sample_version": SAMPLE_VERSION,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Policy":
        rv = int(d.get("render_version", RENDER_VERSION))
        if rv != RENDER_VERSION:
            raise StoreError(f"policy was recorded with render_version {rv}; this code renders version {RENDER_VERSION}")
        return cls(
            ops=tuple(op_from_json(o) for o in d["ops"]),
            output_size=tuple(d["output_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            version=int(d.get("version", 1)),
        )


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise DataError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"image must be [H, W, 3] uint8, got shape {image.shape}")
    return image


@dataclass
class Views:
    """A rendered batch: x uint8 [B, 3, H, W]; for MixUp also partner uint8 [B, 3, H, W] (zeros
    where unmixed) and lam float32 [B] (the own view's weight, 1 where unmixed)."""

    x: torch.Tensor
    partner: torch.Tensor | None = None
    lam: torch.Tensor | None = None

    @classmethod
    def from_batch(cls, x: torch.Tensor, t: dict) -> "Views":
        """The Views of a replay batch (x, t) of ReplayLoader / ReplayDataset (MixUp: t's view_partner, view_lam)."""
        return cls(x, t.get("view_partner"), t.get("view_lam"))

    def digests(self) -> np.ndarray:
        """uint32 [B] crc32c of the uint8 view; a mixed MixUp view: of own bytes + partner bytes + lam float32."""
        x = self.x.cpu().numpy()
        if self.partner is None:
            return np.array([view_digest(v) for v in x], np.uint32)
        p, lam = self.partner.cpu().numpy(), self.lam.cpu().numpy()
        return np.array([view_digest(x[i]) if lam[i] == 1.0 else
                         view_digest(np.concatenate([x[i].ravel(), p[i].ravel(), lam[i : i + 1].view(np.uint8)]))
                         for i in range(len(x))], np.uint32)


POLICY_NAMES = ("none", "crop-flip", "crop-flip-jitter", "cutmix", "mixup", "selfmix")


def make_policy(name: str, output_size=(32, 32), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                crop_scale: tuple[float, float] = (0.08, 1.0)) -> Policy:
    """A named policy; crop_scale is the random-resized-crop area range (fraction of the image)."""
    base = (RandomResizedCrop(scale=tuple(crop_scale)), HorizontalFlip())
    ops = {
        "none": (Resize(),),
        "crop-flip": base,
        "crop-flip-jitter": base + (ColorJitter(),),
        "cutmix": base + (CutMix(),),
        "mixup": base + (MixUp(),),
        "selfmix": base + (SelfMix(),),
    }.get(name)
    if ops is None:
        raise ConfigError(f"unknown policy {name!r}; choose one of {POLICY_NAMES}")
    return Policy(ops=ops, output_size=tuple(output_size), mean=tuple(mean), std=tuple(std))


def eval_policy(output_size=(32, 32), mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Policy:
    return make_policy("none", output_size, mean, std)
