"""The options `labelstore teach|train --task videoqa` adds to the common ones (labelstore.cli_options).

Light (click only), so `labelstore teach --help` lists them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from labelstore.cli_options import NONNEGATIVE, POSITIVE, option

QUESTIONS = "Questions file: JSON lines or CSV (video_id, question, answer)."


@dataclass(frozen=True)
class VideoQATeachOptions:
    questions: str | None = option("--questions", default=None, help=QUESTIONS)
    frames: int = option("--frames", type=POSITIVE, default=8, show_default=True,
                         help="Frames sampled per video (a teacher checkpoint that records another number is refused).")
    frame_size: int = option("--frame-size", type=POSITIVE, default=32, show_default=True,
                             help="Frame resolution (a teacher checkpoint that records another size is refused).")
    top_k: int | None = option("--top-k", type=POSITIVE, default=None,
                               help="Stored top-k (default: every answer, the full ranking RADI's cold lists are "
                                    "drawn from).")
    mc_passes: int = option("--mc-passes", type=NONNEGATIVE, default=0, show_default=True,
                            help="MC-dropout passes (0 = none).")
    features: str | None = option(
        "--features", default=None, metavar="NAME",
        help="Also record per view the token output [Q, D] of a teacher module (any model.named_modules() name; "
             "a [B, D] output is one token; the built-in teacher's per-frame tokens are 'tokens'), for "
             "`train --loss token-mse` (docs/store-format.md).")
    feature_codec: str = option("--feature-codec", type=click.Choice(["float16", "int8"]), default="float16",
                                show_default=True,
                                help="How --features are stored: float16, or int8 with a float32 scale per view.")


@dataclass(frozen=True)
class VideoQATrainOptions:
    questions: str | None = option("--questions", default=None, help="The questions file the store was built from.")
    eval_questions: str | None = option("--eval-questions", default=None,
                                        help="Held-out questions with full answer sets.")
    hot_k: int = option("--hot-k", type=NONNEGATIVE, default=10, show_default=True, help="RADI hot list.")
    cold_n: int = option("--cold-n", type=NONNEGATIVE, default=10, show_default=True, help="RADI cold list.")
    cold_scheme: str = option("--cold-scheme", type=click.Choice(["exp", "zipf"]), default="exp", show_default=True,
                              help="How RADI's cold list is drawn from the ranks below the hot list.")
    radi_rank: str = option("--radi-rank", type=click.Choice(["pairwise", "listwise", "both"]), default="both",
                            show_default=True, help="RADI's ranking terms.")
    margins: str = option("--margins", type=click.Choice(["adaptive", "fixed", "shuffled"]), default="adaptive",
                          show_default=True,
                          help="RADI pairwise margins: Sinkhorn from the MC-dropout uncertainty, constant, or "
                               "the Sinkhorn margins shuffled within each row (a control).")
    alpha: float | None = option("--alpha", type=float, default=None,
                                 help="Weight of the ranking loss (default: RADI's).")
