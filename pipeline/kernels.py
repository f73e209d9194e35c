"""uint8 view kernels (numba, nogil): integer arithmetic only, so the same stored params give the
same bytes on any CPU, SIMD width and thread count.

Resize (crop box (y, x, h, w) of a uint8 HWC source -> (oh, ow)) is a separable triangle
(bilinear) filter, antialiased when downscaling, with integer weights. In units of
1 / (2*out) source pixels, output i has centre c_i = (2i+1)*n, source pixel j has centre
(2j+1)*out and the filter radius is R = 2*max(n, out) (n = source length). Raw weight

    w_ij = max(0, R - |(2j+1)*out - (2i+1)*n|)                       (integers)

quantised to Q14: q_ij = floor(w_ij * 2^14 / sum_j w_ij), the remainder added to the
largest q (first in j order), so sum_j q_ij = 2^14 exactly. Each pass rounds to uint8:
v = (sum_j q_ij * s_j + 2^13) >> 14 (vertical pass first, then horizontal: render version 3).
Each output reads the same number of taps, K = the most non-zero weights of any output.

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

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic

from labelstore.errors import DataError

# numba's own thread pool: unlike GNU OpenMP it survives fork() (DataLoader workers). It runs one
# parallel launch at a time (a second one at once aborts the process), so parallel=True kernels
# run from one thread (the replay loader); the teacher stage's pool threads render with
# parallel=False, and paste_boxes is serial.
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
    """The same filter with every output reading exactly K taps inside [0, n), K the largest count
    of non-zero weights of any output: a start too close to the end moves left and its weights move
    right (zeros fill in), so the inner loops have one fixed length. Returns (starts int64 [out],
    weights int32 [out, K])."""
    out = weights.shape[0]
    K = 1
    for i in range(out):
        for t in range(weights.shape[1]):
            if weights[i, t] != 0:
                K = max(K, t + 1)
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


_B = 4  # output rows (pass 1) / columns (pass 2) per block: the block's int32 accumulators stay in L1


@numba.njit(cache=True, nogil=True)
def resize_into(src, y, x, h, w, dst, dy, dx, oh, ow, flip):
    """Resize src[y:y+h, x:x+w] (uint8 HWC, C-contiguous) into dst[:, dy:dy+oh, dx:dx+ow] (uint8
    CHW), mirrored left-right when flip != 0 (output column j is written to ow-1-j).

    Pass 1 (vertical) filters whole interleaved source rows, so its inner loop runs contiguously
    over w*3 bytes; it stores its rounded result transposed, tmp[col, oi*3 + c], so that pass 2
    (horizontal) again runs contiguously, over oh*3 values per tap. Both passes accumulate blocks
    of _B outputs in int32 (sum_j q_ij * 255 <= 2^14 * 255 < 2^31) and transpose a block on store.
    """
    vs0, vw0 = filter_weights(h, oh)
    hs0, hw0 = filter_weights(w, ow)
    vs, vq = _fixed_taps(vs0, vw0, h)
    hs, hq = _fixed_taps(hs0, hw0, w)
    KV, KH = vq.shape[1], hq.shape[1]
    half = np.int32(ONE >> 1)
    W3, O3 = w * 3, oh * 3
    rows = src.reshape((src.shape[0], src.shape[1] * 3))
    x3 = x * 3
    tmp = np.empty((w, O3), np.uint8)  # pass 1, transposed: tmp[col, oi*3 + c] in 0..255
    acc = np.empty((_B, W3), np.int32)
    for i0 in range(0, oh, _B):
        nb = min(_B, oh - i0)
        for b in range(nb):
            r0 = y + vs[i0 + b]
            for k in range(W3):
                acc[b, k] = half
            a = acc[b]
            for t in range(KV):
                q = vq[i0 + b, t]
                row = rows[r0 + t, x3 : x3 + W3]  # a slice: its indices k >= 0 need no wraparound
                for k in range(W3):
                    a[k] += q * np.int32(row[k])
        # unsigned indices: numba adds no negative-index wraparound to these scalar stores
        u3, ub = np.uint64(3), np.uint64(i0 * 3)
        for col in range(np.uint64(w)):
            trow = tmp[col]
            for b in range(np.uint64(nb)):
                ab = acc[b]
                for c in range(u3):
                    trow[ub + b * u3 + c] = ab[col * u3 + c] >> Q
    acc2 = np.empty((_B, O3), np.int32)
    for j0 in range(0, ow, _B):
        nb = min(_B, ow - j0)
        for b in range(nb):
            s0 = hs[j0 + b]
            for k in range(O3):
                acc2[b, k] = half
            a = acc2[b]
            for t in range(KH):
                q = hq[j0 + b, t]
                col = tmp[s0 + t]
                for k in range(O3):
                    a[k] += q * np.int32(col[k])
        u3 = np.uint64(3)
        first = np.uint64(dx + (ow - 1 - j0 if flip != 0 else j0))
        for c in range(u3):
            for i in range(np.uint64(oh)):
                drow = dst[c, dy + np.int64(i)]
                k = i * u3 + c
                if flip != 0:
                    for b in range(np.uint64(nb)):
                        drow[first - b] = acc2[b, k] >> Q
                else:
                    for b in range(np.uint64(nb)):
                        drow[first + b] = acc2[b, k] >> Q


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
def _run(src, prog, view):
    oh, ow = view.shape[1], view.shape[2]
    for k in range(prog.shape[0]):
        a = prog[k]
        code = a[0]
        if code == OP_END:
            break
        elif code == OP_RESIZE:
            resize_into(src, a[1], a[2], a[3], a[4], view, 0, 0, oh, ow, a[5])
        elif code == OP_FLIP:
            flip_(view)
        elif code == OP_JITTER:
            jitter_(view, a[1], a[2], a[3])
        elif code == OP_PASTE:
            resize_into(src, a[1], a[2], a[3], a[4], view, a[5], a[6], a[7], a[8], 0)


@intrinsic
def _u8_pointer(typingctx, address):
    """The uint8 pointer at an integer address (of a live numpy buffer the caller holds)."""
    sig = types.CPointer(types.uint8)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.uint8)))

    return sig, codegen


@numba.njit(cache=True, nogil=True, parallel=True)
def _render_views(addresses, shapes, src_of, progs, out):
    for b in numba.prange(out.shape[0]):
        s = src_of[b]
        src = numba.carray(_u8_pointer(addresses[s]), (shapes[s, 0], shapes[s, 1], 3))
        _run(src, progs[b], out[b])


@numba.njit(cache=True, nogil=True)
def _render_views_serial(addresses, shapes, src_of, progs, out):
    for b in range(out.shape[0]):
        s = src_of[b]
        src = numba.carray(_u8_pointer(addresses[s]), (shapes[s, 0], shapes[s, 1], 3))
        _run(src, progs[b], out[b])


def render_views(sources: list, src_of: np.ndarray, progs: np.ndarray, out: np.ndarray,
                 parallel: bool = True) -> None:
    """out[b] (uint8 [3, H, W]) = program progs[b] (int64 [n_ops, 9]) run on sources[src_of[b]].

    sources: uint8 [H, W, 3] images, read in place by address (C-contiguous ones are not copied;
    numba's typed lists would cost a compile per process). Views are independent: prange over b,
    the results do not depend on the thread count. parallel=False: on the calling thread only
    (several Python threads rendering batches at once, without numba's barrier per batch).
    """
    srcs = [np.ascontiguousarray(im, dtype=np.uint8) for im in sources]  # held alive until the call returns
    for im in srcs:
        if im.ndim != 3 or im.shape[2] != 3:
            raise DataError(f"a source must be uint8 [H, W, 3], got {im.shape}")
    addresses = np.array([im.ctypes.data for im in srcs], np.int64)
    shapes = np.array([im.shape[:2] for im in srcs], np.int64).reshape(-1, 2)
    src_of = np.ascontiguousarray(src_of, np.int64)
    if len(src_of) and (src_of.min() < 0 or src_of.max() >= len(srcs)):
        raise ValueError(f"src_of must index the {len(srcs)} sources")  # internal invariant
    (_render_views if parallel else _render_views_serial)(addresses, shapes, src_of, progs, out)


@numba.njit(cache=True, nogil=True)
def paste_boxes(out, partner, boxes):
    """CutMix: out[b, :, y:y+h, x:x+w] = partner[b, :, y:y+h, x:x+w] for boxes[b] = (y, x, h, w).

    Serial on the calling thread (a copy): the teacher stage calls it from several threads at once,
    which numba's workqueue layer cannot serve (it aborts the process on concurrent parallel launches)."""
    for b in range(out.shape[0]):
        y, x, h, w = boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3]
        for c in range(3):
            for i in range(y, y + h):
                for j in range(x, x + w):
                    out[b, c, i, j] = partner[b, c, i, j]
