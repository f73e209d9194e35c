"""The arrays of an image-classification store (docs/store-format.md, task `classification`).

The task class is pipeline/teach.py's ClassificationTask; its inspect statistics and report
section are pipeline/classification_inspect.py.
"""

from __future__ import annotations

from labelstore.schema import ArraySpec, smallest_int, smallest_uint

TASK = "classification"  # the store attribute "task"; its entry in labelstore.trainers.tasks.TASKS

# Probabilities (topk_values, gt_prob, mc_values) keep this many of float16's 10 mantissa bits:
# |stored - p16| <= 2^-(PROB_MANTISSA_BITS+1) * max(|p16|, 2^-14), i.e. <= 0.78 % relative (p16: the
# float16 of the teacher's probability). See docs/store-format.md, "Precision".
PROB_MANTISSA_BITS = 6

# teach --features (pipeline/features.py): per-view features and the int8 scale, per-epoch; the teacher's
# classifier head, written at creation; read on request (labelstore.reader, ON_REQUEST), never by store.read
FEATURE_VALUES, FEATURE_SCALE = "features/values", "features/scale"
HEAD_WEIGHT, HEAD_BIAS = "features/head/weight", "features/head/bias"

VIEW_CHECK_DTYPE = "uint16"  # view_digest: the low 16 bits of the view's crc32c (labelstore.integrity.view_check)


def classification_arrays(
    *,
    num_samples: int,
    epochs: int,
    num_classes: int,
    top_k: int,
    mc_passes: int,
    aug_spec: dict[str, tuple[str, tuple[int, ...]]],
    digests: bool = True,
    features: tuple[int, str] | None = None,
) -> list[ArraySpec]:
    """Arrays of an image-classification store.

    aug_spec: "op/param" -> (storage dtype, per-view trailing shape), from the policy; empty when the
    parameters are derived (group attribute aug_params = "derived", the default of the teacher stage).
    features: (D, codec) of `teach --features` (pipeline/features.py), or None: no feature arrays.
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
    if features is not None:
        specs += feature_arrays(E, N, *features)
    for key, (dtype, tail) in sorted(aug_spec.items()):
        op, param = key.split("/")
        tail_dims = (f"{op}_{param}",) if len(tail) == 1 else tuple(f"{op}_{param}_{i}" for i in range(len(tail)))
        dims = ("epoch", "sample") + tail_dims
        specs.append(ArraySpec(f"aug/{key}", dims, (E, N, *tail), dtype, f"augmentation parameter '{param}' of op '{op}'"))
    return specs


def feature_arrays(epochs: int, num_samples: int, dim: int, codec: str) -> list[ArraySpec]:
    """features/values [E, N, D] (float16, or int8 with features/scale [E, N] float32): pipeline/features.py."""
    E, N = epochs, num_samples
    specs = [ArraySpec(FEATURE_VALUES, ("epoch", "sample", "feature"), (E, N, dim), codec,
                       "teacher feature of the view (features.name), codec features.codec", codec="features")]
    if codec == "int8":
        specs.append(ArraySpec(FEATURE_SCALE, ("epoch", "sample"), (E, N), "float32",
                               "int8 scale of the view: feature ~= values * scale, scale = max|feature| / 127"))
    return specs
