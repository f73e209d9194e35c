"""Checks for settings that are legal but most likely not what the user meant.

Each check returns a warning line (or None), or raises ConfigError when the setting needs an
explicit opt-in. The CLI prints warnings on stderr as `warning: <line>`.
"""

from __future__ import annotations

import torch.nn as nn

from labelstore.errors import ConfigError

from .teacher import has_dropout

LOW_TOPK_MASS = 0.5  # mean top-k mass below this: the stored top-k drops most of the distribution
CHANCE_FACTOR = 1.5  # top-1 agreement below 1.5 x chance (at most halfway to 1): the teacher looks untrained
SPLIT_RATIO = 0.8  # agreement on one value of a view parameter below 0.8 x on the other: that op hurts


def check_trained_teacher(spec: str | None, builtin_names, allow_untrained: bool, weights: str | None = None) -> None:
    """A built-in model NAME as the teacher, without --teacher-weights, is a freshly initialised (random)
    network: require opt-in. (Any other spec is judged by its agreement with the labels: untrained_teacher.)"""
    if spec is not None and spec in builtin_names and weights is None and not allow_untrained:
        raise ConfigError(
            f"--teacher {spec!r} is a built-in architecture with random, untrained weights; give a trained "
            "checkpoint (.pt), module:callable or --teacher-weights FILE, or pass --allow-untrained-teacher if "
            "that is what you want")


def mc_without_dropout(model: nn.Module, mc_passes: int) -> str | None:
    """Warning when MC-dropout passes are asked of a model whose passes would all be identical."""
    if mc_passes > 0 and not has_dropout(model):
        return (f"--mc-passes {mc_passes}: the teacher has no dropout layer with p > 0, "
                "so every MC pass will be identical")
    return None


def input_size_differs(input_size, spec: str, image_size: int) -> str | None:
    """Warning when a zoo model's own input size ([H, W] from its preprocessing config) is not the views'."""
    if input_size and list(input_size) != [image_size, image_size]:
        return (f"--teacher {spec} takes {input_size[0]}x{input_size[1]} inputs (its preprocessing config), but the "
                f"views are {image_size}x{image_size} (--image-size {input_size[0]} if it needs its own size)")
    return None


def low_topk_mass(mean_mass: float, top_k: int, threshold: float = LOW_TOPK_MASS) -> str | None:
    """Warning when the stored top-k keeps less than `threshold` of the probability mass on average."""
    if mean_mass < threshold:
        return (f"mean top-{top_k} mass is {mean_mass:.3f} (< {threshold}): the stored labels keep little of the "
                "teacher's distribution; a larger --top-k or a sharper (trained) teacher would keep more")
    return None


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def agreement_line(a: dict) -> str | None:
    """One line of classification_inspect.teacher_agreement: overall, and split by each boolean view parameter."""
    if not a["views"]:
        return None
    line = f"teacher top-1 agreement with the labels: {_pct(a['top1'])} of {a['views']} views (chance {_pct(a['chance'])})"
    for key, split in a["by_param"].items():
        line += f"; by {key}: true {_pct(split['true']['top1'])} of {split['true']['views']}, " \
                f"false {_pct(split['false']['top1'])} of {split['false']['views']}"
    return line


def untrained_teacher(a: dict, spec: str, factor: float = CHANCE_FACTOR) -> str | None:
    """Warning when the teacher's top-1 agreement with the labels is near chance, whatever its spec:

        agreement < min(factor * chance, (1 + chance) / 2),  chance = share of the most frequent class

    (what a constant prediction reaches; 1/C for balanced classes: 15 % for 10 classes)."""
    if not a["views"]:
        return None
    bar = min(factor * a["chance"], (1 + a["chance"]) / 2)
    if a["top1"] < bar:
        return (f"--teacher {spec}: top-1 agreement with the labels is {_pct(a['top1'])}, near chance "
                f"({_pct(a['chance'])}; below {_pct(bar)}): are its weights loaded (--teacher-weights FILE or "
                "?weights=...) and does it see its inputs as trained (mean/std, size, classes in folder order)?")
    return None


def split_gap(a: dict, ratio: float = SPLIT_RATIO) -> list[str]:
    """Warnings for boolean view parameters whose views the teacher gets much less often right:
    agreement(one value) < ratio * agreement(the other), each side with at least one view."""
    out = []
    for key, s in a["by_param"].items():
        t, f = s["true"], s["false"]
        if not t["views"] or not f["views"]:
            continue
        worse, better = (("true", "false") if t["top1"] < f["top1"] else ("false", "true"))
        if s[worse]["top1"] < ratio * s[better]["top1"]:
            out.append(f"the teacher agrees with the labels on {_pct(s[worse]['top1'])} of the views with {key} "
                       f"{worse} against {_pct(s[better]['top1'])} with {key} {better}: that op does not suit this "
                       f"data or this teacher (choose a --policy without it)")
    return out
