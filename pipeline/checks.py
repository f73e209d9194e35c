"""Checks for settings that are legal but most likely not what the user meant.

Each check returns a warning line (or None), or raises ConfigError when the setting needs an
explicit opt-in. The CLI prints warnings on stderr as `warning: <line>`.
"""

from __future__ import annotations

import torch.nn as nn

from labelstore.errors import ConfigError

from .teacher import has_dropout

LOW_TOPK_MASS = 0.5  # mean top-k mass below this: the stored top-k drops most of the distribution


def check_trained_teacher(spec: str | None, builtin_names, allow_untrained: bool) -> None:
    """A built-in model NAME as the teacher is a freshly initialised (random) network: require opt-in."""
    if spec is not None and spec in builtin_names and not allow_untrained:
        raise ConfigError(
            f"--teacher {spec!r} is a built-in architecture with random, untrained weights; give a trained "
            "checkpoint (.pt) or module:callable, or pass --allow-untrained-teacher if that is what you want")


def mc_without_dropout(model: nn.Module, mc_passes: int) -> str | None:
    """Warning when MC-dropout passes are asked of a model whose passes would all be identical."""
    if mc_passes > 0 and not has_dropout(model):
        return (f"--mc-passes {mc_passes}: the teacher has no dropout layer with p > 0, "
                "so every MC pass will be identical")
    return None


def low_topk_mass(mean_mass: float, top_k: int, threshold: float = LOW_TOPK_MASS) -> str | None:
    """Warning when the stored top-k keeps less than `threshold` of the probability mass on average."""
    if mean_mass < threshold:
        return (f"mean top-{top_k} mass is {mean_mass:.3f} (< {threshold}): the stored labels keep little of the "
                "teacher's distribution; a larger --top-k or a sharper (trained) teacher would keep more")
    return None
