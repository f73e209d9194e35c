"""Teacher/student specs and checkpoints (weight hashing and MC dropout: pipeline/teacher.py).

A *spec* names a model in one of three ways:

    "resnet-m"                   a built-in model from labelstore.trainers.models.MODELS
    "my_pkg.teachers:build"      import my_pkg.teachers, call build(**kw) -> nn.Module
    "timm_like:create_model?name=resnet18&depth=2"
                                 the same with arguments: create_model(name="resnet18", depth=2, **kw);
                                 each value is parsed as JSON when it parses (2, 0.5, true, null,
                                 [1,2]), else taken as a string
    "runs/teacher.pt"            a checkpoint written by save_checkpoint

Every model maps float images [B, 3, H, W] to logits [B, C].
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from urllib.parse import parse_qsl
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from labelstore.errors import ConfigError
from labelstore.pipeline.teacher import _hash_state, _unwrap
from labelstore.trainers.models import MODELS, build_model

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


def _load_callable_spec(spec: str, num_classes: int | None, kw: dict) -> nn.Module:
    target, _, query = spec.partition("?")
    try:
        kw = {**spec_arguments(query), **kw}
    except ValueError as e:
        raise ConfigError(f"model spec {spec!r}: cannot parse the arguments after '?': {e}") from None
    module_name, _, attr_path = target.partition(":")
    if not module_name or not attr_path:
        raise ConfigError(f"model spec {spec!r}: expected 'module:callable'")
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


def _looks_like_path(spec: str) -> bool:
    return spec.endswith((".pt", ".pth")) or os.sep in spec or (os.altsep is not None and os.altsep in spec) or os.path.isfile(spec)


def load_model(spec: str, num_classes: int | None = None, **kw) -> nn.Module:
    """Build a model from a spec (see module docstring).

    num_classes: for built-ins, the classifier size (default: the constructor's, 10);
    for 'module:callable', passed only if the callable takes `num_classes` or **kwargs;
    for checkpoints, must match the stored value if given.
    kw: constructor kwargs; for checkpoints they override the stored kwargs (the
    state_dict is loaded strictly, so shape-changing overrides fail loudly).
    The returned model is on CPU, in train mode for built-ins/callables and in eval
    mode for checkpoints.
    """
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"model spec must be a non-empty string, got {spec!r}")
    if spec in MODELS:
        return build_model(spec, **({} if num_classes is None else {"num_classes": num_classes}), **kw)
    if _looks_like_path(spec):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"model spec {spec!r}: checkpoint file not found")
        ckpt = load_checkpoint(spec)
        return model_from_checkpoint(ckpt, num_classes=num_classes, source=spec, **kw)
    if ":" in spec:
        return _load_callable_spec(spec, num_classes, kw)
    raise ConfigError(
        f"unknown model spec {spec!r}: expected a built-in model ({', '.join(sorted(MODELS))}), "
        "'module:callable', or a checkpoint path ending in .pt"
    )


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


def load_teacher(spec: str, num_classes: int) -> tuple[nn.Module, dict]:
    """(model, teacher_info) for a built-in name, checkpoint path or module:callable."""
    from labelstore.pipeline.teacher import weights_hash
    from labelstore.trainers.models import count_params

    model = load_model(spec, num_classes=num_classes)
    return model, {"name": spec, "weights_sha256": weights_hash(model), "params": count_params(model)}
