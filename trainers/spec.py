"""Teacher/student specs, weight files and checkpoints (weight hashing and MC dropout: pipeline/teacher.py).

A *spec* names a model in one of these ways (spec_kind tells which):

    "resnet-m"                   a built-in model from labelstore.trainers.models.MODELS
    "my_pkg.teachers:build"      import my_pkg.teachers, call build(**kw) -> nn.Module
    "my_pkg.teachers:build?weights=/abs/net.pt&depth=2"
                                 the same with arguments: build(weights="/abs/net.pt", depth=2, **kw);
                                 each value is parsed as JSON when it parses (2, 0.5, true, null,
                                 [1,2]), else taken as a string. Arguments are always arguments: a
                                 value that is a path stays a string handed to the callable
    "hf:NAME_OR_DIR", "timm:NAME", "torchvision:NAME"
                                 a model from a zoo (trainers/zoo.py), '?' arguments to its loader
    "runs/teacher.pt"            a checkpoint written by save_checkpoint (anything else with a path
                                 separator, a .pt/.pth suffix, or naming an existing file)

`module:callable` is recognised by its shape: dotted Python names on both sides of one ':'.
A state_dict file is loaded into any built model with load_weights (the CLI's --teacher-weights,
--student-weights, --online-teacher-weights).

Every model maps float images [B, 3, H, W] to logits [B, C].
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
from urllib.parse import parse_qsl
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from labelstore.errors import ConfigError
from labelstore.pipeline.teacher import _hash_state, _unwrap
from labelstore.trainers.models import MODELS, build_model
from labelstore.trainers.zoo import ZOOS, load_zoo

CHECKPOINT_FORMAT = 1

# -----------------------------------------------------------------------------
# loading models from specs


def _accepts_kwarg(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins / C callables without a signature
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def spec_arguments(query: str) -> dict[str, Any]:
    """'name=resnet18&depth=2' -> {"name": "resnet18", "depth": 2}: JSON values where they parse, else strings."""
    args: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        try:
            args[key] = json.loads(value)
        except json.JSONDecodeError:
            args[key] = value
    return args


def _parse_arguments(spec: str) -> dict[str, Any]:
    try:
        return spec_arguments(spec.partition("?")[2])
    except ValueError as e:
        raise ConfigError(f"model spec {spec!r}: cannot parse the arguments after '?': {e}") from None


def _load_callable_spec(spec: str, num_classes: int | None, kw: dict) -> nn.Module:
    target = spec.partition("?")[0]
    kw = {**_parse_arguments(spec), **kw}
    module_name, _, attr_path = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - ImportError, or whatever the module raises while importing
        raise ConfigError(f"model spec {spec!r}: cannot import module {module_name!r}: {type(e).__name__}: {e}") from e
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model spec {spec!r}: {obj.__name__ if hasattr(obj, '__name__') else obj!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model spec {spec!r}: {attr_path!r} is not callable")
    if "weights" in kw and not _accepts_kwarg(obj, "weights"):
        raise ConfigError(f"model spec {spec!r}: {attr_path} takes no `weights` argument; to load a state_dict "
                          "into the module it builds, give the file with --teacher-weights (--student-weights, "
                          "--online-teacher-weights) instead")
    # num_classes is forwarded only to callables that accept it (or **kwargs)
    if num_classes is not None and _accepts_kwarg(obj, "num_classes"):
        kw.setdefault("num_classes", num_classes)
    try:
        model = obj(**kw)
    except Exception as e:  # noqa: BLE001 - the user's builder failed: name the spec
        raise ConfigError(f"model spec {spec!r}: {attr_path}(**{kw}) raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model spec {spec!r}: {attr_path}(**{kw}) returned {type(model).__name__}, expected a torch.nn.Module")
    return model


_NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_CALLABLE = re.compile(rf"{_NAME}:{_NAME}(?:\?.*)?", re.DOTALL)


def spec_kind(spec: str) -> str:
    """'builtin', 'zoo' (hf:/timm:/torchvision:), 'callable' (module:callable[?args]), 'checkpoint' or 'unknown'.

    The zoo prefixes and the module:callable shape are decided before any path test, so arguments
    holding paths (?weights=/abs/net.pt) never make a spec a checkpoint."""
    if spec in MODELS:
        return "builtin"
    prefix, sep, _ = spec.partition(":")
    if sep and prefix in ZOOS:
        return "zoo"
    if _CALLABLE.fullmatch(spec):
        return "callable"
    if spec.endswith((".pt", ".pth")) or os.sep in spec or (os.altsep is not None and os.altsep in spec) \
            or os.path.isfile(spec):
        return "checkpoint"
    return "unknown"


def _looks_like_path(spec: str) -> bool:
    return spec_kind(spec) == "checkpoint"


def build(spec: str, num_classes: int | None = None, **kw) -> tuple[nn.Module, dict | None]:
    """(model, preprocessing) for a spec: preprocessing is what a zoo says about its inputs (trainers/zoo.py),
    None for every other kind. load_model is its first half."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"model spec must be a non-empty string, got {spec!r}")
    kind = spec_kind(spec)
    if kind == "builtin":
        return build_model(spec, **({} if num_classes is None else {"num_classes": num_classes}), **kw), None
    if kind == "zoo":
        return load_zoo(spec, num_classes, {**_parse_arguments(spec), **kw})
    if kind == "callable":
        return _load_callable_spec(spec, num_classes, kw), None
    if kind == "checkpoint":
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"model spec {spec!r}: checkpoint file not found")
        ckpt = load_checkpoint(spec)
        return model_from_checkpoint(ckpt, num_classes=num_classes, source=spec, **kw), None
    raise ConfigError(
        f"unknown model spec {spec!r}: expected a built-in model ({', '.join(sorted(MODELS))}), "
        f"'module:callable', a zoo model ({', '.join(f'{z}:NAME' for z in ZOOS)}), or a checkpoint path ending in .pt"
    )


