"""Procedurally generated video datasets, written as real video files with PyAV.

* `make_retrieval_dataset`: clips of two coloured shapes that enter, cross the frame (or pop in
  and stay still) and leave, each in its own frame range, with captions naming one object
  ("a red circle moves left") or both ("..., then ..."). Each caption records the frames
  its object(s) are visible in ("frames_visible"), to check a teacher's frame scores.
* `make_videoqa_dataset`: clips of three shapes (four with vocab="large": 400 phrase answers) with questions that often have several
  correct answers ("what colour is the shape that moves left?" with two such shapes); the
  training annotation ("answer") is one of them drawn at random, "answers" is the full set.
* `make_feature_h5`: random per-frame features for `FeatureH5` tests.

Generation is byte-deterministic for a seed, across processes and machines with the same PyAV
build: every video is drawn from its own `np.random.default_rng([seed, split, index])` and
written by `write_video` (integer RGB -> YUV, single-threaded libx264, bit-exact muxer).
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from labelstore.errors import ConfigError
from labelstore.extras import require

__all__ = [
    "COLOURS",
    "SHAPES",
    "MOTIONS",
    "make_retrieval_dataset",
    "make_videoqa_dataset",
    "large_answer_vocabulary",
    "make_feature_h5",
    "write_video",
    "rgb_to_yuv",
    "video_codec",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 200, 60),
    "blue": (45, 85, 240),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "static")
SIZES = ("small", "big")
COUNT_WORDS = ("zero", "one", "two", "three", "four")

_SPLIT_IDS = {"train": 1, "test": 2}
_FPS = 8

# --------------------------------------------------------------------------------------
# Video writing
# --------------------------------------------------------------------------------------

_CODEC: str | None = None


def video_codec() -> str:
    """'libx264' if PyAV can encode H.264 here, else 'mpeg4' (probed once)."""
    global _CODEC
    if _CODEC is None:
        import io

        av = require("av", "writing video files")

        try:
            buf = io.BytesIO()
            with av.open(buf, "w", format="mp4") as c:
                s = c.add_stream("libx264", rate=_FPS)
                s.width, s.height, s.pix_fmt = 16, 16, "yuv420p"
                for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")):
                    c.mux(p)
                for p in s.encode():
                    c.mux(p)
            _CODEC = "libx264"
        except Exception:  # codec missing or unusable in this FFmpeg build
            _CODEC = "mpeg4"
    return _CODEC


def rgb_to_yuv(frames: np.ndarray, chroma: str = "444") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 [T, H, W, 3] RGB -> uint8 (Y [T, H, W], U, V), BT.601 limited range, in exact integers:

        Y = ((66 R + 129 G + 25 B + 128) >> 8) + 16
        U = ((-38 R - 74 G + 112 B + 128) >> 8) + 128
        V = ((112 R - 94 G - 18 B + 128) >> 8) + 128

    U, V are [T, H, W] for chroma="444"; for "420" each is the rounded mean of its 2x2 block,
    (a + b + c + d + 2) >> 2, [T, H/2, W/2]. The same bytes on every machine and in every
    process, whatever SIMD paths and slice threads libswscale would pick at run time.
    """
    rgb = frames.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
    v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128
    if chroma == "420":
        u, v = ((c[:, 0::2, 0::2] + c[:, 0::2, 1::2] + c[:, 1::2, 0::2] + c[:, 1::2, 1::2] + 2) >> 2 for c in (u, v))
    return y.astype(np.uint8), u.astype(np.uint8), v.astype(np.uint8)


