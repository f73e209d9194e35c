"""Test oracles: pure-numpy versions of the numba kernels' integer formulas (pipeline/kernels.py
docstrings), slow and obviously correct, for tests/test_kernels.py and tests/test_render_torch.py."""

from __future__ import annotations

import numpy as np

from labelstore.pipeline import kernels as K


def reference_weights(n: int, out: int) -> np.ndarray:
    """Dense Q14 weight matrix [out, n] of the docstring's formula (python ints, no numba)."""
    R = 2 * max(n, out)
    m = np.zeros((out, n), np.int64)
    for i in range(out):
        raw = np.array([max(0, R - abs((2 * j + 1) * out - (2 * i + 1) * n)) for j in range(n)], np.int64)
        q = raw * K.ONE // raw.sum()
        q[int(np.argmax(raw))] += K.ONE - q.sum()
        m[i] = q
    return m


def reference_resize(src: np.ndarray, box, size) -> np.ndarray:
    """Pure-numpy resize of src[y:y+h, x:x+w] (uint8 HWC) -> uint8 [3, oh, ow]."""
    y, x, h, w = box
    oh, ow = size
    crop = src[y : y + h, x : x + w].astype(np.int64)
    tmp = (np.einsum("ph,hwc->pwc", reference_weights(h, oh), crop) + (K.ONE >> 1)) >> K.Q  # vertical first
    out = (np.einsum("ow,pwc->poc", reference_weights(w, ow), tmp) + (K.ONE >> 1)) >> K.Q
    return out.transpose(2, 0, 1).astype(np.uint8)


def reference_jitter(view: np.ndarray, bq: int, cq: int, sq: int) -> np.ndarray:
    """Pure-numpy colour jitter of a uint8 CHW view (the docstring's formulas)."""
    v = view.astype(np.int64)

    def gray(v):
        return (K.GRAY_Q14[0] * v[0] + K.GRAY_Q14[1] * v[1] + K.GRAY_Q14[2] * v[2] + (K.ONE >> 1)) >> K.Q

    if bq != 2048:
        v = np.clip((bq * v + 1024) >> 11, 0, 255)
    if cq != 2048:
        n = v.shape[1] * v.shape[2]
        m = (int(gray(v).sum()) * 2048 + n // 2) // n
        v = np.clip((cq * v * 2048 + (2048 - cq) * m + (1 << 21)) >> 22, 0, 255)
    if sq != 2048:
        v = np.clip((sq * v + (2048 - sq) * gray(v)[None] + 1024) >> 11, 0, 255)
    return v.astype(np.uint8)
