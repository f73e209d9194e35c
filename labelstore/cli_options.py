"""Typed command-line options: a dataclass whose fields are click options.

One declaration gives both the click option (its flags, type, default, help) and the typed field the
command's code reads, so the two cannot drift apart:

    @dataclass(frozen=True)
    class FeaturesTeachOptions:
        layers: int = option("--layers", type=POSITIVE, default=2, show_default=True, help="...")

`click_params(cls)` builds the click options of such a class (the field name is the parameter name),
`from_params(cls, params)` the instance from click's parsed values. `TeachCommon` / `TrainCommon` are
the options every task's `teach` / `train` takes; each task adds its own option class (its registry
entry names it, labelstore.trainers.tasks), and `labelstore teach|train --task T` parses the common
options plus T's. This module is light (click only): `labelstore --help` imports no task.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import click

SEED = click.IntRange(0, 2**63 - 1)  # seeds are uint64 RNG keys below 2**63 (store attributes are JSON int64)
POSITIVE = click.IntRange(min=1)
NONNEGATIVE = click.IntRange(min=0)
STORE = click.Path()  # a local path or a URL (s3://, gs://, memory://): existence is checked when opened
STORAGE_HELP = ('For URL stores: fsspec options as JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\' '
                "(default: fsspec's configuration and the environment).")
SPEC_HELP = ("a built-in model name, module:callable[?key=value&...], hf:NAME_OR_DIR, timm:NAME, torchvision:NAME, "
             "or a checkpoint .pt (docs/cli.md, 'Model specs')")


def weights_help(role: str) -> str:
    """The help of --teacher-weights / --student-weights / --online-teacher-weights."""
    return (f"A torch.save'd state_dict (or a dict holding it under 'state_dict' or 'model') loaded strictly into "
            f"the {role} the spec builds; missing/unexpected keys are named.")


def option(*decls: str, other_tasks: str | None = None, **attrs) -> dataclasses.Field:
    """A dataclass field that is a click option: `decls` and `attrs` as click.Option takes them; the field's
    default is the option's (False for a flag, None when none is given). `other_tasks`: what the error
    says to a user who gives this task's option with another --task ("for --task T {other_tasks}")."""
    default = attrs.get("default", False if attrs.get("is_flag") else None)
    return dataclasses.field(default=default, metadata={"click": (decls, attrs), "other_tasks": other_tasks})


def _option_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "click" in f.metadata]


def click_params(cls) -> list[click.Option]:
    """The click options of an option class, in field order; each option's parameter name is its field's."""
    out = []
    for f in _option_fields(cls):
        decls, attrs = f.metadata["click"]
        out.append(click.Option([f.name, *decls], **attrs))
    return out


def flags(cls) -> dict[str, str | None]:
    """Every flag of an option class (--frames, --amp, --no-amp, ...) -> its `other_tasks` text."""
    return {flag: f.metadata["other_tasks"] for f, p in zip(_option_fields(cls), click_params(cls))
            for flag in (*p.opts, *p.secondary_opts)}


def from_params(cls, params: dict):
    """An instance of the option class from click's parsed values (`params` holds at least its fields)."""
    return cls(**{f.name: params[f.name] for f in _option_fields(cls)})


@dataclass(frozen=True)
class TeachCommon:
    """The options of `labelstore teach` that every task takes (--task aside); rank / world_size are
    resolved from the environment (torchrun) by the CLI, local_rank with them."""

    data_spec: str = option("--data", required=True,
                            help="ImageFolder dir or file.h5[:images[:labels]]; for video tasks a video dir "
                                 "(or frame-feature .h5).")
    teacher: str = option("--teacher", required=True, help=f"The teacher: {SPEC_HELP}.")
    allow_untrained_teacher: bool = option(
        "--allow-untrained-teacher", is_flag=True,
        help="Accept a built-in model name (random weights) as teacher, without --teacher-weights.")
    out: str = option("--out", required=True, type=STORE,
                      help="Store to write: a directory (*.zarr) or a URL (s3://...).")
    storage_options: str | None = option("--storage-options", default=None, metavar="JSON", help=STORAGE_HELP)
    epochs: int = option("--epochs", type=POSITIVE, default=4, show_default=True, help="Epochs of views to label.")
    seed: int = option("--seed", type=SEED, default=0, show_default=True)
    batch_size: int = option("--batch-size", type=POSITIVE, default=256, show_default=True)
    resume: bool = option("--resume", is_flag=True, help="Finish an interrupted store.")
    overwrite: bool = option("--overwrite", is_flag=True, help="Replace an existing store.")
    rank: int | None = option("--rank", type=NONNEGATIVE, default=None,
                              help="This process's rank (several processes fill one store; default: $RANK or 0).")
    world_size: int | None = option("--world-size", type=POSITIVE, default=None,
                                    help="Processes filling the store (default: $WORLD_SIZE or 1).")
    quiet: bool = option("--quiet", is_flag=True)
    as_json: bool = option("--json", is_flag=True, help="Print the result as JSON on stdout (nothing else).")
    local_rank: int = 0  # not an option: LOCAL_RANK of torchrun (pipeline.dist.dist_env)


@dataclass(frozen=True)
class TrainCommon:
    """The options of `labelstore train` that every task takes (--task aside)."""

    store_path: str = option("--store", required=True, type=STORE,
                             help="The store: a directory or a URL (s3://...).")
    storage_options: str | None = option("--storage-options", default=None, metavar="JSON", help=STORAGE_HELP)
    data_spec: str = option("--data", required=True, help="The dataset (or video dir) the store was built from.")
    student: str | None = option("--student", default=None, help=f"The student: {SPEC_HELP} (default: per task).")
    mode: str = option("--mode", type=click.Choice(["cache", "online", "none"]), default="cache", show_default=True,
                       help="Targets from the store, from a live teacher, or none (hard labels / InfoNCE / CE only).")
    loss: str | None = option(
        "--loss", type=click.Choice(["fkd", "ferkd", "adl", "feat-mse", "simkd", "srrl", "kd", "radi", "teachclip",
                                     "cgt", "fgt"]), default=None,
        help="classification: fkd (default), ferkd, adl, and from a store taught with --features: feat-mse "
             "(FitNets), simkd, srrl; videoqa: radi (default), kd; retrieval: teachclip "
             "(CgT + FgT, default), cgt (CgT only), fgt (FgT only).")
    online_teacher: str | None = option("--online-teacher", default=None,
                                        help="Teacher spec for --mode online (as --teacher of teach).")
    epochs: int = option("--epochs", type=NONNEGATIVE, default=0, show_default=True,
                         help="0 = the store's epochs (classification) or 4 (video tasks).")
    batch_size: int = option("--batch-size", type=POSITIVE, default=128, show_default=True)
    workers: int = option("--workers", type=NONNEGATIVE, default=0, show_default=True,
                          help="DataLoader worker processes.")
    seed: int = option("--seed", type=SEED, default=0, show_default=True)
    out: str = option("--out", required=True, type=click.Path(),
                      help="Directory for the checkpoint and metrics.json.")
    as_json: bool = option("--json", is_flag=True, help="Print the metrics as JSON on stdout (nothing else).")