def load_model(spec: str, num_classes: int | None = None, **kw) -> nn.Module:
    """Build a model from a spec (see module docstring).

    num_classes: for built-ins, the classifier size (default: the constructor's, 10);
    for 'module:callable', passed only if the callable takes `num_classes` or **kwargs;
    for zoos, the classes the model must have (trainers/zoo.py);
    for checkpoints, must match the stored value if given.
    kw: constructor kwargs; for checkpoints they override the stored kwargs (the
    state_dict is loaded strictly, so shape-changing overrides fail loudly).
    The returned model is on CPU, in train mode for built-ins/callables and in eval
    mode for checkpoints.
    """
    return build(spec, num_classes, **kw)[0]


# -----------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: str | os.PathLike, model: nn.Module, spec: str, kwargs: dict | None = None, extra: dict | None = None) -> str:
    """Write {"format", "spec", "kwargs", "state_dict", "weights_sha256", "extra"} to `path`
    (atomically, via a temp file + rename) and return the weights hash.

    spec/kwargs must rebuild the architecture: load_model(spec, **kwargs) (include
    num_classes in kwargs). kwargs and extra must hold plain Python values (str, int,
    float, bool, None, lists/tuples/dicts of them) or tensors, as the file is read back
    with torch.load(weights_only=True)."""
    if _looks_like_path(spec):
        raise ConfigError(f"save_checkpoint: spec {spec!r} must be a built-in name or 'module:callable', not a path")
    model = _unwrap(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    digest = _hash_state(state)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "spec": spec,
        "kwargs": dict(kwargs or {}),
        "state_dict": state,
        "weights_sha256": digest,
        "extra": dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return digest


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by save_checkpoint (tensors on CPU) and verify its weights hash."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"checkpoint {str(path)!r}: cannot read it with torch.load(weights_only=True): {e}") from e
    if not isinstance(ckpt, dict) or not {"spec", "kwargs", "state_dict"} <= ckpt.keys():
        raise ConfigError(f"checkpoint {str(path)!r}: not written by labelstore.trainers.spec.save_checkpoint (needs spec, kwargs, state_dict)")
    expected = ckpt.get("weights_sha256")
    if expected is not None and _hash_state(ckpt["state_dict"]) != expected:
        raise ConfigError(f"checkpoint {str(path)!r}: state_dict does not match its stored weights_sha256 (corrupted file?)")
    return ckpt


def model_from_checkpoint(ckpt: dict, num_classes: int | None = None, source: str = "<checkpoint>", **kw) -> nn.Module:
    """Rebuild the architecture from ckpt["spec"]/["kwargs"], load the weights (strict), return it in eval mode."""
    kwargs = dict(ckpt["kwargs"])
    stored_nc = kwargs.pop("num_classes", None)
    if num_classes is not None and stored_nc is not None and num_classes != stored_nc:
        raise ConfigError(f"model spec {source!r}: checkpoint has num_classes={stored_nc}, but num_classes={num_classes} was requested")
    kwargs.update(kw)
    model = load_model(ckpt["spec"], num_classes if num_classes is not None else stored_nc, **kwargs)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise ConfigError(f"model spec {source!r}: weights do not fit {ckpt['spec']!r} with kwargs {kwargs}: {e}") from e
    return model.eval()


def _names(keys, limit: int = 6) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def read_state_dict(path: str, option: str) -> dict[str, torch.Tensor]:
    """The state_dict in a torch.save file: the file's dict of tensors itself, or the one it holds under
    "state_dict" or "model" (a save_checkpoint file, a training script's checkpoint). A "module." prefix
    on every key (a DistributedDataParallel model's) is dropped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{option} {path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a torch.save file, or one holding arbitrary objects
        raise ConfigError(f"{option} {path}: cannot read it with torch.load(weights_only=True): "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    state = obj
    if isinstance(obj, dict):
        state = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), obj)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{option} {path}: not a state_dict (a dict of tensors, or a dict holding one under "
                          f"'state_dict' or 'model'; torch.save(model.state_dict(), {path!r}) writes one)")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str, option: str, spec: str) -> nn.Module:
    """Load the state_dict in `path` (read_state_dict) into `model` (a zoo's wrapper: into the model it
    wraps), strictly: missing keys, unexpected keys and shape mismatches are all named in one ConfigError.
    Returns the model."""
    state = read_state_dict(path, option)
    target = getattr(model, "wrapped", model)
    own = target.state_dict()
    missing, unexpected = own.keys() - state.keys(), state.keys() - own.keys()
    shapes = [f"{k} {list(state[k].shape)} (the model has {list(own[k].shape)})" for k in sorted(own.keys() & state.keys())
              if not nn.parameter.is_lazy(own[k]) and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = ([f"missing keys: {_names(missing)}"] if missing else []) + \
                ([f"unexpected keys: {_names(unexpected)}"] if unexpected else []) + \
                ([f"other shapes: {'; '.join(shapes[:4])}{' ...' if len(shapes) > 4 else ''}"] if shapes else [])
        raise ConfigError(f"{option} {path} does not fit the model of {spec!r} ({len(own)} entries in its "
                          f"state_dict, {len(state)} in the file): {'; '.join(parts)}")
    target.load_state_dict(state, strict=True)
    return model


def load_teacher(spec: str, num_classes: int, weights: str | None = None,
                 option: str = "--teacher-weights") -> tuple[nn.Module, dict]:
    """(model, teacher_info) for any spec, with the state_dict file `weights` loaded into it when given.

    teacher_info (the store's "teacher" attribute): {"name": spec, "weights_sha256": weights_hash of the
    model as built and loaded, "params"}, plus "weights_file": weights when given and "preprocessing"
    (trainers/zoo.py: mean, std, input_size, resample, source) when a zoo says what its inputs are."""
    from labelstore.pipeline.teacher import weights_hash
    from labelstore.trainers.models import count_params

    model, preprocessing = build(spec, num_classes=num_classes)
    if weights is not None:
        load_weights(model, weights, option, spec)
    info = {"name": spec, "weights_sha256": weights_hash(model), "params": count_params(model)}
    if weights is not None:
        info["weights_file"] = str(weights)
    if preprocessing is not None:
        info["preprocessing"] = preprocessing
    return model, info
