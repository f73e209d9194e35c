"""The label-store schema: which arrays exist, their dimensions, dtypes and chunking.

`docs/store-format.md` is the written source of truth; this module is its code.

Layout rules (all arrays):
- Arrays with a leading "epoch" dimension hold one record per (epoch, row). Inner chunks are
  (1, chunk_rows, ...): a reader of one epoch never reads another epoch's bytes. Shards are
  (1, shard_rows, ...): one work unit of the teacher stage writes whole shards only, so
  several writer processes never touch the same shard.
- Arrays without an epoch dimension hold one record per row, chunked (chunk_rows, ...) and
  sharded (shard_rows, ...).
- Every inner chunk: bytes -> blosc(zstd) -> crc32c, the blosc settings (and a k-major transpose)
  chosen per array by its `codec` (writer.codecs_for). Every shard index: crc32c.
- Probability arrays of classification stores keep `mantissa_bits` of float16's 10 mantissa bits
  (`round_mantissa`, applied by writer.write_block), so they compress to what they carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from .errors import ConfigError

FORMAT_NAME = "labelstore"
FORMAT_VERSION = 3  # 3: manifest + metadata checksums, derived augmentation params, 16-bit view checks, rounded probabilities, render version 3; 2: uint8 view digests; bump on any change a reader of the old version would misread

CLASSIFICATION = "classification"
RETRIEVAL = "retrieval"
VIDEOQA = "videoqa"
TASKS = (CLASSIFICATION, RETRIEVAL, VIDEOQA)

# Classification probabilities (topk_values, gt_prob, mc_values) keep this many of float16's 10 mantissa
# bits: |stored - p16| <= 2^-(PROB_MANTISSA_BITS+1) * max(|p16|, 2^-14), i.e. <= 0.78 % relative (p16: the
# float16 of the teacher's probability). See docs/store-format.md, "Precision".
PROB_MANTISSA_BITS = 6

# Values of the group attribute "aug_params": how a student gets the augmentation parameters of a view.
PARAMS_DERIVED = "derived"  # recomputed from (policy, seed, epoch, sample, source_hw) by the pipeline's Policy.sample
PARAMS_STORED = "stored"  # the aug/<op>/<param> arrays (teach --store-params)

VIEW_CHECK_DTYPE = "uint16"  # classification view_digest: the low 16 bits of the view's crc32c (integrity.view_check)


@dataclass(frozen=True)
class ArraySpec:
    """One array of the store. `shape` excludes nothing: it is the full array shape."""

    name: str  # path inside the group, e.g. "topk_values" or "aug/rrc/box"
    dims: tuple[str, ...]  # Zarr v3 dimension_names
    shape: tuple[int, ...]
    dtype: str
    meaning: str
    units: str = ""
    fill_value: float | int | bool | str = 0
    attrs: dict = field(default_factory=dict)
    codec: str = "default"  # compression recipe, see writer.codecs_for: "default", "ids" or "probs"

    @property
    def per_epoch(self) -> bool:
        return self.dims[0] == "epoch"

    @property
    def row_axis(self) -> int:
        """The axis the work partitions split (rows: samples, captions, questions)."""
        return 1 if self.per_epoch else 0


def smallest_uint(max_value: int) -> str:
    """Smallest unsigned dtype holding 0..max_value."""
    for dt in ("uint8", "uint16", "uint32"):
        if max_value <= np.iinfo(dt).max:
            return dt
    return "uint64"


def smallest_int(max_value: int) -> str:
    """Smallest signed dtype holding -1..max_value (-1 marks 'unlabeled')."""
    for dt in ("int8", "int16", "int32"):
        if max_value <= np.iinfo(dt).max:
            return dt
    return "int64"


def round_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """float16 x with its mantissa rounded to `bits` of 10 bits (round half to even on the bit pattern).

    |out - x| <= 2^-(bits+1) * max(|x|, 2^-14) (2^-14: float16's smallest normal; below it the step is
    absolute, 2^-(14+bits)). NaN and inf pass unchanged; a carry rounds up into the exponent.
    """
    x16 = np.asarray(x).astype(np.float16)
    if bits >= 10:
        return x16
    drop = np.uint32(10 - bits)
    b = x16.view(np.uint16).astype(np.uint32)
    half_minus_one = np.uint32((1 << (10 - bits - 1)) - 1)
    b = (b + half_minus_one + ((b >> drop) & np.uint32(1))) & np.uint32(0xFFFF ^ ((1 << (10 - bits)) - 1))
    out = b.astype(np.uint16).view(np.float16)
    return np.where(np.isfinite(x16), out, x16)


def chunking(spec: ArraySpec, chunk_rows: int, shard_rows: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(inner chunk shape, shard shape) for an array under the layout rules above."""
    if shard_rows % chunk_rows:
        raise ConfigError(f"shard_rows ({shard_rows}) must be a multiple of chunk_rows ({chunk_rows})")
    rows = spec.shape[spec.row_axis]
    chunk = max(1, min(chunk_rows, rows))
    shard = min(shard_rows, -(-max(rows, 1) // chunk) * chunk)  # whole chunks; one shard when rows < shard_rows
    tail = tuple(spec.shape[spec.row_axis + 1 :])
    if spec.per_epoch:
        return (1, chunk, *tail), (1, shard, *tail)
    return (chunk, *tail), (shard, *tail)


def classification_arrays(
    *,
    num_samples: int,
    epochs: int,
    num_classes: int,
    top_k: int,
    mc_passes: int,
    aug_spec: dict[str, tuple[str, tuple[int, ...]]],
    digests: bool = True,
) -> list[ArraySpec]:
    """Arrays of an image-classification store.

    aug_spec: "op/param" -> (storage dtype, per-view trailing shape), from the policy; empty when the
    parameters are derived (group attribute aug_params = "derived", the default of the teacher stage).
    """
    E, N, K, T = epochs, num_samples, top_k, mc_passes
    idx = smallest_uint(num_classes - 1)
    prob = {"mantissa_bits": PROB_MANTISSA_BITS}
    specs = [
        ArraySpec("sample_id", ("sample",), (N,), "str", "sample table: path relative to the data root, or 'index:i'", fill_value=""),
        ArraySpec("gt", ("sample",), (N,), smallest_int(num_classes - 1), "ground-truth class; -1 = unlabeled", fill_value=-1),
        ArraySpec("source_hw", ("sample", "hw"), (N, 2), "uint16", "decoded source image (height, width)", "pixels"),
        ArraySpec("skipped", ("sample",), (N,), "bool", "True where the source could not be decoded (--skip-bad)", fill_value=False),
        ArraySpec("topk_values", ("epoch", "sample", "k"), (E, N, K), "float16",
                  "teacher top-k probabilities softmax(logits), descending", "probability", attrs=prob, codec="probs"),
        ArraySpec("topk_indices", ("epoch", "sample", "k"), (E, N, K), idx, "class ids of topk_values", codec="ids"),
        ArraySpec("gt_prob", ("epoch", "sample"), (E, N), "float16", "teacher probability of the ground-truth class (NaN if unlabeled)",
                  "probability", attrs=prob, codec="probs"),
    ]
    if T > 0:
        specs.append(
            ArraySpec("mc_values", ("epoch", "sample", "mc", "k"), (E, N, T, K), "float16",
                      "probabilities of the top-k classes under each MC-dropout pass", "probability", attrs=prob,
                      codec="probs")
        )
    if digests:
        specs.append(
            ArraySpec("view_digest", ("epoch", "sample"), (E, N), VIEW_CHECK_DTYPE,
                      "low 16 bits of the crc32c of the uint8 view the teacher was given (pixel-identity check)")
        )
    for key, (dtype, tail) in sorted(aug_spec.items()):
        op, param = key.split("/")
        tail_dims = (f"{op}_{param}",) if len(tail) == 1 else tuple(f"{op}_{param}_{i}" for i in range(len(tail)))
        dims = ("epoch", "sample") + tail_dims
        specs.append(ArraySpec(f"aug/{key}", dims, (E, N, *tail), dtype, f"augmentation parameter '{param}' of op '{op}'"))
    return specs


def videoqa_arrays(
    *,
    num_questions: int,
    epochs: int,
    num_answers: int,
    num_videos: int,
    top_k: int,
    mc_passes: int,
    num_frames: int,
) -> list[ArraySpec]:
    """Arrays of an open-ended VideoQA store (rows = questions, dimension "sample").

    Per (epoch, question): the recorded frame indices of the question's video, the teacher's
    top-K answers and their probabilities, the same K answers under T MC-dropout passes, and
    the probability of the annotated answer. Per question: annotated answer id (-1 outside the
    vocabulary), the video's relative path and the video's row in the video source.
    """
    E, N, K, T, m = epochs, num_questions, top_k, mc_passes, num_frames
    specs = [
        ArraySpec("sample_id", ("sample",), (N,), "str", "relative path of the question's video", fill_value=""),
        ArraySpec("gt", ("sample",), (N,), smallest_int(num_answers - 1), "annotated answer id; -1 = outside the vocabulary", "answer id", fill_value=-1),
        ArraySpec("question_video", ("sample",), (N,), "int32", "row of the question's video in the video source", "video row", fill_value=-1),
        ArraySpec("aug/frames/indices", ("epoch", "sample", "frames_indices"), (E, N, m), "int16",
                  "frame indices of the question's video seen in this epoch (keyed by video row)", "frame"),
        ArraySpec("topk_values", ("epoch", "sample", "k"), (E, N, K), "float16", "teacher top-K answer probabilities, descending", "probability"),
        ArraySpec("topk_indices", ("epoch", "sample", "k"), (E, N, K), smallest_uint(num_answers - 1), "answer ids of topk_values", "answer id"),
        ArraySpec("gt_prob", ("epoch", "sample"), (E, N), "float16", "teacher probability of the annotated answer (NaN if gt = -1)", "probability"),
    ]
    if T > 0:
        specs.append(
            ArraySpec("mc_values", ("epoch", "sample", "mc", "k"), (E, N, T, K), "float16",
                      "probabilities of the top-K answers under each MC-dropout pass", "probability")
        )
    return specs


def retrieval_arrays(
    *,
    num_videos: int,
    num_captions: int,
    epochs: int,
    num_frames: int,
    mode: str,
    embed_dim: int = 0,
    num_batches: int = 0,
    batch_size: int = 0,
    digests: bool = True,
) -> list[ArraySpec]:
    """Arrays of a text-to-video retrieval store (see docs/store-format.md, task `retrieval`).

    Rows are videos (dimension "video", Nv) and captions (dimension "caption", Nc). `mode`
    is the similarity mode: "embeddings" (video_emb [E,Nv,D] + text_emb [Nc,D]), "dense"
    (similarity [E,Nc,Nv]) or "batches" (batch_captions [E,nb,B] + batch_similarity [E,nb,B,B]).
    """
    E, Nv, Nc, m = epochs, num_videos, num_captions, num_frames
    specs = [
        ArraySpec("sample_id", ("video",), (Nv,), "str", "video table: path relative to the video root (or feature dataset name)", fill_value=""),
        ArraySpec("caption_video", ("caption",), (Nc,), "int32", "row of the caption's video in the video table", fill_value=-1),
        ArraySpec("caption_text", ("caption",), (Nc,), "str", "caption text", fill_value=""),
        ArraySpec("aug/frames/indices", ("epoch", "video", "frames_indices"), (E, Nv, m), "int16",
                  "frame indices of the view (presentation order)", "frame"),
        ArraySpec("frame_scores", ("epoch", "caption", "frame"), (E, Nc, m), "float16",
                  "teacher softmax over the frames of the caption's own video of its frame-text relevance", "probability"),
    ]
    if digests:
        specs.append(ArraySpec("view_digest", ("epoch", "video"), (E, Nv), "uint32",
                               "crc32c of the float32 input tensor [m, ...] the teacher was given"))
    if mode == "embeddings":
        specs += [
            ArraySpec("video_emb", ("epoch", "video", "embed"), (E, Nv, embed_dim), "float16",
                      "teacher video embedding, L2-normalised; s = logit_scale * <text_emb, video_emb>"),
            ArraySpec("text_emb", ("caption", "embed"), (Nc, embed_dim), "float16", "teacher text embedding, L2-normalised"),
        ]
    elif mode == "dense":
        specs.append(ArraySpec("similarity", ("epoch", "caption", "video"), (E, Nc, Nv), "float16",
                               "teacher similarity s(caption, video) (scaled logits)", "logit"))
    elif mode == "batches":
        nb, B = num_batches, batch_size
        specs += [
            ArraySpec("batch_captions", ("epoch", "batch", "slot"), (E, nb, B), "int32",
                      "training batch plan: caption rows of batch b (captions of distinct videos)", fill_value=-1),
            ArraySpec("batch_similarity", ("epoch", "batch", "slot_text", "slot_video"), (E, nb, B, B), "float16",
                      "teacher similarity of batch b: [i, j] = s(caption i, video of caption j)", "logit"),
        ]
    else:
        raise ConfigError(f"retrieval similarity mode must be 'embeddings', 'dense' or 'batches', got {mode!r}")
    return specs
