"""uint8 view kernels (numba, nogil): integer arithmetic only, so the same stored params give the
same bytes on any CPU, SIMD width and thread count.

Resize (crop box (y, x, h, w) of a uint8 HWC source -> (oh, ow)) is a separable triangle
(bilinear) filter, antialiased when downscaling, with integer weights. In units of
1 / (2*out) source pixels, output i has centre c_i = (2i+1)*n, source pixel j has centre
(2j+1)*out and the filter radius is R = 2*max(n, out) (n = source length). Raw weight

    w_ij = max(0, R - |(2j+1)*out - (2i+1)*n|)                       (integers)

quantised to Q14: q_ij = floor(w_ij * 2^14 / sum_j w_ij), the remainder added to the
largest q (first in j order), so sum_j q_ij = 2^14 exactly. Each pass rounds to uint8:
v = (sum_j q_ij * s_j + 2^13) >> 14 (horizontal pass first, then vertical).

Colour jitter (factors f in Q11: fq = f * 2048, exact for float16 factors in [0, 2)):
    gray(p)    = (4899 r + 9617 g + 1868 b + 2^13) >> 14
    brightness : v = clamp((fq*v + 2^10) >> 11)
    contrast   : m = floor((sum gray * 2048 + n/2) / n)  (mean gray in Q11, exact integers)
                 v = clamp((fq*v*2048 + (2048-fq)*m + 2^21) >> 22)
    saturation : v = clamp((fq*v + (2048-fq)*gray + 2^10) >> 11)
(>> is floor division by a power of two; clamp to [0, 255]).

A batch is rendered by `render_views` over a per-view program of int64 ops (prange over
views, no GIL): see the OP_* codes.
"""

from __future__ import annotations

import threading

import numba
import numpy as np

# numba's own thread pool: unlike GNU OpenMP it survives fork() (DataLoader workers). It runs one
# parallel launch at a time, so a process renders batches from one thread (the teacher stage's
# producer thread, the replay loader).
numba.config.THREADING_LAYER = "workqueue"

Q = 14
ONE = 1 << Q
GRAY_Q14 = (4899, 9617, 1868)  # sums to 2^14

# program op codes; each op is 9 int64: code + 8 args
OP_END, OP_RESIZE, OP_FLIP, OP_JITTER, OP_PASTE = 0, 1, 2, 3, 4
OP_WIDTH = 9


