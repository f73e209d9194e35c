"""Models from the zoos: `hf:NAME_OR_DIR`, `timm:NAME`, `torchvision:NAME` (trainers/spec.py dispatches here).

Each loader returns (model, preprocessing): the model maps float images [B, 3, H, W] (normalised
by the policy's mean/std) to logits [B, C]; preprocessing is what the zoo says the model was
trained on, recorded in the store's teacher attribute:

    {"mean": [3 floats], "std": [3 floats], "input_size": [H, W] or None, "resample": "bilinear" | ...,
     "source": where it was read}

or None where the zoo gives none. Arguments after '?' (spec_arguments) go to the zoo's loader.

  hf:NAME_OR_DIR    transformers.AutoModelForImageClassification.from_pretrained(NAME_OR_DIR,
                    local_files_only=True, **args): a local directory (save_pretrained) or a model
                    in the user's hub cache; preprocessing from AutoImageProcessor.from_pretrained.
                    Needs the `hf` extra (pip install 'labelstore[hf]').
  timm:NAME         timm.create_model(NAME, pretrained=True, num_classes=C, **args); preprocessing
                    from timm.data.resolve_data_config(model=model). Needs `pip install timm`.
  torchvision:NAME  torchvision.models.get_model(NAME, weights="DEFAULT", **args) (num_classes=C only
                    with ?weights=null); preprocessing from the weights' transforms(). Needs
                    `pip install torchvision`.
The timm and torchvision loaders are written against those libraries' documented APIs; neither
installs against the torch build this project is tested with, so only their spec parsing and
missing-package errors are tested.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import torch
import torch.nn as nn

from labelstore.errors import ConfigError

# zoo prefix -> (module imported, what to install)
ZOOS: dict[str, tuple[str, str]] = {
    "hf": ("transformers", "pip install 'labelstore[hf]'"),
    "timm": ("timm", "pip install timm"),
    "torchvision": ("torchvision", "pip install torchvision"),
}

# PIL resampling filters by their enum value (what transformers' image processors record)
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _require(zoo: str, spec: str) -> Any:
    module, install = ZOOS[zoo]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"model spec {spec!r} needs the {module} package, which is not installed ({install})") from e


def _floats(v) -> list[float] | None:
    if v is None:
        return None
    v = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3)]
    return v if len(v) == 3 else None


class HFImageClassifier(nn.Module):
    """A transformers image classifier as a labelstore model: x [B, 3, H, W] -> logits [B, C].

    `wrapped` is the transformers model: --*-weights state_dicts load into it (its own key names)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def wrapped(self) -> nn.Module:
        return self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


@contextlib.contextmanager
def _quiet_transformers(transformers):
    """No progress bars or advice lines from transformers while loading (the CLI prints its own)."""
    log = transformers.utils.logging
    level, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()


def _hf_size(proc) -> list[int] | None:
    """[H, W] the processor hands the model: the centre crop when it crops, else its resize size."""
    size = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None
    size = size or getattr(proc, "size", None)
    get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    if size is None:
        return None
    if get("height") and get("width"):
        return [int(get("height")), int(get("width"))]
    if get("shortest_edge"):
        return [int(get("shortest_edge"))] * 2
    return None


def _hf_preprocessing(proc) -> dict:
    normalise = getattr(proc, "do_normalize", True)
    resample = getattr(proc, "resample", None)
    resample = _PIL_RESAMPLE.get(int(resample), str(resample)) if resample is not None else None
    return {"mean": _floats(getattr(proc, "image_mean", None)) if normalise else [0.0] * 3,
            "std": _floats(getattr(proc, "image_std", None)) if normalise else [1.0] * 3,
            "input_size": _hf_size(proc), "resample": resample,
            "source": f"image processor config ({type(proc).__name__})"}


