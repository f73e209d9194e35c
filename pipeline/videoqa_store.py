"""The arrays of an open-ended VideoQA store (docs/store-format.md, task `videoqa`).

The task class is pipeline/teach_videoqa.py's VideoQATask; its inspect statistics and report
section are pipeline/videoqa_inspect.py.
"""

from __future__ import annotations

from labelstore.schema import ArraySpec, smallest_int, smallest_uint

from .features import SCALE as FEATURE_SCALE
from .features import VALUES as FEATURE_VALUES

TASK = "videoqa"  # the store attribute "task"; its entry in labelstore.trainers.tasks.TASKS


def videoqa_arrays(
    *,
    num_questions: int,
    epochs: int,
    num_answers: int,
    num_videos: int,
    top_k: int,
    mc_passes: int,
    num_frames: int,
    features: tuple[int, int, str] | None = None,
) -> list[ArraySpec]:
    """Arrays of an open-ended VideoQA store (rows = questions, dimension "sample").

    Per (epoch, question): the recorded frame indices of the question's video, the teacher's
    top-K answers and their probabilities, the same K answers under T MC-dropout passes, and
    the probability of the annotated answer. Per question: annotated answer id (-1 outside the
    vocabulary), the video's relative path and the video's row in the video source.
    features: (Q, D, codec) of `teach --task videoqa --features NAME` (token features, pipeline/features.py),
    or None: no feature arrays.
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
    if features is not None:
        specs += token_feature_arrays(E, N, *features)
    return specs


def token_feature_arrays(epochs: int, num_questions: int, num_tokens: int, dim: int, codec: str) -> list[ArraySpec]:
    """features/values [E, N, Q, D] (float16, or int8 with features/scale [E, N] float32, one scale per view)."""
    E, N, Q, D = epochs, num_questions, num_tokens, dim
    specs = [ArraySpec(FEATURE_VALUES, ("epoch", "sample", "token", "feature"), (E, N, Q, D), codec,
                       "teacher token outputs of the view (features.name), codec features.codec", codec="features")]
    if codec == "int8":
        specs.append(ArraySpec(FEATURE_SCALE, ("epoch", "sample"), (E, N), "float32",
                               "int8 scale of the view: tokens ~= values * scale, scale = max|tokens| / 127"))
    return specs
