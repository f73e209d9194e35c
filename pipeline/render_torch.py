"""The render program of pipeline/kernels.py as device-agnostic torch integer operations.

The same bytes as the numba kernels on any torch device (CPU, CUDA, ...): the same Q14 taps
(computed by kernels.filter_weights / kernels._fixed_taps), the same order of passes (vertical,
then horizontal, each rounded to uint8: v = (sum_t q_t s_t + 2^13) >> 14), the flip folded into
the horizontal taps, the same integer colour jitter, SelfMix pastes, CutMix boxes, and MixUp
partners + lam for `to_input`. Every product and sum is exact in int32/int64, so no device or
library setting can change a byte.

    sources = [torch.from_numpy(img).to("cuda") for img in decoded]   # uint8 [H, W, 3], once per image
    views = render_batch(policy, sources, rows, partner_sources, partner_rows)   # Views on cuda
    x = policy.to_input(views)                                        # float32 [B, 3, H, W] on cuda
"""

from __future__ import annotations

import numpy as np
import torch

from labelstore.errors import DataError

from . import kernels as K
from .augment import CutMix, MixUp, Policy, Views, _is_user_op

__all__ = ["render_batch", "render_programs", "resize", "resize_batch"]

_HALF = 1 << (K.Q - 1)


def _taps(n: int, out: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 [out, K] source indices and int32 [out, K] Q14 weights of resizing n -> out."""
    starts, weights = K._fixed_taps(*K.filter_weights(n, out), n)
    idx = starts[:, None] + np.arange(weights.shape[1])[None]
    return torch.from_numpy(idx).to(device), torch.from_numpy(weights).to(device)


def resize(src: torch.Tensor, box, size, flip: bool = False) -> torch.Tensor:
    """uint8 [3, oh, ow] from src[y:y+h, x:x+w] (uint8 [H, W, 3]), mirrored when flip: kernels.resize_into."""
    y, x, h, w = (int(v) for v in box)
    oh, ow = (int(v) for v in size)
    crop = src[y : y + h, x : x + w]  # [h, w, 3]
    vi, vq = _taps(h, oh, src.device)
    hi, hq = _taps(w, ow, src.device)
    if flip:
        hi, hq = hi.flip(0), hq.flip(0)
    rows = crop.index_select(0, vi.reshape(-1)).reshape(oh, vi.shape[1], w, 3).to(torch.int32)
    tmp = ((rows * vq[:, :, None, None]).sum(1) + _HALF) >> K.Q  # [oh, w, 3] in 0..255 (int64)
    cols = tmp.index_select(1, hi.reshape(-1)).reshape(oh, ow, hi.shape[1], 3)
    out = ((cols * hq[None, :, :, None]).sum(2) + _HALF) >> K.Q  # [oh, ow, 3]
    return out.permute(2, 0, 1).to(torch.uint8)


def _padded_taps(lengths: list, out: int, flips: list, device) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 [B, out, K] indices and int32 [B, out, K] weights of resizing lengths[b] -> out, zero
    weights padding every view to the batch's largest K; output j reads taps ow-1-j when flips[b]."""
    taps = [K._fixed_taps(*K.filter_weights(n, out), n) for n in lengths]
    k = max(w.shape[1] for _, w in taps)
    idx = np.zeros((len(taps), out, k), np.int64)
    wts = np.zeros((len(taps), out, k), np.int32)
    for b, (st, w) in enumerate(taps):
        i = st[:, None] + np.arange(k)[None]
        i = np.minimum(i, lengths[b] - 1)  # padded taps (weight 0) stay inside the crop
        wts[b, :, : w.shape[1]] = w
        idx[b] = i
        if flips[b]:
            idx[b], wts[b] = idx[b, ::-1], wts[b, ::-1]
    return torch.from_numpy(idx).to(device), torch.from_numpy(wts).to(device)


def resize_batch(srcs: list, src_of, boxes, size, flips) -> torch.Tensor:
    """uint8 [B, 3, oh, ow]: resize(srcs[src_of[b]], boxes[b], size, flips[b]) for every b at once
    (sources zero-padded into one [S, Hmax, Wmax, 3] tensor; a few batched gathers per tap)."""
    dev = srcs[0].device
    oh, ow = size
    B = len(boxes)
    Hm, Wm = max(int(s.shape[0]) for s in srcs), max(int(s.shape[1]) for s in srcs)
    S = torch.zeros((len(srcs), Hm, Wm, 3), dtype=torch.uint8, device=dev)
    for i, s in enumerate(srcs):
        S[i, : s.shape[0], : s.shape[1]] = s
    y, x, h, w = (np.array([int(b[k]) for b in boxes], np.int64) for k in range(4))
    vi, vq = _padded_taps(h.tolist(), oh, [False] * B, dev)  # [B, oh, KV]
    hi, hq = _padded_taps(w.tolist(), ow, list(flips), dev)  # [B, ow, KH]
    wc = int(w.max())
    cols = torch.from_numpy(x[:, None] + np.minimum(np.arange(wc)[None], w[:, None] - 1)).to(dev)  # [B, wc]
    rows = vi + torch.from_numpy(y).to(dev)[:, None, None]  # absolute source rows
    si = torch.as_tensor(np.asarray(src_of, np.int64), device=dev)[:, None, None]
    # int32 suffices: sum_t q_t * 255 <= 2^14 * 255 < 2^31
    acc = torch.full((B, oh, wc, 3), _HALF, dtype=torch.int32, device=dev)
    for t in range(vi.shape[2]):
        g = S[si, rows[:, :, t, None], cols[:, None, :]]  # [B, oh, wc, 3] uint8
        acc += vq[:, :, t, None, None] * g
    tmp = acc >> K.Q  # [B, oh, wc, 3] in 0..255
    out = torch.full((B, oh, ow, 3), _HALF, dtype=torch.int32, device=dev)
    for t in range(hi.shape[2]):
        g = tmp.gather(2, hi[:, None, :, t, None].expand(B, oh, ow, 3))
        out += hq[:, None, :, t, None] * g
    return (out >> K.Q).permute(0, 3, 1, 2).to(torch.uint8)


def _gray(v: torch.Tensor) -> torch.Tensor:
    """int64 [H, W] = (4899 r + 9617 g + 1868 b + 2^13) >> 14 of an int64 [3, H, W] view."""
    g0, g1, g2 = K.GRAY_Q14
    return (g0 * v[0] + g1 * v[1] + g2 * v[2] + _HALF) >> K.Q


def jitter(view: torch.Tensor, bq: int, cq: int, sq: int) -> torch.Tensor:
    """kernels.jitter_ on a uint8 [3, H, W] view (Q11 factors, 2048 = identity), returns uint8."""
    v = view.to(torch.int64)
    if bq != 2048:
        v = ((bq * v + 1024) >> 11).clamp_(0, 255)
    if cq != 2048:
        n = v.shape[1] * v.shape[2]
        m = (_gray(v).sum() * 2048 + n // 2) // n
        v = ((cq * v * 2048 + (2048 - cq) * m + (1 << 21)) >> 22).clamp_(0, 255)
    if sq != 2048:
        v = ((sq * v + (2048 - sq) * _gray(v)[None] + 1024) >> 11).clamp_(0, 255)
    return v.to(torch.uint8)


def render_programs(sources: list, src_of, progs: np.ndarray, size, device=None) -> torch.Tensor:
    """uint8 [V, 3, oh, ow] on `device`: program progs[b] (int64 [n_ops, 9], kernels.OP_*) run on
    sources[src_of[b]] (uint8 [H, W, 3] tensors or arrays; moved to `device` once each)."""
    device = torch.device(device) if device is not None else (
        sources[0].device if len(sources) and isinstance(sources[0], torch.Tensor) else torch.device("cpu"))
    srcs = [s.to(device) if isinstance(s, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(s)).to(device)
            for s in sources]
    oh, ow = size
    progs = np.asarray(progs)
    out = torch.zeros((len(progs), 3, oh, ow), dtype=torch.uint8, device=device)
    first = np.nonzero(progs[:, 0, 0] == K.OP_RESIZE)[0] if len(progs) else np.zeros(0, np.int64)
    if len(first):  # every view starts with its geometry op: one batched resize
        out[torch.from_numpy(first).to(device)] = resize_batch(
            srcs, np.asarray(src_of)[first], progs[first, 0, 1:5].tolist(), (oh, ow), progs[first, 0, 5].tolist())
    for b, prog in enumerate(progs.tolist()):
        src = srcs[int(src_of[b])]
        view = out[b]
        for k, a in enumerate(prog):
            code = a[0]
            if code == K.OP_END:
                break
            if code == K.OP_RESIZE:
                if k > 0:
                    view[:] = resize(src, a[1:5], (oh, ow), bool(a[5]))
            elif code == K.OP_FLIP:
                view[:] = view.flip(-1)
            elif code == K.OP_JITTER:
                view[:] = jitter(view, *a[1:4])
            elif code == K.OP_PASTE:
                y, x, h, w = a[5:9]
                view[:, y : y + h, x : x + w] = resize(src, a[1:5], (h, w))
    return out


def render_batch(policy: Policy, images: list, rows: dict, partner_images=None, partner_rows=None,
                 device=None) -> Views:
    """Policy.render_batch on any torch device, byte for byte: Views with tensors on `device`
    (default: the device of the first source tensor, else CPU). images / partner_images: uint8
    [H, W, 3] tensors (already on the device: uploaded once per image) or arrays."""
    n = len(images)
    shape = (lambda im: None if im is None else tuple(int(v) for v in im.shape[:2]))
    prog, rowdicts, mixed = policy.plan([shape(im) for im in images], rows,
                                        [shape(im) for im in partner_images] if partner_images is not None else None,
                                        partner_rows)
    srcs = list(images) + [partner_images[i] for i in mixed.tolist()]
    for im in srcs:
        if im.dtype not in (torch.uint8, np.uint8) or im.ndim != 3 or im.shape[2] != 3:
            raise DataError(f"image must be [H, W, 3] uint8, got {tuple(im.shape)} {im.dtype}")
    out = render_programs(srcs, np.arange(len(srcs)), prog, policy.output_size, device)
    if any(_is_user_op(op) for op in policy.ops):  # user ops edit numpy views: run them on the CPU
        cpu = out.cpu().numpy()
        for op in policy.ops:
            if _is_user_op(op):
                for b, r in enumerate(rowdicts):
                    op.apply_u8(cpu[b], policy._op_params(op, r))
        out = torch.from_numpy(cpu).to(out.device)
    x = out[:n]
    mix = policy._mix
    if isinstance(mix, (CutMix, MixUp)):
        partner = torch.zeros_like(x)
        partner[torch.from_numpy(mixed).to(x.device)] = out[n:]
        if isinstance(mix, CutMix):
            for b, (y, x0, h, w) in enumerate(policy.cutmix_boxes(rows, n).tolist()):
                x[b, :, y : y + h, x0 : x0 + w] = partner[b, :, y : y + h, x0 : x0 + w]
        else:
            lam = torch.from_numpy(policy.mix_weight_array(rows, n).astype(np.float32)).to(x.device)
            return Views(x, partner, lam)
    return Views(x, None, None)