def load_hf(spec: str, name: str, num_classes: int | None, args: dict) -> tuple[nn.Module, dict | None]:
    transformers = _require("hf", spec)
    kw = {"local_files_only": True, **args}
    with _quiet_transformers(transformers):
        try:
            model = transformers.AutoModelForImageClassification.from_pretrained(name, **kw)
        except (OSError, ValueError, KeyError) as e:
            where = "" if not kw["local_files_only"] else (" (not a local directory, and not in the hub cache: "
                                                            "local_files_only=True)")
            raise ConfigError(f"model spec {spec!r}: transformers cannot load {name!r}{where}: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        try:
            proc = transformers.AutoImageProcessor.from_pretrained(name, local_files_only=kw["local_files_only"])
        except (OSError, ValueError, KeyError):
            proc = None  # a model directory without preprocessor_config.json: its input convention is unknown
    labels = int(model.config.num_labels)
    if num_classes is not None and labels != num_classes:
        raise ConfigError(f"model spec {spec!r}: the model has {labels} labels (config.num_labels), but {num_classes} "
                          f"classes are needed; for a new classifier head add ?num_labels={num_classes}"
                          "&ignore_mismatched_sizes=true")
    return HFImageClassifier(model), (_hf_preprocessing(proc) if proc is not None else None)


def load_timm(spec: str, name: str, num_classes: int | None, args: dict) -> tuple[nn.Module, dict | None]:
    timm = _require("timm", spec)
    kw = {"pretrained": True, **({"num_classes": num_classes} if num_classes is not None else {}), **args}
    try:
        model = timm.create_model(name, **kw)
    except Exception as e:  # noqa: BLE001 - unknown name, no weights in the cache, bad argument: name the spec
        raise ConfigError(f"model spec {spec!r}: timm.create_model({name!r}, **{kw}) raised {type(e).__name__}: {e}") from e
    cfg = timm.data.resolve_data_config({}, model=model)  # {"input_size": (3, H, W), "mean", "std", "interpolation", ...}
    size = cfg.get("input_size")
    return model, {"mean": _floats(cfg.get("mean")), "std": _floats(cfg.get("std")),
                   "input_size": [int(size[-2]), int(size[-1])] if size else None,
                   "resample": cfg.get("interpolation"), "source": "timm.data.resolve_data_config"}


def load_torchvision(spec: str, name: str, num_classes: int | None, args: dict) -> tuple[nn.Module, dict | None]:
    tv = _require("torchvision", spec)
    kw = {"weights": "DEFAULT", **args}
    if kw["weights"] is None and num_classes is not None:
        kw.setdefault("num_classes", num_classes)  # a fresh head: pretrained weights fix it to their classes
    try:
        weights = tv.models.get_model_weights(name).verify(kw["weights"]) if kw["weights"] is not None else None
    except Exception as e:  # noqa: BLE001 - unknown model name or weights name
        raise ConfigError(f"model spec {spec!r}: torchvision has no weights {kw['weights']!r} for {name!r}: "
                          f"{type(e).__name__}: {e}") from e
    classes = len((weights.meta.get("categories") or [])) if weights is not None else None
    if classes is not None and num_classes is not None and classes != num_classes:
        raise ConfigError(f"model spec {spec!r}: the {weights} weights have {classes} classes, but {num_classes} are "
                          "needed; for a new head add ?weights=null (and load yours with --teacher-weights FILE)")
    try:
        model = tv.models.get_model(name, **kw)
    except Exception as e:  # noqa: BLE001 - bad argument, weights not downloadable: name the spec
        raise ConfigError(f"model spec {spec!r}: torchvision.models.get_model({name!r}, **{kw}) raised "
                          f"{type(e).__name__}: {e}") from e
    if weights is None:
        return model, None
    t = weights.transforms()  # torchvision.transforms._presets.ImageClassification
    crop = getattr(t, "crop_size", None)
    return model, {"mean": _floats(getattr(t, "mean", None)), "std": _floats(getattr(t, "std", None)),
                   "input_size": [int(crop[0]), int(crop[-1])] if crop else None,
                   "resample": str(getattr(getattr(t, "interpolation", None), "value", None)),
                   "source": f"{weights}.transforms()"}


LOADERS = {"hf": load_hf, "timm": load_timm, "torchvision": load_torchvision}


def load_zoo(spec: str, num_classes: int | None, args: dict) -> tuple[nn.Module, dict | None]:
    """(model, preprocessing) for 'ZOO:NAME' with its '?' arguments already parsed into `args`."""
    zoo, _, name = spec.partition("?")[0].partition(":")
    if not name:
        raise ConfigError(f"model spec {spec!r}: expected '{zoo}:NAME'")
    return LOADERS[zoo](spec, name, num_classes, args)
