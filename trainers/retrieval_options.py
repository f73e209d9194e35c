"""The options `labelstore teach|train --task retrieval` adds to the common ones (labelstore.cli_options).

Light (click only), so `labelstore teach --help` lists them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from labelstore.cli_options import POSITIVE, option


@dataclass(frozen=True)
class RetrievalTeachOptions:
    captions: str | None = option("--captions", default=None,
                                  help="Captions file: JSON lines or CSV (video_id, caption).")
    frames: int | None = option("--frames", type=POSITIVE, default=None,
                                help="Frames sampled per video (default: the teacher checkpoint's, else 8).")
    frame_size: int | None = option("--frame-size", type=POSITIVE, default=None,
                                    help="Frame resolution (default: the teacher checkpoint's, else 32).")
    similarity_mode: str = option("--similarity-mode", type=click.Choice(["dense", "embeddings", "batches"]),
                                  default="dense", show_default=True, help="How teacher similarities are stored.")


@dataclass(frozen=True)
class RetrievalTrainOptions:
    captions: str | None = option("--captions", default=None, help="The captions file the store was built from.")
    eval_captions: str | None = option("--eval-captions", default=None, help="Held-out captions.")