# libx264 options. mbtree=0: x264's macroblock-tree rate control reads uninitialised lookahead
# memory on frames this small, so with it the bitstream (and the decoded pixels) depend on what the
# heap held before (seen as 9 of 48 test videos changing under MALLOC_PERTURB_). One thread of
# every kind (frame, slice, lookahead) so nothing depends on scheduling either.
_X264_OPTIONS = {"crf": "12", "preset": "veryfast", "threads": "1",
                 "x264-params": "mbtree=0:threads=1:lookahead-threads=1:sliced-threads=0:sync-lookahead=0"}


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = _FPS, codec: str | None = None, gop: int | None = None) -> str:
    """Write uint8 [T, H, W, 3] RGB frames (H, W even) to an .mp4; returns the codec used.

    Byte-deterministic: RGB -> YUV by `rgb_to_yuv` (yuv444p for libx264, yuv420p for mpeg4), so
    the encoder gets frames in its own pixel format and libswscale never runs; single-threaded
    encoder; the muxer in bit-exact mode (no library version strings).
    """
    av = require("av", "writing video files")

    frames = np.asarray(frames, dtype=np.uint8)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ConfigError(f"write_video: frame size must be even for yuv420p, got {h}x{w}")
    codec = codec or video_codec()
    pix_fmt = "yuv444p" if codec == "libx264" else "yuv420p"
    y, u, v = rgb_to_yuv(frames, "444" if pix_fmt == "yuv444p" else "420")
    with av.open(str(path), "w", format="mp4", container_options={"fflags": "+bitexact"}) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        s.codec_context.thread_count = 1
        if gop is not None:
            s.codec_context.gop_size = int(gop)
        if codec == "libx264":
            s.codec_context.options = dict(_X264_OPTIONS)
        else:  # mpeg4: near-lossless quantiser
            s.bit_rate = max(2_000_000, 2 * h * w * 3 * fps)
            s.codec_context.qmin, s.codec_context.qmax = 1, 3
        for k in range(t):
            if pix_fmt == "yuv444p":
                frame = av.VideoFrame.from_ndarray(np.stack([y[k], u[k], v[k]]), format="yuv444p")  # [3, H, W]
            else:
                frame = av.VideoFrame.from_ndarray(np.concatenate([y[k].ravel(), u[k].ravel(), v[k].ravel()]).reshape(h * 3 // 2, w), format="yuv420p")
            frame.pts = k
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return codec


# --------------------------------------------------------------------------------------
# Scene rendering
# --------------------------------------------------------------------------------------


@dataclass
class _Object:
    colour: str
    shape: str
    motion: str
    size: str
    radius: float
    start: int  # first visible frame
    stop: int  # one past the last visible frame
    across: float  # coordinate perpendicular to the motion (or x for static)
    fixed: float  # y for static objects
    visible: list[int] | None = None  # set by _render: drawn frames where it is not (mostly) hidden

    @property
    def frames(self) -> list[int]:
        """Frames the object is drawn in."""
        return list(range(self.start, self.stop))

    def centre(self, t: int, side: int) -> tuple[float, float]:
        """(cx, cy) at visible frame t: moving objects cross the frame edge to edge over [start, stop)."""
        if self.motion == "static":
            return self.across, self.fixed
        n = self.stop - self.start
        a, b = 0.3 * self.radius, side - 0.3 * self.radius
        f = (t - self.start) / max(n - 1, 1)
        pos = a + (b - a) * f
        if self.motion in ("left", "up"):
            pos = b - (b - a) * f
        return (pos, self.across) if self.motion in ("left", "right") else (self.across, pos)

    def describe(self) -> dict[str, Any]:
        return {
            "colour": self.colour, "shape": self.shape, "motion": self.motion, "size": self.size,
            "frames": list(self.visible), "frames_drawn": self.frames,
        }


@functools.lru_cache(maxsize=8)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    return yy, xx


def _mask(shape: str, cx: float, cy: float, r: float, side: int) -> np.ndarray:
    yy, xx = _grid(side)
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = 0.85 * r
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    # triangle pointing up: apex at cy - r, base at cy + r
    frac = (dy + r) / (2 * r)
    return (frac >= 0) & (frac <= 1) & (np.abs(dx) <= frac * r * 1.05)


def _background(rs: np.random.Generator, side: int) -> np.ndarray:
    base = rs.integers(25, 90, size=3).astype(np.float32)
    img = np.broadcast_to(base, (side, side, 3)).copy()
    if rs.random() < 0.5:  # light low-frequency texture
        k = max(side // 8, 2)
        coarse = rs.normal(0.0, 6.0, size=(k, k, 1)).astype(np.float32)
        rep = -(-side // k)
        img += np.kron(coarse, np.ones((rep, rep, 1), np.float32))[:side, :side]
    return np.clip(img, 0, 255)


def _render(rs: np.random.Generator, objects: Sequence[_Object], frames: int, side: int) -> np.ndarray:
    """Draw the clip (later objects on top) and set each object's `visible` frames: those where at
    least 30% of its full-size area is on screen and not hidden by another object."""
    bg = _background(rs, side)
    video = np.repeat(bg[None], frames, axis=0)
    owner = np.full((frames, side, side), -1, np.int8)
    for j, ob in enumerate(objects):
        col = np.asarray(COLOURS[ob.colour], np.float32)
        for t in ob.frames:
            cx, cy = ob.centre(t, side)
            m = _mask(ob.shape, cx, cy, ob.radius, side)
            video[t][m] = col
            owner[t][m] = j
    for j, ob in enumerate(objects):
        full = int(_mask(ob.shape, side / 2, side / 2, ob.radius, side).sum())
        ob.visible = [t for t in ob.frames if (owner[t] == j).sum() >= 0.3 * full]
    return video.astype(np.uint8)


def _new_object(rs, side, frames, colour, shape, motion, start, length) -> _Object:
    size = SIZES[int(rs.integers(2))]
    radius = side * (0.11 if size == "small" else 0.18)
    lo, hi = radius + 1, side - radius - 1
    return _Object(
        colour=colour,
        shape=shape,
        motion=motion,
        size=size,
        radius=radius,
        start=int(start),
        stop=int(min(start + length, frames)),
        across=float(rs.uniform(lo, hi)),
        fixed=float(rs.uniform(lo, hi)),
    )


def _distinct_looks(rs, k: int) -> list[tuple[str, str]]:
    """k distinct (colour, shape) pairs."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    pick = rs.choice(len(pairs), size=k, replace=False)
    return [pairs[int(i)] for i in pick]


def _length_range(frames: int) -> tuple[int, int]:
    return max(2, frames // 3), max(3, frames // 2 + 1)


# --------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------

_VERB = {
    "left": ("moves left", "moves to the left", "is moving left"),
    "right": ("moves right", "moves to the right", "is moving right"),
    "up": ("moves up", "moves upwards", "is moving up"),
    "down": ("moves down", "moves downwards", "is moving down"),
    "static": ("stays still", "does not move", "appears and stays in place"),
}


def _phrase(rs, ob: _Object) -> str:
    subj = f"{ob.size} {ob.colour} {ob.shape}" if rs.random() < 0.5 else f"{ob.colour} {ob.shape}"
    return f"{subj} {_VERB[ob.motion][int(rs.integers(3))]}"


def _params_match(meta_path: Path, params: dict) -> bool:
    try:
        return json.loads(meta_path.read_text()).get("params") == params
    except (OSError, ValueError):
        return False


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def make_retrieval_dataset(
    root: str | os.PathLike,
    n_train: int = 400,
    n_test: int = 100,
    frames: int = 16,
    size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Text-to-video retrieval clips + captions.

    Writes root/videos/{train,test}_NNNNN.mp4, root/captions_{train,test}.jsonl (keys video_id,
    caption, frames_visible, objects) and root/meta.json. Reuses an existing dataset built with
    the same parameters unless overwrite=True. Returns paths and counts.
    """
    root = Path(root)
    params = {"kind": "retrieval", "n_train": n_train, "n_test": n_test, "frames": frames, "size": size, "seed": seed, "version": 1}
    out = {
        "root": root,
        "videos": root / "videos",
        "captions_train": root / "captions_train.jsonl",
        "captions_test": root / "captions_test.jsonl",
        "meta": root / "meta.json",
    }
    if not overwrite and _params_match(out["meta"], params) and out["captions_test"].exists():
        meta = json.loads(out["meta"].read_text())
        return {**out, "codec": meta["codec"], "n_captions": meta["n_captions"], "seconds": 0.0}
    if size % 2 or size < 16 or frames < 4:
        raise ConfigError(f"make_retrieval_dataset: need even size >= 16 and frames >= 4, got size={size}, frames={frames}")
    t0 = time.perf_counter()
    out["videos"].mkdir(parents=True, exist_ok=True)
    codec = video_codec()
    n_caps = {}
    lmin, lmax = _length_range(frames)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            rs = np.random.default_rng([seed, _SPLIT_IDS[split], i])
            vid = f"{split}_{i:05d}"
            looks = _distinct_looks(rs, 2)
            motions = rs.choice(len(MOTIONS), size=2, replace=True)
            la, lb = (int(v) for v in rs.integers(lmin, lmax + 1, size=2))
            # first object early, second late: their frame ranges differ (small overlap possible)
            sa = int(rs.integers(0, max(frames // 4 - 0, 0) + 1))
            sb_hi = frames - lb
            sb = int(rs.integers(max(sb_hi - frames // 4, 0), sb_hi + 1))
            for _ in range(20):  # re-place the objects if one is hidden in most of its frames
                objs = [
                    _new_object(rs, size, frames, *looks[0], MOTIONS[int(motions[0])], sa, la),
                    _new_object(rs, size, frames, *looks[1], MOTIONS[int(motions[1])], sb, lb),
                ]
                video = _render(rs, objs, frames, size)
                if all(len(o.visible) >= max(2, len(o.frames) // 2) for o in objs):
                    break
            write_video(out["videos"] / f"{vid}.mp4", video, codec=codec)
            for ob in objs:
                rows.append({"video_id": vid, "caption": "a " + _phrase(rs, ob), "frames_visible": ob.visible, "objects": [ob.describe()]})
            first, second = sorted(objs, key=lambda o: (o.start, o.stop))
            rows.append({
                "video_id": vid,
                "caption": f"a {_phrase(rs, first)}, then a {_phrase(rs, second)}",
                "frames_visible": sorted(set(first.visible) | set(second.visible)),
                "objects": [first.describe(), second.describe()],
            })
        _write_jsonl(out[f"captions_{split}"], rows)
        n_caps[split] = len(rows)
    seconds = time.perf_counter() - t0
    out["meta"].write_text(json.dumps({"params": params, "codec": codec, "n_captions": n_caps, "fps": _FPS, "seconds": seconds}, indent=1))
    return {**out, "codec": codec, "n_captions": n_caps, "seconds": seconds}


# --------------------------------------------------------------------------------------
# VideoQA
# --------------------------------------------------------------------------------------


def _questions(rs, objs: Sequence[_Object], max_q: int) -> list[dict]:
    """Candidate questions from the scene (answers = full correct set), then a random subset of up to
    max_q that includes a several-answer question whenever the scene has one."""
    cands: list[tuple[str, str, list[str]]] = []
    moving = sorted({o.motion for o in objs if o.motion != "static"})
    for d in moving:
        who = [o for o in objs if o.motion == d]
        cands.append(("colour_of_motion", f"what colour is the shape that moves {d}?", sorted({o.colour for o in who})))
        cands.append(("shape_of_motion", f"what shape moves {d}?", sorted({o.shape for o in who})))
    for o in objs:
        cands.append(("motion_of_object", f"which way does the {o.colour} {o.shape} move?", ["still" if o.motion == "static" else o.motion]))
    for s in sorted({o.shape for o in objs}):
        cands.append(("colour_of_shape", f"what colour is the {s}?", sorted({o.colour for o in objs if o.shape == s})))
    for c in sorted({o.colour for o in objs}):
        cands.append(("shape_of_colour", f"what shape is {c}?", sorted({o.shape for o in objs if o.colour == c})))
    d = MOTIONS[int(rs.integers(4))]
    cands.append(("count_motion", f"how many shapes move {d}?", [COUNT_WORDS[sum(o.motion == d for o in objs)]]))
    return _choose(rs, cands, max_q)


def _choose(rs, cands: list[tuple[str, str, list[str]]], max_q: int) -> list[dict]:
    """A random subset of up to max_q candidate (type, question, answers), in candidate order, that
    includes a several-answer question whenever there is one."""
    multi = [k for k, c in enumerate(cands) if len(c[2]) > 1]
    chosen: list[int] = []
    if multi:
        chosen.append(multi[int(rs.integers(len(multi)))])
    rest = [k for k in rs.permutation(len(cands)) if k not in chosen]
    chosen += [int(k) for k in rest[: max_q - len(chosen)]]
    return [{"type": cands[k][0], "question": cands[k][1], "answers": cands[k][2]} for k in sorted(chosen)]


def _place_objects(rs, looks, motions, frames: int, size: int) -> tuple[list[_Object], np.ndarray]:
    """Objects with the given (colour, shape) looks and motions at random times and places, re-placed
    (up to 20 tries) while one is hidden in most of its frames; returns (objects, uint8 video)."""
    lmin, lmax = _length_range(frames)
    for _ in range(20):
        objs = []
        for (colour, shape), motion in zip(looks, motions):
            length = int(rs.integers(lmin, lmax + 1))
            start = int(rs.integers(0, frames - length + 1))
            objs.append(_new_object(rs, size, frames, colour, shape, motion, start, length))
        video = _render(rs, objs, frames, size)
        if all(len(o.visible) >= max(2, len(o.frames) // 2) for o in objs):
            break
    return objs, video


def _look(o: _Object) -> str:
    return f"{o.colour} {o.shape}"


def _doing(motion: str) -> str:
    return "stays still" if motion == "static" else f"moves {motion}"


def _describe(o: _Object) -> str:
    """Full description, e.g. 'small red circle moving left' or 'big blue square staying still'."""
    return f"{o.size} {_look(o)} " + ("staying still" if o.motion == "static" else f"moving {o.motion}")


def _questions_large(rs, objs: Sequence[_Object], max_q: int) -> list[dict]:
    """Questions whose answers are compositional phrases (vocabulary: large_answer_vocabulary())."""
    cands: list[tuple[str, str, list[str]]] = []
    for d in sorted({o.motion for o in objs if o.motion != "static"}):
        cands.append(("object_of_motion", f"which object moves {d}?",
                      sorted({f"{o.size} {_look(o)}" for o in objs if o.motion == d})))
    cands.append(("describe", "describe one object in the video.", sorted({_describe(o) for o in objs})))
    order = sorted({f"{_look(a)} then {_look(b)}" for a in objs for b in objs if a.start < b.start})
    if order:
        cands.append(("order", "name two objects in the order they appear.", order))
    for o in objs:
        cands.append(("motion_of_object", f"what does the {_look(o)} do?", [_doing(o.motion)]))
    s = SHAPES[int(rs.integers(len(SHAPES)))]
    cands.append(("count_shape", f"how many {s}s are there?", [COUNT_WORDS[sum(o.shape == s for o in objs)]]))
    return _choose(rs, cands, max_q)


def large_answer_vocabulary() -> list[str]:
    """Every answer make_videoqa_dataset(vocab="large") can give (400), in a fixed order."""
    looks = [f"{c} {s}" for c in COLOURS for s in SHAPES]  # 15
    out = [f"{z} {lk}" for z in SIZES for lk in looks]  # object_of_motion: 30
    out += [f"{z} {lk} " + ("staying still" if m == "static" else f"moving {m}")
            for z in SIZES for lk in looks for m in MOTIONS]  # describe: 150
    out += [f"{a} then {b}" for a in looks for b in looks if a != b]  # order: 210
    out += [_doing(m) for m in MOTIONS]  # motion_of_object: 5
    out += list(COUNT_WORDS)  # count_shape: 5 (at most 4 shapes)
    return out


def make_videoqa_dataset(
    root: str | os.PathLike,
    n_train: int = 400,
    n_test: int = 100,
    frames: int = 16,
    size: int = 64,
    seed: int = 0,
    questions_per_video: int = 4,
    overwrite: bool = False,
    vocab: str = "small",
) -> dict[str, Any]:
    """Open-ended VideoQA with insufficient labels.

    Writes root/videos/*.mp4, root/questions_{train,test}.jsonl (keys video_id, question, answer =
    one correct answer drawn at random, answers = every correct answer, type) and root/meta.json.
    vocab="small": 3 shapes per clip; answers are colours, shapes, directions (+ "still"), count
    words (21 in all). vocab="large": 4 shapes per clip; answers are phrases composed from size x
    colour x shape x motion and the order of appearance, 400 in all (`large_answer_vocabulary()`),
    with several correct answers for most questions (RADI as its paper means it).
    """
    if vocab not in ("small", "large"):
        raise ConfigError(f"make_videoqa_dataset: vocab must be 'small' or 'large', got {vocab!r}")
    n_obj = 3 if vocab == "small" else 4
    root = Path(root)
    params = {
        "kind": "videoqa", "n_train": n_train, "n_test": n_test, "frames": frames, "size": size,
        "seed": seed, "questions_per_video": questions_per_video, "version": 1,
    }
    if vocab != "small":
        params["vocab"] = vocab
    out = {
        "root": root,
        "videos": root / "videos",
        "questions_train": root / "questions_train.jsonl",
        "questions_test": root / "questions_test.jsonl",
        "meta": root / "meta.json",
    }
    if not overwrite and _params_match(out["meta"], params) and out["questions_test"].exists():
        meta = json.loads(out["meta"].read_text())
        return {**out, "codec": meta["codec"], "n_questions": meta["n_questions"], "seconds": 0.0}
    if size % 2 or size < 16 or frames < 4:
        raise ConfigError(f"make_videoqa_dataset: need even size >= 16 and frames >= 4, got size={size}, frames={frames}")
    t0 = time.perf_counter()
    out["videos"].mkdir(parents=True, exist_ok=True)
    codec = video_codec()
    n_q = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            rs = np.random.default_rng([seed, 100 + _SPLIT_IDS[split], i])
            vid = f"{split}_{i:05d}"
            looks = _distinct_looks(rs, n_obj)
            if rs.random() < 0.7:  # two shapes share a direction -> several correct answers
                shared = MOTIONS[int(rs.integers(4))]
                other = [m for m in MOTIONS if m != shared]
                motions = [shared, shared] + [other[int(rs.integers(len(other)))] for _ in range(n_obj - 2)]
            else:
                motions = [MOTIONS[int(k)] for k in rs.choice(len(MOTIONS), size=n_obj, replace=True)]
            objs, video = _place_objects(rs, looks, motions, frames, size)
            write_video(out["videos"] / f"{vid}.mp4", video, codec=codec)
            for q in (_questions_large if vocab == "large" else _questions)(rs, objs, questions_per_video):
                answer = q["answers"][int(rs.integers(len(q["answers"])))]
                rows.append({"video_id": vid, "question": q["question"], "answer": answer, "answers": q["answers"], "type": q["type"]})
        _write_jsonl(out[f"questions_{split}"], rows)
        n_q[split] = len(rows)
    seconds = time.perf_counter() - t0
    out["meta"].write_text(json.dumps({"params": params, "codec": codec, "n_questions": n_q, "fps": _FPS, "seconds": seconds}, indent=1))
    return {**out, "codec": codec, "n_questions": n_q, "seconds": seconds}


# --------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------


def make_feature_h5(
    path: str | os.PathLike,
    n_videos: int = 8,
    frames: int | tuple[int, int] = 16,
    dim: int = 32,
    seed: int = 0,
) -> list[str]:
    """HDF5 with datasets "video_NNNNN" float32 [n_frames, dim] (n_frames fixed, or drawn from [lo, hi]).
    Returns the dataset names."""
    import h5py

    rs = np.random.default_rng(seed)
    names = []
    with h5py.File(path, "w") as f:
        for i in range(n_videos):
            n = frames if isinstance(frames, int) else int(rs.integers(frames[0], frames[1] + 1))
            name = f"video_{i:05d}"
            f.create_dataset(name, data=rs.standard_normal((n, dim)).astype(np.float32))
            names.append(name)
    return names
