"""The teacher at inference: weight hashing, MC-dropout passes, device and precision.

Used by the teacher stages (pipeline/teach*.py) and by anything that recomputes teacher
outputs (verify, online-teacher baselines).
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Callable

import torch
import torch.nn as nn
from labelstore.errors import ConfigError

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile / DataParallel / DDP wrappers
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


# -----------------------------------------------------------------------------
# weights hash


def _hash_state(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy()  # any dtype (bf16, bool, ...) as bytes
        header = f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{tuple(t.shape)}\0{raw.size}\0"
        h.update(header.encode())
        h.update(raw)
    return h.hexdigest()


def weights_hash(model: nn.Module) -> str:
    """sha256 (hex) over the state_dict, in sorted name order: for each entry its name,
    dtype, shape and raw bytes (CPU, contiguous). Includes buffers (BN running stats,
    num_batches_tracked). Same weights -> same hash on any device or memory format."""
    return _hash_state(_unwrap(model).state_dict())


# -----------------------------------------------------------------------------
# MC dropout


def teacher_info(teacher: nn.Module, name: str | None = None) -> dict:
    """The store's "teacher" attribute: name (default: teacher.name, else its class), weights hash, parameter count."""
    return {"name": name or getattr(teacher, "name", type(teacher).__name__), "weights_sha256": weights_hash(teacher),
            "params": int(sum(p.numel() for p in teacher.parameters()))}


def has_dropout(model: nn.Module) -> bool:
    """True if the model contains a dropout layer with p > 0 (i.e. MC passes can differ)."""
    return any(isinstance(m, DROPOUT_TYPES) and m.p > 0 for m in model.modules())


def set_mc_dropout(model: nn.Module, enabled: bool) -> nn.Module:
    """Put everything in eval mode; if enabled, switch only the dropout layers back to
    train mode (BatchNorm keeps using its running statistics). Returns the model."""
    model.eval()
    if enabled:
        for m in model.modules():
            if isinstance(m, DROPOUT_TYPES):
                m.train()
    return model


def _pass_seed(seed: int, t: int) -> int:
    """splitmix64-style mix of (seed, pass) into a 63-bit torch seed."""
    mask = (1 << 64) - 1
    x = (seed * 0x9E3779B97F4A7C15 + t + 0x632BE59BD9B4E019) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return (x ^ (x >> 31)) >> 1


@contextlib.contextmanager
def _seeded(device: torch.device, seed: int):
    """Seed the CPU generator and `device`'s generator; restore both afterwards."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            torch.default_generator.manual_seed(seed)
            torch.cuda.default_generators[index].manual_seed(seed)
            yield
    elif device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield
    else:  # other accelerators: seed everything, restore what fork_rng can restore
        with torch.random.fork_rng(devices=[0], device_type=device.type):
            torch.manual_seed(seed)
            yield


def _dropout_only_in(model: nn.Module, part: nn.Module) -> bool:
    inside = {id(m) for m in part.modules()}
    return all(id(m) in inside for m in model.modules() if isinstance(m, DROPOUT_TYPES) and m.p > 0)


@torch.no_grad()
def mc_head_passes(
    head: Callable[..., torch.Tensor],
    feats: torch.Tensor | tuple[torch.Tensor, ...],
    passes: int,
    generator_seed: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The MC passes themselves: [B, T, C], output t = head(feats) (head(*feats) for a tuple/list)
    with torch's RNG seeded by mix(generator_seed, t) (`_pass_seed`) inside `_seeded(device)`, so
    the caller's RNG state is untouched and pass t does not depend on T. No gradient.

    Does not touch train/eval flags: the caller puts the dropout layers in train mode first
    (set_mc_dropout(model, True)) and restores the flags afterwards. `head` may be a model's head
    (feats computed once by its backbone) or the whole model (feats = its inputs). device: the
    generator to seed (default: the device of the first input tensor). Shared by mc_forward and
    the VideoQA teacher stage (labelstore.pipeline.teach_videoqa.mc_forward_qa). passes must be >= 1.
    """
    if passes < 1:
        raise ConfigError(f"passes must be >= 1, got {passes}")
    args = tuple(feats) if isinstance(feats, (tuple, list)) else (feats,)
    if device is None:
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
    device = torch.device(device)
    mc = []
    for t in range(passes):
        with _seeded(device, _pass_seed(generator_seed, t)):
            mc.append(head(*args))
    return torch.stack(mc, 1)


@torch.no_grad()
def mc_forward(model: nn.Module, x: torch.Tensor, passes: int, generator_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic logits plus `passes` MC-dropout passes.

    Returns (logits [B, C], mc_logits [B, T, C]), both float32. logits is the eval-mode
    output (dropout off); each MC pass runs with only the dropout layers in train mode.

    If the model has `.features` and `.head` and every dropout layer (p > 0) lives in
    `.head`, the backbone runs once and only the head runs T times; the result equals
    running the full model T times (same seeds, same RNG consumption).

    Pass t draws its dropout masks from torch's RNG seeded with mix(generator_seed, t),
    inside torch.random.fork_rng, so the global RNG state is untouched and the same
    batch with the same seed gives identical outputs; pass t does not depend on T.
    Caveat: masks are drawn for the whole [B, ...] tensor at once, so a sample's mask
    depends on (seed, batch composition: B and its position in the batch), not on the
    sample alone. Derive generator_seed from e.g. (run seed, epoch, batch index) and keep
    batching fixed if MC outputs must be reproducible.

    Module train/eval flags are restored on return. Runs under whatever autocast the
    caller has active.
    """
    if passes < 0:
        raise ConfigError(f"passes must be >= 0, got {passes}")
    modes = {m: m.training for m in model.modules()}
    try:
        split = (
            callable(getattr(model, "features", None))
            and isinstance(getattr(model, "head", None), nn.Module)
            and _dropout_only_in(model, model.head)
        )
        set_mc_dropout(model, False)
        if split:
            feats = model.features(x)
            logits = model.head(feats)
        else:
            logits = model(x)
        if passes:
            set_mc_dropout(model, True)
            mc_logits = mc_head_passes(model.head if split else model, (feats,) if split else (x,), passes, generator_seed,
                                       device=x.device)
        else:
            mc_logits = logits.new_empty(logits.shape[0], 0, logits.shape[-1])
        return logits.float(), mc_logits.float()
    finally:
        for m, t in modes.items():
            m.training = t


# -----------------------------------------------------------------------------
# devices / precision


def pick_device(prefer: str | torch.device | None = None) -> torch.device:
    """prefer None/"auto": cuda if available, else cpu. Otherwise the named device;
    asking for cuda when it is not available is an error (no silent CPU fallback)."""
    if prefer is None or (isinstance(prefer, str) and prefer.lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(prefer)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(prefer)!r} (--device) requested but CUDA is not available")
    return dev


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """Mixed-precision dtype used on `device`: bf16 on CUDA if supported, else fp16; None on CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_context(device: torch.device | str, enabled: bool | None = None):
    """torch.autocast with autocast_dtype(device) on CUDA (enabled by default there);
    a nullcontext on CPU or when enabled=False."""
    device = torch.device(device)
    dtype = autocast_dtype(device)
    if enabled is None:
        enabled = dtype is not None
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
