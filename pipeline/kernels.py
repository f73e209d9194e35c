"""numba uint8 view kernels: integer arithmetic only, so the same parameters give the same bytes
on any CPU (x86, ARM), any SIMD width and any numba thread count.

Views are uint8 [3, H, W] (CHW). Normalisation (and MixUp blending) happen later on the consumer's
device; these kernels only move and filter bytes.

Resize (antialiased triangle filter, Pillow-style support, exact integer weights). For output pixel i
of an axis resized from n_in to n_out, with D = 2 * max(n_in, n_out):

    r_j = max(0, D - |(2j + 1) * n_out - (2i + 1) * n_in|)        source pixel j in [0, n_in)
    w_j = floor(r_j * 2^14 / sum_j r_j), remainder added to the first largest w_j  (sum w_j = 2^14)

(r_j is the triangle filter of radius max(n_in/n_out, 1) at the distance between the pixel centres,
scaled by 2 * n_out or 2 * n_in to an integer.) Horizontal pass first, rounded to uint8:
t = (sum_j w_j * p_j + 2^13) >> 14, then the vertical pass the same way.

Colour jitter on uint8 with Q8 factors f (factor * 256, rounded), in this order, each clipped to [0, 255]:
    brightness  p' = (p * fb + 128) >> 8
    contrast    m = (sum over pixels of 77 R + 150 G + 29 B) // (256 * H * W)   (exact integer mean)
                p' = m + (((p - m) * fc + 128) >> 8)
    saturation  g = (77 R + 150 G + 29 B + 128) >> 8                          (per pixel)
                p' = g + (((p - g) * fs + 128) >> 8)
(>> is an arithmetic shift: floor division by a power of two, also for negative numbers.)
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

WEIGHT_BITS = 14
_ONE = 1 << WEIGHT_BITS
_HALF = 1 << (WEIGHT_BITS - 1)


@njit(nogil=True, cache=True)
def axis_weights(n_in: int, n_out: int):
    """Integer filter taps for one axis: (start int64 [n_out], w int32 [n_out, K]); sum of each row = 2^14.

    Zero taps stay in the row; start + K never passes n_in when K <= n_in."""
    D = 2 * max(n_in, n_out)
    K = min(D // n_out + 2, n_in)
    start = np.empty(n_out, np.int64)
    w = np.zeros((n_out, K), np.int64)
    for i in range(n_out):
        c2 = (2 * i + 1) * n_in
        j0 = (c2 - D) // (2 * n_out)
        if j0 < 0:
            j0 = 0
        if j0 > n_in - K:
            j0 = max(0, n_in - K)
        start[i] = j0
        s = 0
        for k in range(K):
            j = j0 + k
            if j < n_in:
                d = (2 * j + 1) * n_out - c2
                if d < 0:
                    d = -d
                r = D - d
                if r > 0:
                    w[i, k] = r
                    s += r
        tot = 0
        best = 0
        for k in range(K):
            w[i, k] = w[i, k] * _ONE // s
            tot += w[i, k]
            if w[i, k] > w[i, best]:
                best = k
        w[i, best] += _ONE - tot
    return start, w.astype(np.int32)


@njit(nogil=True, cache=True)
def _crop_resize_into(src, y, x, h, w, flip, out):
    """src uint8 [H, W, 3]; box (y, x, h, w); out uint8 [3, oh, ow] (written); flip reverses columns."""
    oh, ow = out.shape[1], out.shape[2]
    hs, hw = axis_weights(w, ow)
    vs, vw = axis_weights(h, oh)
    kh, kv = hw.shape[1], vw.shape[1]
    tmp = np.empty((h, ow, 3), np.uint8)
    for r in range(h):
        for ox in range(ow):
            j0 = x + hs[ox]
            a0 = _HALF
            a1 = _HALF
            a2 = _HALF
            for k in range(kh):
                wk = hw[ox, k]
                a0 += wk * np.int32(src[y + r, j0 + k, 0])
                a1 += wk * np.int32(src[y + r, j0 + k, 1])
                a2 += wk * np.int32(src[y + r, j0 + k, 2])
            tmp[r, ox, 0] = a0 >> WEIGHT_BITS
            tmp[r, ox, 1] = a1 >> WEIGHT_BITS
            tmp[r, ox, 2] = a2 >> WEIGHT_BITS
    for oy in range(oh):
        r0 = vs[oy]
        for ox in range(ow):
            dx = ow - 1 - ox if flip else ox
            a0 = _HALF
            a1 = _HALF
            a2 = _HALF
            for k in range(kv):
                wk = vw[oy, k]
                a0 += wk * np.int32(tmp[r0 + k, ox, 0])
                a1 += wk * np.int32(tmp[r0 + k, ox, 1])
                a2 += wk * np.int32(tmp[r0 + k, ox, 2])
            out[0, oy, dx] = a0 >> WEIGHT_BITS
            out[1, oy, dx] = a1 >> WEIGHT_BITS
            out[2, oy, dx] = a2 >> WEIGHT_BITS


def crop_resize(src: np.ndarray, box, out_size: tuple[int, int], flip: bool = False) -> np.ndarray:
    """One view: uint8 [H, W, 3] source, box (y, x, h, w) -> uint8 [3, oh, ow]."""
    y, x, h, w = (int(v) for v in box)
    _check_box(src.shape, y, x, h, w)
    out = np.empty((3, int(out_size[0]), int(out_size[1])), np.uint8)
    _crop_resize_into(np.ascontiguousarray(src, dtype=np.uint8), y, x, h, w, bool(flip), out)
    return out


@njit(nogil=True, parallel=True, cache=True)
def _crop_resize_batch(flat, offsets, shapes, boxes, flips, out):
    for b in prange(out.shape[0]):
        H, W = shapes[b, 0], shapes[b, 1]
        src = flat[offsets[b] : offsets[b] + H * W * 3].reshape((H, W, 3))
        _crop_resize_into(src, boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3], flips[b], out[b])


def crop_resize_batch(images: list, boxes: np.ndarray, flips: np.ndarray, out_size) -> np.ndarray:
    """Many views in parallel (numba threads, no GIL): uint8 HWC images, boxes int [B, 4] (y, x, h, w),
    flips bool [B] -> uint8 [B, 3, oh, ow]. Same bytes as crop_resize per view, for any thread count."""
    B = len(images)
    boxes = np.asarray(boxes, np.int64).reshape(B, 4)
    flips = np.asarray(flips, np.bool_).reshape(B)
    shapes = np.array([im.shape[:2] for im in images], np.int64).reshape(B, 2)
    for im, bx in zip(images, boxes):
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [H, W, 3], got {im.dtype} {im.shape}")
        _check_box(im.shape, *bx)
    sizes = shapes[:, 0] * shapes[:, 1] * 3
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    flat = np.concatenate([np.ascontiguousarray(im).reshape(-1) for im in images]) if B else np.empty(0, np.uint8)
    out = np.empty((B, 3, int(out_size[0]), int(out_size[1])), np.uint8)
    if B:
        _crop_resize_batch(flat, offsets, shapes, boxes, flips, out)
    return out


def _check_box(shape, y, x, h, w) -> None:
    H, W = shape[:2]
    if h < 1 or w < 1 or y < 0 or x < 0 or y + h > H or x + w > W:
        raise ValueError(f"box (y={y}, x={x}, h={h}, w={w}) is not inside the {H}x{W} source")


def q8(factor) -> np.ndarray:
    """Jitter factors (float) -> Q8 integers round(factor * 256) (int64); round half to even, IEEE-exact."""
    return np.rint(np.asarray(factor, np.float64) * 256.0).astype(np.int64)


@njit(nogil=True, cache=True)
def jitter_(v, fb, fc, fs):
    """In place on uint8 [3, H, W]: brightness, contrast, saturation with Q8 factors (formulas: module doc)."""
    H, W = v.shape[1], v.shape[2]
    for c in range(3):
        for i in range(H):
            for j in range(W):
                p = (np.int64(v[c, i, j]) * fb + 128) >> 8
                v[c, i, j] = min(255, max(0, p))
    s = 0
    for i in range(H):
        for j in range(W):
            s += 77 * np.int64(v[0, i, j]) + 150 * np.int64(v[1, i, j]) + 29 * np.int64(v[2, i, j])
    m = s // (256 * H * W)
    for c in range(3):
        for i in range(H):
            for j in range(W):
                p = m + (((np.int64(v[c, i, j]) - m) * fc + 128) >> 8)
                v[c, i, j] = min(255, max(0, p))
    for i in range(H):
        for j in range(W):
            g = (77 * np.int64(v[0, i, j]) + 150 * np.int64(v[1, i, j]) + 29 * np.int64(v[2, i, j]) + 128) >> 8
            for c in range(3):
                p = g + (((np.int64(v[c, i, j]) - g) * fs + 128) >> 8)
                v[c, i, j] = min(255, max(0, p))


@njit(nogil=True, cache=True)
def paste_(own, other, y, x, h, w):
    """In place: own[:, y:y+h, x:x+w] = other[:, y:y+h, x:x+w] (CutMix / SelfMix box), uint8 [3, H, W]."""
    for c in range(3):
        for i in range(y, y + h):
            for j in range(x, x + w):
                own[c, i, j] = other[c, i, j]


def set_threads(n: int) -> None:
    """Numba thread count for the batch kernels (results do not depend on it)."""
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
