"""Per-view teacher features (`teach --features NAME`): the hook, the codecs, the classifier head.

What is recorded, per view, is f = flat(output of the teacher module NAME) on the view the labels
come from (the eval-mode pass; MC-dropout passes are not hooked):

  NAME = "penultimate": the *input* of the teacher's classifier (`classifier`: the last nn.Linear
         in `model.named_modules()` order with out_features = C, the store's classes; for the
         built-in models (trainers/models.py) `head.1`, whose input is `features(x)`, the pooled
         backbone output)
  NAME = any other `model.named_modules()` name: that module's *output*
  flat(y) = y.mean((2, 3)) for a 4-D output [B, C, H, W] (global average pool: [B, C]),
            y.reshape(B, -1) otherwise (a [B, L, D] token output becomes [B, L*D])

Codecs (attribute `features.codec`, per store), row r of an epoch = one view, D = its length:

  float16: values[r] = float16(f[r])                        |f - f~| <= 2^-11 |f|  (+ 2^-25 below 2^-14)
  int8:    scale[r]  = max_j |f[r, j]| / 127   (float32)      values[r] = round(f[r] / scale[r]) in [-127, 127]
           f~[r]     = values[r] * scale[r]                   |f - f~| <= scale[r] / 2 = max|f[r]| / 254

The classifier's weight [C, D] and bias [C] (float32, exact) are stored with
  head_sha256 = sha256(teacher weights_sha256 "\\0" weight bytes bias bytes) (little-endian float32, C order)
so a student (SimKD, SRRL) can reuse the classifier without the teacher checkpoint; `load_head`
checks the hash.
"""

from __future__ import annotations

import contextlib
import hashlib

import numpy as np
import torch
import torch.nn as nn

from labelstore.errors import ConfigError, StoreError, TeacherOutputError

# the arrays: per-epoch values [E, N, D] and scale [E, N] (int8 only); the head [C, D], [C] float32
from .classification_store import FEATURE_SCALE as SCALE
from .classification_store import FEATURE_VALUES as VALUES
from .classification_store import HEAD_BIAS, HEAD_WEIGHT

PENULTIMATE = "penultimate"
CODECS = ("float16", "int8")
INT8_MAX = 127
FLOAT16_MAX = 65504.0


def classifier(model: nn.Module, num_classes: int) -> tuple[str, nn.Linear] | None:
    """(name, module) of the teacher's classifier: the last nn.Linear with out_features = num_classes."""
    found = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            found = (name, m)
    return found


def flat(y: torch.Tensor) -> torch.Tensor:
    """[B, D]: a 4-D map [B, C, H, W] averaged over (H, W); any other shape flattened after the batch axis."""
    return y.mean((2, 3)) if y.ndim == 4 else y.reshape(y.shape[0], -1)


class FeatureHook:
    """Records flat(output of module `name`) (or the classifier's input for "penultimate") of a model.

        hook = FeatureHook(model, "penultimate", num_classes)
        with hook.capture():            # the first call of the module inside the block is kept
            logits = model(x)
        f = hook.take()                 # float32 [B, D]

    Only the first call inside `capture` is kept, so MC-dropout passes of the head that follow the
    eval-mode pass (teacher.mc_forward) do not replace it.
    """

    def __init__(self, model: nn.Module, name: str, num_classes: int):
        self.name = name
        if name == PENULTIMATE:
            found = classifier(model, num_classes)
            if found is None:
                raise ConfigError(f"--features {PENULTIMATE}: the teacher has no nn.Linear with {num_classes} outputs "
                                  f"(its classifier); name a module instead, e.g. {_some_names(model)}")
            self.module_name, module = found
            module.register_forward_pre_hook(lambda m, args: self._keep(args[0]))
        else:
            modules = dict(model.named_modules())
            if name not in modules or name == "":
                raise ConfigError(f"--features {name!r}: no such module in the teacher; valid names: "
                                  f"{PENULTIMATE}, {_some_names(model)}")
            self.module_name, module = name, modules[name]
            module.register_forward_hook(lambda m, args, out: self._keep(out))
        self._armed, self._got = False, None

    def _keep(self, y) -> None:
        if not self._armed or self._got is not None:
            return
        if not isinstance(y, torch.Tensor):
            raise ConfigError(f"--features {self.name}: module {self.module_name!r} gives a {type(y).__name__}, "
                              "not a tensor; name a module whose output is one tensor")
        self._got = flat(y.detach())

    @contextlib.contextmanager
    def capture(self):
        self._armed, self._got = True, None
        try:
            yield self
        finally:
            self._armed = False

    def take(self) -> torch.Tensor:
        if self._got is None:
            raise ConfigError(f"--features {self.name}: module {self.module_name!r} was not called by the "
                              "teacher's forward pass")
        got, self._got = self._got, None
        return got.float()


def _some_names(model: nn.Module, n: int = 6) -> str:
    names = [k for k, _ in model.named_modules() if k]
    shown = names[-n:] if len(names) > n else names
    return ", ".join(shown) + (f" (of {len(names)} modules)" if len(names) > n else "")


def probe_dim(model: nn.Module, hook: FeatureHook, size: tuple[int, int], device) -> int:
    """D: the length of the recorded feature of one view (one forward pass on a zero view [1, 3, H, W])."""
    was = model.training
    model.eval()
    try:
        with torch.inference_mode(), hook.capture():
            model(torch.zeros(1, 3, *size, device=device))
        return int(hook.take().shape[1])
    finally:
        model.train(was)