@numba.njit(cache=True, nogil=True)
def filter_weights(n: int, out: int):
    """Q14 weights of resizing length n -> out: (start int64 [out], weights int64 [out, K])."""
    R = 2 * max(n, out)
    K = R // out + 3
    starts = np.zeros(out, np.int64)
    weights = np.zeros((out, K), np.int64)
    raw = np.zeros(K, np.int64)
    for i in range(out):
        c = (2 * i + 1) * n
        lo = max(0, (c - R) // (2 * out) - 1)
        hi = min(n - 1, (c + R) // (2 * out) + 1)
        first = -1
        total = 0
        k = 0
        for j in range(lo, hi + 1):
            d = abs((2 * j + 1) * out - c)
            w = R - d
            if w > 0:
                if first < 0:
                    first = j
                raw[k] = w
                total += w
                k += 1
        starts[i] = first
        s = 0
        best = 0
        for t in range(k):
            q = raw[t] * ONE // total
            weights[i, t] = q
            s += q
            if raw[t] > raw[best]:
                best = t
        weights[i, best] += ONE - s
    return starts, weights


@numba.njit(cache=True, nogil=True)
def _fixed_taps(starts, weights, n):
    """The same filter with every output reading exactly K taps inside [0, n): a start too close to
    the end moves left and its weights move right (zeros fill in), so the inner loops have one
    fixed length. Returns (starts int64 [out], weights int32 [out, K])."""
    out, K = weights.shape
    K = min(K, n)
    s2 = np.empty(out, np.int64)
    w2 = np.zeros((out, K), np.int32)
    for i in range(out):
        st = min(starts[i], n - K)
        s2[i] = st
        for t in range(weights.shape[1]):
            if weights[i, t] != 0:
                w2[i, starts[i] - st + t] = weights[i, t]
    return s2, w2


@numba.njit(cache=True, nogil=True)
def resize_into(src, y, x, h, w, dst, dy, dx, oh, ow):
    """Resize src[y:y+h, x:x+w] (uint8 HWC) into dst[:, dy:dy+oh, dx:dx+ow] (uint8 CHW).

    int32 accumulators suffice: sum_j q_ij * 255 <= 2^14 * 255 < 2^31.
    """
    hs0, hw0 = filter_weights(w, ow)
    vs0, vw0 = filter_weights(h, oh)
    hs, hq = _fixed_taps(hs0, hw0, w)
    vs, vq = _fixed_taps(vs0, vw0, h)
    KH, KV = hq.shape[1], vq.shape[1]
    half = np.int32(ONE >> 1)
    tmp = np.empty((h, ow * 3), np.int32)  # horizontal pass, already rounded to 0..255
    for r in range(h):
        row = src[y + r, x : x + w]
        for i in range(ow):
            s0 = hs[i]
            a0 = half
            a1 = half
            a2 = half
            for t in range(KH):
                q = hq[i, t]
                a0 += q * np.int32(row[s0 + t, 0])
                a1 += q * np.int32(row[s0 + t, 1])
                a2 += q * np.int32(row[s0 + t, 2])
            tmp[r, 3 * i] = a0 >> Q
            tmp[r, 3 * i + 1] = a1 >> Q
            tmp[r, 3 * i + 2] = a2 >> Q
    acc = np.empty(ow * 3, np.int32)
    for i in range(oh):
        r0 = vs[i]
        acc[:] = half
        for t in range(KV):
            q = vq[i, t]
            src_row = tmp[r0 + t]
            for k in range(ow * 3):
                acc[k] += q * src_row[k]
        for j in range(ow):
            for c in range(3):
                dst[c, dy + i, dx + j] = acc[3 * j + c] >> Q


@numba.njit(cache=True, nogil=True)
def flip_(view):
    """Reverse the columns of a uint8 CHW view in place."""
    W = view.shape[2]
    for c in range(view.shape[0]):
        for i in range(view.shape[1]):
            for j in range(W // 2):
                a = view[c, i, j]
                view[c, i, j] = view[c, i, W - 1 - j]
                view[c, i, W - 1 - j] = a


@numba.njit(cache=True, nogil=True)
def _clamp(v):
    return 0 if v < 0 else (255 if v > 255 else v)


@numba.njit(cache=True, nogil=True)
def _gray(view, i, j):
    return (GRAY_Q14[0] * np.int64(view[0, i, j]) + GRAY_Q14[1] * np.int64(view[1, i, j])
            + GRAY_Q14[2] * np.int64(view[2, i, j]) + (ONE >> 1)) >> Q


@numba.njit(cache=True, nogil=True)
def jitter_(view, bq, cq, sq):
    """Brightness, contrast, saturation (Q11 factors; 2048 = identity) in place on uint8 CHW."""
    H, W = view.shape[1], view.shape[2]
    if bq != 2048:
        for c in range(3):
            for i in range(H):
                for j in range(W):
                    view[c, i, j] = _clamp((bq * np.int64(view[c, i, j]) + 1024) >> 11)
    if cq != 2048:
        total = 0
        for i in range(H):
            for j in range(W):
                total += _gray(view, i, j)
        n = H * W
        m = (total * 2048 + n // 2) // n
        for c in range(3):
            for i in range(H):
                for j in range(W):
                    view[c, i, j] = _clamp((cq * np.int64(view[c, i, j]) * 2048 + (2048 - cq) * m + (1 << 21)) >> 22)
    if sq != 2048:
        for i in range(H):
            for j in range(W):
                g = _gray(view, i, j)
                for c in range(3):
                    view[c, i, j] = _clamp((sq * np.int64(view[c, i, j]) + (2048 - sq) * g + 1024) >> 11)


@numba.njit(cache=True, nogil=True)
def _run(flat, offset, sh, sw, prog, view):
    src = flat[offset : offset + sh * sw * 3].reshape((sh, sw, 3))
    oh, ow = view.shape[1], view.shape[2]
    for k in range(prog.shape[0]):
        a = prog[k]
        code = a[0]
        if code == OP_END:
            break
        elif code == OP_RESIZE:
            resize_into(src, a[1], a[2], a[3], a[4], view, 0, 0, oh, ow)
            if a[5] != 0:
                flip_(view)
        elif code == OP_FLIP:
            flip_(view)
        elif code == OP_JITTER:
            jitter_(view, a[1], a[2], a[3])
        elif code == OP_PASTE:
            resize_into(src, a[1], a[2], a[3], a[4], view, a[5], a[6], a[7], a[8])


@numba.njit(cache=True, nogil=True, parallel=True)
def render_views(flat, offsets, shapes, src_of, progs, out):
    """out[b] (uint8 [3, H, W]) = program progs[b] (int64 [n_ops, 9]) run on source src_of[b].

    Sources are packed in `flat` (uint8): source s is flat[offsets[s]:][:H*W*3] with
    (H, W) = shapes[s]. Views are independent: prange over b, results do not depend on the
    thread count.
    """
    for b in numba.prange(out.shape[0]):
        s = src_of[b]
        _run(flat, offsets[s], shapes[s, 0], shapes[s, 1], progs[b], out[b])


@numba.njit(cache=True, nogil=True, parallel=True)
def paste_boxes(out, partner, boxes):
    """CutMix: out[b, :, y:y+h, x:x+w] = partner[b, :, y:y+h, x:x+w] for boxes[b] = (y, x, h, w)."""
    for b in numba.prange(out.shape[0]):
        y, x, h, w = boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3]
        for c in range(3):
            for i in range(y, y + h):
                for j in range(x, x + w):
                    out[b, c, i, j] = partner[b, c, i, j]


_buffers = threading.local()  # one reusable packing buffer per rendering thread


def pack_sources(images: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 HWC images -> (flat uint8, offsets int64 [S], shapes int64 [S, 2]).

    `flat` is a view of this thread's reusable buffer (valid until the thread's next call): a fresh
    100+ MB allocation per batch would cost more in page faults than the rendering itself.
    """
    shapes = np.array([im.shape[:2] for im in images], np.int64).reshape(-1, 2)
    sizes = shapes[:, 0] * shapes[:, 1] * 3
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(images) else np.zeros(0, np.int64)
    total = int(sizes.sum())
    buf = getattr(_buffers, "flat", None)
    if buf is None or len(buf) < total:
        buf = _buffers.flat = np.empty(max(total, 2 * len(buf) if buf is not None else 0), np.uint8)
    flat = buf[:total]
    for im, o, n in zip(images, offsets.tolist(), sizes.tolist()):
        flat[o : o + n] = np.ascontiguousarray(im).reshape(-1)
    return flat, offsets, shapes


# --------------------------------------------------------------------------- pure numpy reference


def reference_weights(n: int, out: int) -> np.ndarray:
    """Dense Q14 weight matrix [out, n] of the docstring's formula (python ints, no numba)."""
    R = 2 * max(n, out)
    m = np.zeros((out, n), np.int64)
    for i in range(out):
        raw = np.array([max(0, R - abs((2 * j + 1) * out - (2 * i + 1) * n)) for j in range(n)], np.int64)
        q = raw * ONE // raw.sum()
        q[int(np.argmax(raw))] += ONE - q.sum()
        m[i] = q
    return m


def reference_resize(src: np.ndarray, box, size) -> np.ndarray:
    """Pure-numpy resize of src[y:y+h, x:x+w] (uint8 HWC) -> uint8 [3, oh, ow]."""
    y, x, h, w = box
    oh, ow = size
    crop = src[y : y + h, x : x + w].astype(np.int64)
    tmp = (np.einsum("ow,hwc->hoc", reference_weights(w, ow), crop) + (ONE >> 1)) >> Q
    out = (np.einsum("ph,hoc->poc", reference_weights(h, oh), tmp) + (ONE >> 1)) >> Q
    return out.transpose(2, 0, 1).astype(np.uint8)


def reference_jitter(view: np.ndarray, bq: int, cq: int, sq: int) -> np.ndarray:
    """Pure-numpy colour jitter of a uint8 CHW view (the docstring's formulas)."""
    v = view.astype(np.int64)

    def gray(v):
        return (GRAY_Q14[0] * v[0] + GRAY_Q14[1] * v[1] + GRAY_Q14[2] * v[2] + (ONE >> 1)) >> Q

    if bq != 2048:
        v = np.clip((bq * v + 1024) >> 11, 0, 255)
    if cq != 2048:
        n = v.shape[1] * v.shape[2]
        m = (int(gray(v).sum()) * 2048 + n // 2) // n
        v = np.clip((cq * v * 2048 + (2048 - cq) * m + (1 << 21)) >> 22, 0, 255)
    if sq != 2048:
        v = np.clip((sq * v + (2048 - sq) * gray(v)[None] + 1024) >> 11, 0, 255)
    return v.astype(np.uint8)
