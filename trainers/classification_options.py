"""The options `labelstore teach|train --task classification` adds to the common ones (labelstore.cli_options).

Light (click only), so `labelstore teach --help` lists them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from labelstore.cli_options import NONNEGATIVE, POSITIVE, STORE, option, weights_help

WEIGHTS_ELSEWHERE = "give a checkpoint or a module:callable that loads its weights itself (?weights=FILE)"


@dataclass(frozen=True)
class ClassificationTeachOptions:
    unlabeled: bool = option("--unlabeled", is_flag=True,
                             help="--data is an unlabelled folder: every image under it, no class sub-folders "
                                  "(give --num-classes).")
    teacher_weights: str | None = option("--teacher-weights", default=None, type=click.Path(dir_okay=False),
                                         metavar="FILE", help=weights_help("teacher"), other_tasks=WEIGHTS_ELSEWHERE)
    num_classes: int | None = option("--num-classes", type=POSITIVE, default=None,
                                     help="Teacher classes (default: the dataset's).")
    top_k: int = option("--top-k", type=POSITIVE, default=5, show_default=True, help="Stored top-k.")
    mc_passes: int = option("--mc-passes", type=NONNEGATIVE, default=0, show_default=True,
                            help="MC-dropout passes (0 = none).")
    policy_name: str = option(
        "--policy", default="crop-flip", show_default=True,
        help="A built-in policy (none, crop-flip, crop-flip-jitter, cutmix, mixup, selfmix), an op list such as "
             "'rrc(scale=0.35,1)+flip(p=0.5)' (ops: rrc, resize, flip, jitter, selfmix, cutmix, mixup and "
             "registered user ops), or a .json file of ops (docs/cli.md).")
    crop_scale: tuple[float, float] | None = option(
        "--crop-scale", nargs=2, type=float, default=None,
        help="Random-resized-crop area range of a built-in policy.  [default: 0.08 1.0]")
    mean: str | None = option("--mean", default=None, metavar="R,G,B",
                              help="The teacher's input mean, recorded in the store and used by every student: "
                                   "input = (pixel/255 - mean) / std.  [default: 0.485,0.456,0.406 (ImageNet)]")
    std: str | None = option("--std", default=None, metavar="R,G,B",
                             help="The teacher's input std (a value may be a fraction, e.g. 1/255).  "
                                  "[default: 0.229,0.224,0.225 (ImageNet)]")
    image_size: int = option("--image-size", type=POSITIVE, default=32, show_default=True,
                             help="Output resolution of the views.")
    views_per_decode: int = option("--views-per-decode", type=NONNEGATIVE, default=0, show_default=True,
                                   help="Epochs labelled per image decode; 0 = all.")
    shard_samples: int = option("--shard-samples", type=POSITIVE, default=8192, show_default=True,
                                help="Rows per shard = per work unit.")
    chunk_samples: int = option("--chunk-samples", type=POSITIVE, default=2048, show_default=True,
                                help="Rows per inner chunk (read unit).")
    workers: int = option("--workers", type=POSITIVE, default=4, show_default=True, help="Decode threads.")
    device: str | None = option("--device", default=None, help="cuda / cpu (default: cuda when present).")
    render_device: str | None = option(
        "--render-device", default=None,
        help="Where views are rendered, the same bytes anywhere: cpu (numba kernels), cuda[:i] (torch, sources "
             "uploaded once per image), torch:cpu (the torch path on the CPU). Default: the teacher's device.")
    amp: bool | None = option("--amp/--no-amp", default=None, help="Autocast on CUDA (default: on for CUDA).")
    skip_bad: bool = option("--skip-bad", is_flag=True, help="Record undecodable images as skipped instead of stopping.")
    no_digest: bool = option("--no-digest", is_flag=True, help="Do not store per-view input digests.")
    store_params: bool = option(
        "--store-params", is_flag=True,
        help="Also store the augmentation parameters (aug/* arrays, ~5 bytes per view for crop-flip); by default "
             "students re-derive them from the counter-based RNG.")
    features: str | None = option(
        "--features", default=None, metavar="NAME",
        help="Also record per view the output of a teacher module: 'penultimate' (the input of the classifier, "
             "the last Linear with one output per class) or any model.named_modules() name (a 4-D output is "
             "averaged over H, W); the classifier's weights are stored too (docs/store-format.md).")
    feature_codec: str = option("--feature-codec", type=click.Choice(["float16", "int8"]), default="float16",
                                show_default=True,
                                help="How --features are stored: float16, or int8 with a float32 scale per view.")


@dataclass(frozen=True)
class ClassificationTrainOptions:
    student_weights: str | None = option("--student-weights", default=None, type=click.Path(dir_okay=False),
                                         metavar="FILE", help=weights_help("student (its initial weights)"),
                                         other_tasks=WEIGHTS_ELSEWHERE)
    online_teacher_weights: str | None = option("--online-teacher-weights", default=None,
                                                type=click.Path(dir_okay=False), metavar="FILE",
                                                help=weights_help("online teacher"), other_tasks=WEIGHTS_ELSEWHERE)
    eval_data: str | None = option("--eval-data", default=None, help="Held-out ImageFolder/HDF5 for evaluation.")
    lr: float | None = option("--lr", type=float, default=None, help="Learning rate (default: AdamW 5e-3).")
    temperature: float = option("--temperature", default=1.0, show_default=True)
    fill: str = option("--fill", type=click.Choice(["marginal", "renorm"]), default="marginal", show_default=True)
    hard_weight: float = option("--hard-weight", default=0.0, show_default=True,
                                help="Weight of the ground-truth CE term.")
    unlabeled_store: str | None = option(
        "--unlabeled-store", default=None, type=STORE,
        help="A store of an unlabelled folder (teach --unlabeled): its views whose teacher top-1 probability "
             ">= --select-threshold join training with that pseudo label (ADL's scheme).")
    unlabeled_data: str | None = option("--unlabeled-data", default=None,
                                        help="The unlabelled folder --unlabeled-store was built from.")
    select_threshold: float = option("--select-threshold", default=0.9, show_default=True,
                                     help="Teacher confidence that selects an unlabelled view.")
    ferkd_low: float = option("--ferkd-low", default=0.05, show_default=True)
    ferkd_high: float = option("--ferkd-high", default=0.95, show_default=True)
    device: str | None = option("--device", default=None, help="cuda / cpu (default: cuda when present).")