# -- codecs ---------------------------------------------------------------------------------------------


def encode(f: torch.Tensor, codec: str) -> dict[str, np.ndarray]:
    """{VALUES: [B, D] (float16 or int8), SCALE: [B] float32 (int8 only)} of float32 features f [B, D]."""
    f = f.float().cpu()
    if codec == "float16":
        big = float(f.abs().max()) if f.numel() else 0.0
        if big > FLOAT16_MAX:
            raise TeacherOutputError(f"a teacher feature value of magnitude {big:.4g} is beyond float16's range "
                                     f"({FLOAT16_MAX:.0f}): use --feature-codec int8")
        return {VALUES: f.half().numpy()}
    if codec != "int8":
        raise ConfigError(f"--feature-codec must be one of {', '.join(CODECS)}, got {codec!r}")
    scale = f.abs().amax(1) / INT8_MAX  # [B]; a zero row keeps scale 0 and values 0
    q = f / scale.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    return {VALUES: q.round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8).numpy(), SCALE: scale.numpy()}


def decode(values: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """float32 [n, D] of stored values [n, D] (and, int8, scale [n])."""
    if scale is None:
        return values.astype(np.float32)
    return values.astype(np.float32) * scale.astype(np.float32)[:, None]


def error_bound(f: np.ndarray, codec: str) -> np.ndarray:
    """[n, D]: the largest |f - decode(encode(f))| the codec allows for float32 features f [n, D]."""
    f = np.abs(f.astype(np.float32))
    if codec == "float16":
        return np.maximum(f * 2.0**-11, 2.0**-25)
    return np.broadcast_to(f.max(1, keepdims=True) / (2 * INT8_MAX), f.shape) * (1 + 2.0**-20)


def reconstruction_error(f: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per view of f, g [n, D]: (relative L2 error ||f - g|| / ||f||, cosine <f, g> / (||f|| ||g||)); 0 / 1
    for a zero row."""
    f, g = f.astype(np.float64), g.astype(np.float64)
    nf, ng = np.linalg.norm(f, axis=1), np.linalg.norm(g, axis=1)
    err = np.where(nf > 0, np.linalg.norm(f - g, axis=1) / np.maximum(nf, 1e-300), 0.0)
    cos = np.where((nf > 0) & (ng > 0), (f * g).sum(1) / np.maximum(nf * ng, 1e-300), 1.0)
    return err, cos


# -- the head ------------------------------------------------------------------------------------------


def head_sha256(teacher_sha256: str, weight: np.ndarray, bias: np.ndarray) -> str:
    """sha256 over the teacher's weights hash, a NUL byte and the float32 little-endian bytes of weight, bias."""
    h = hashlib.sha256(f"{teacher_sha256}\0".encode())
    h.update(np.ascontiguousarray(weight, dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(bias, dtype="<f4").tobytes())
    return h.hexdigest()


def head_arrays(linear: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    """(weight [C, D], bias [C]) float32 of the classifier (a zero bias when it has none)."""
    w = linear.weight.detach().float().cpu().numpy()
    b = linear.bias.detach().float().cpu().numpy() if linear.bias is not None else np.zeros(w.shape[0], np.float32)
    return w, b


# -- reading (the student side) -------------------------------------------------------------------------


def _opened(store):
    if isinstance(store, (str, bytes)) or hasattr(store, "__fspath__"):
        import labelstore

        return labelstore.open(store)
    return store


def feature_attrs(store) -> dict | None:
    """The store's `features` attribute ({name, module, codec, dim, pool, head}), or None without features."""
    return _opened(store).attrs.get("features")


def feature_name(store) -> str | None:
    """The --features NAME the store was taught with (a LabelStore or a path), or None without features."""
    a = feature_attrs(store)
    return None if a is None else str(a["name"])


def load_head(store) -> nn.Linear:
    """The teacher's classifier as an nn.Linear(D, C) (float32, weights exactly as the teacher's), from a
    LabelStore or a path. StoreError when the store has no head or its arrays do not match the recorded hash."""
    store = _opened(store)
    a = feature_attrs(store)
    head = (a or {}).get("head")
    if not head:
        raise StoreError(f"{store.path}: no teacher classifier in the store (taught without --features, or the "
                         "teacher has no nn.Linear with one output per class)")
    w = store.read_array(HEAD_WEIGHT).astype(np.float32)
    b = store.read_array(HEAD_BIAS).astype(np.float32)
    got = head_sha256(store.attrs["teacher"]["weights_sha256"], w, b)
    if got != head["sha256"]:
        raise StoreError(f"{store.path}: the arrays {HEAD_WEIGHT}, {HEAD_BIAS} do not match features.head.sha256 "
                         f"(stored {head['sha256'][:12]}, computed {got[:12]})")
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    return lin


def read_features(store, epoch: int, indices) -> np.ndarray:
    """float32 [n, D]: the dequantised features of views (epoch, indices), in the order given."""
    store = _opened(store)
    if feature_attrs(store) is None:
        raise StoreError(f"{store.path}: the store has no features (taught without --features)")
    idx = np.asarray(indices, dtype=np.int64)
    values = store.read_array(VALUES, epoch, idx)
    scale = store.read_array(SCALE, epoch, idx) if SCALE in store.arrays else None
    return decode(values, scale)
