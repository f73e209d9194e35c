"""Dask and xarray views of a store, and the `inspect` statistics computed with Dask."""

from __future__ import annotations

import contextlib

import dask
import dask.array as da
import numpy as np


def to_dask(store) -> dict[str, da.Array]:
    """Every numeric array as a dask array, one task per shard (not per inner chunk)."""
    out = {}
    for name, arr in store.arrays.items():
        if arr.dtype.kind in "OTU":
            continue
        out[name] = da.from_zarr(arr, chunks=arr.shards or arr.chunks)
    return out


def to_xarray(store):
    """An xarray.Dataset over the dask arrays; dimensions are the Zarr dimension_names.

    Coordinates: epoch, sample (row numbers), sample_id and gt (per sample), and class (the class
    names, when the store records them; topk_indices index it). Attributes that are not plain
    strings or numbers (dicts, lists) are JSON strings, so the Dataset can be written to
    netCDF / Zarr and read back with json.loads.
    """
    import xarray as xr

    arrays = to_dask(store)
    coord_arrays = ("sample_id", "gt")
    data_vars, coords = {}, {"epoch": np.arange(store.epochs), "sample": np.arange(store.num_samples)}
    for name, darr in arrays.items():
        if name in coord_arrays:
            continue
        dims = store.arrays[name].metadata.dimension_names
        data_vars[name.removeprefix("aug/")] = (dims, darr, _plain_attrs(dict(store.arrays[name].attrs)))
    if "sample_id" in store.arrays:
        coords["sample_id"] = ("sample", store.ids.astype(str))
    if "gt" in store.arrays:
        coords["gt"] = (store.arrays["gt"].metadata.dimension_names, store.group["gt"][:])
    if store.attrs.get("classes"):
        coords["class"] = np.asarray(store.attrs["classes"], dtype=str)
    return xr.Dataset(data_vars, coords=coords, attrs=_plain_attrs(store.attrs))


def _plain_attrs(attrs: dict) -> dict:
    """Strings, numbers and bools as they are; everything else as JSON."""
    import json

    return {k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v) for k, v in attrs.items()}


def _client(scheduler: str | None):
    if scheduler is None:
        return contextlib.nullcontext()
    from distributed import Client

    return Client(scheduler)


def mean_topk_mass(store) -> float:
    """mean over all (epoch, row) of sum_k topk_values: the share of the teacher's probability kept."""
    return float(to_dask(store)["topk_values"].astype("float32").sum(-1).mean().compute())


def _written(store, like: da.Array) -> da.Array:
    """[E, N] bool, True where a finished work unit wrote the row (store.written_rows), as a dask
    array chunked like `like`; a complete store: one True [1, 1], broadcast (nothing to hold)."""
    if store.complete:
        return da.ones((1, 1), dtype=bool)
    return da.from_array(store.written_rows("topk_values"), chunks=like.chunks[:2])


def classification_stats(store, scheduler: str | None = None, bins: int = 20) -> dict:
    """Per-epoch statistics of an image-classification store, computed with Dask.

    For each epoch (views with gt >= 0 and not skipped, unless noted; in an unfinished store only
    the rows of finished work units, `store.written_rows`):
      top1_agreement = mean[topk_indices[..., 0] == gt]
      topk_mass      = mean[sum_k topk_values]                              (all views)
      entropy        = mean[H(q)], q = top-k plus the residual mass 1 - sum_k spread evenly
                       over the other C - K classes ("marginal" fill), natural log
      gt_prob        = mean[teacher probability of the ground-truth class]
      mc_spread      = mean over views of the std over MC passes of the top-1 class
                       probability (when MC passes were recorded)
    and histograms (over all epochs) of the crop area fraction h*w/(H*W) and the crop aspect
    ratio w/h of the random-resized-crop box.
    """
    a = store.to_dask()
    C, K = store.num_classes, store.top_k
    gt = a["gt"].astype("int64")
    v = a["topk_values"].astype("float32")  # [E, N, K]
    written = _written(store, v)  # [E, N]: unwritten rows left out
    valid = ((gt >= 0) & ~a["skipped"])[None] & written  # [E, N]
    top1 = a["topk_indices"][..., 0].astype("int64")  # [E, N]
    mass = v.sum(-1)  # [E, N]
    rest = da.clip(1.0 - mass, 0.0, 1.0)
    per_other = rest / max(C - K, 1)
    ent = -(v * da.log(da.clip(v, 1e-12, None))).sum(-1) - (C - K) * per_other * da.log(da.clip(per_other, 1e-12, None))
    nvalid = da.maximum(valid.sum(1), 1)
    nwritten = da.maximum(da.broadcast_to(written, mass.shape).sum(1), 1)

    def mean_written(x):  # [E, N] -> [E]
        return da.where(written, x, 0).sum(1) / nwritten

    stats = {
        "top1_agreement": ((top1 == gt[None]) & valid).sum(1) / nvalid,
        "topk_mass": mean_written(mass),
        "entropy": mean_written(ent),
        "gt_prob": da.where(valid, a["gt_prob"].astype("float32"), 0).sum(1) / nvalid,
    }
    if "mc_values" in a:
        stats["mc_spread"] = mean_written(a["mc_values"][..., 0].astype("float32").std(axis=2))
    hists = {}
    if "aug/rrc/box" in a:
        box = a["aug/rrc/box"].astype("float64")  # [E, N, 4] (y, x, h, w)
        hw = a["source_hw"].astype("float64")  # [N, 2]
        area = (box[..., 2] * box[..., 3]) / (hw[None, :, 0] * hw[None, :, 1])
        aspect = box[..., 3] / da.maximum(box[..., 2], 1)
        keep = da.broadcast_to(~a["skipped"][None] & (hw[None, :, 0] > 0) & written, area.shape)
        hists["crop_area"] = da.histogram(area[keep], bins=bins, range=(0.0, 1.0))
        hists["crop_aspect"] = da.histogram(da.log(aspect[keep]), bins=bins, range=(-1.0, 1.0))
    with _client(scheduler):
        stats, hists = dask.compute(stats, hists)
    out = {"per_epoch": {k: [float(x) for x in np.atleast_1d(val)] for k, val in stats.items()}}
    out["histograms"] = {
        "crop_area": {"edges": hists["crop_area"][1].tolist(), "counts": hists["crop_area"][0].tolist()},
        "crop_log_aspect": {"edges": hists["crop_aspect"][1].tolist(), "counts": hists["crop_aspect"][0].tolist()},
    } if hists else {}
    return out


def inspect_store(store, scheduler: str | None = None) -> dict:
    """The statistics `labelstore inspect` prints, for the store's task."""
    from .errors import StoreError
    from .integrity import verify_chunks

    stats = globals().get(f"{store.task}_stats")  # classification_stats, retrieval_stats, videoqa_stats
    if stats is None:
        raise StoreError(f"{store.path}: inspect does not know task {store.task!r}")
    try:
        return stats(store, scheduler=scheduler)
    except Exception:
        problems = verify_chunks(store.group)
        if not problems:
            raise  # not damage: a bug, keep the traceback
        raise StoreError(f"{store.path}: damaged, cannot compute statistics: {'; '.join(problems)}") from None


def plot_stats(stats: dict, path: str) -> None:
    """One PNG: per-epoch curves of each statistic, and the histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per, hists = stats["per_epoch"], stats.get("histograms", {})
    n = len(per) + len(hists)
    cols = 3
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    axes = axes.ravel()
    for ax, (name, values) in zip(axes, per.items()):
        ax.plot(range(len(values)), values, marker="o")
        ax.set_title(name)
        ax.set_xlabel("epoch")
    for ax, (name, h) in zip(axes[len(per):], hists.items()):
        edges = np.asarray(h["edges"])
        ax.bar(edges[:-1], h["counts"], width=np.diff(edges), align="edge")
        ax.set_title(name)
    for ax in axes[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def videoqa_stats(store, scheduler: str | None = None, bins: int = 20) -> dict:
    """Per-epoch statistics of a VideoQA store (rows = questions), computed with Dask.

    For each epoch (questions with gt >= 0, i.e. an in-vocabulary annotated answer, unless noted):
      top1_agreement = mean[topk_indices[..., 0] == gt]
      topk_mass      = mean[sum_k topk_values]                                  (all questions)
      mc_spread      = mean over questions of the std over the T MC passes of the top-1 answer's
                       probability (when MC passes were recorded)                (all questions)
      gt_prob        = mean[teacher probability of the annotated answer]
    and a histogram (over all epochs and questions) of the top-1 probability.
    """
    a = store.to_dask()
    gt = a["gt"].astype("int64")  # [N]
    valid = gt >= 0
    nvalid = da.maximum(valid.sum(), 1)
    v = a["topk_values"].astype("float32")  # [E, N, K]
    top1 = a["topk_indices"][..., 0].astype("int64")  # [E, N]
    stats = {
        "top1_agreement": ((top1 == gt[None]) & valid[None]).sum(1) / nvalid,
        "topk_mass": v.sum(-1).mean(1),
        "gt_prob": da.where(valid[None], a["gt_prob"].astype("float32"), 0).sum(1) / nvalid,
    }
    if "mc_values" in a:
        stats["mc_spread"] = a["mc_values"][..., 0].astype("float32").std(axis=2).mean(1)  # [E, N, T] -> [E]
    hist = da.histogram(v[..., 0].ravel(), bins=bins, range=(0.0, 1.0))
    with _client(scheduler):
        stats, hist = dask.compute(stats, hist)
    return {
        "per_epoch": {k: [float(x) for x in np.atleast_1d(val)] for k, val in stats.items()},
        "histograms": {"top1_prob": {"edges": hist[1].tolist(), "counts": hist[0].tolist()}},
    }


def retrieval_stats(store, scheduler: str | None = None) -> dict:
    """Per-epoch statistics of a text-to-video retrieval store, computed with Dask.

    For each epoch e (p = frame_scores[e, c] over the m frames of caption c's video):
      teacher_r1      = mean_c [argmax_v s(c, v) == caption_video[c]]  over the training captions
                        (s from `similarity`, or text_emb @ video_emb[e]^T; mode "embeddings"/"dense")
      teacher_batch_r1 = the same within each stored B x B batch block (mode "batches")
      frame_entropy   = mean_c -sum_f p_f log p_f   (natural log; log m = uniform)
      frame_peak      = mean_c max_f p_f            (peakedness; 1/m = uniform)
    and a histogram (over all epochs) of the argmax frame slot argmax_f p_f.
    """
    a = store.to_dask()
    mode = store.attrs.get("similarity_mode")
    p = a["frame_scores"].astype("float32")  # [E, Nc, m]
    m = p.shape[-1]
    stats = {
        "frame_entropy": (-(p * da.log(da.clip(p, 1e-12, None))).sum(-1)).mean(1),
        "frame_peak": p.max(-1).mean(1),
    }
    cv = a["caption_video"].astype("int64")  # [Nc]
    if mode == "dense":
        stats["teacher_r1"] = (a["similarity"].argmax(-1) == cv[None]).mean(1)
    elif mode == "embeddings":
        te = a["text_emb"].astype("float32")  # [Nc, D]
        ve = a["video_emb"].astype("float32")  # [E, Nv, D]
        s = da.einsum("cd,evd->ecv", te, ve)
        stats["teacher_r1"] = (s.argmax(-1) == cv[None]).mean(1)
    elif mode == "batches":
        blk = a["batch_similarity"].astype("float32")  # [E, nb, B, B]
        plan = a["batch_captions"]  # [E, nb, B]
        B = blk.shape[-1]
        hit = (da.where(da.isnan(blk), -np.inf, blk).argmax(-1) == da.arange(B)[None, None]) & (plan >= 0)
        stats["teacher_batch_r1"] = hit.sum((1, 2)) / da.maximum((plan >= 0).sum((1, 2)), 1)
    hist = da.bincount(p.argmax(-1).ravel(), minlength=m)
    with _client(scheduler):
        stats, hist = dask.compute(stats, hist)
    return {
        "per_epoch": {k: [float(x) for x in np.atleast_1d(v)] for k, v in stats.items()},
        "histograms": {"argmax_frame": {"edges": np.arange(m + 1).tolist(), "counts": np.asarray(hist).tolist()}},
    }


def classification_details(store, scheduler: str | None = None, bins: int = 10, ferkd=(0.05, 0.95)) -> dict:
    """What a researcher looks at, over all epochs' views with gt >= 0 and not skipped, computed with Dask:

      per_class_accuracy[c] = mean over views of class c of [top1 == c]
      per_class_gt_prob[c]  = mean over views of class c of gt_prob
      confusion[c, j]       = number of views of true class c whose teacher top-1 is j
      reliability           = `bins` equal bins of confidence p1 = topk_values[..., 0] on [0, 1]:
                              count, mean confidence and accuracy per bin;
                              ECE = sum_b (n_b / n) |acc_b - conf_b|
      gt_prob_hist          = 20 bins on [0, 1]; ferkd_bands = share of views with gt_prob < low,
                              in [low, high], > high (FerKD thresholds, as in `labelstore train`)
      mc_std_correct / mc_std_wrong = mean std over MC passes of the top-1 prob, for views the
                              teacher gets right / wrong (when MC passes were recorded)
    """
    a = store.to_dask()
    C = store.num_classes
    gt = a["gt"].astype("int64")  # [N]
    E = a["topk_indices"].shape[0]
    N = gt.shape[0]
    flat = lambda x: x.ravel().rechunk(N)  # noqa: E731  [E, N] -> [E*N], one block per epoch (bincount needs equal blocks)
    written = _written(store, a["gt_prob"])  # [E, N]: unwritten rows are not counted
    w = flat(da.broadcast_to(((gt >= 0) & ~a["skipped"])[None] & written, (E, N))).astype("float64")  # [E*N] 1 = counted
    g = flat(da.broadcast_to(da.maximum(gt, 0)[None], (E, N)))  # [E*N]
    top1 = da.clip(flat(a["topk_indices"][..., 0].astype("int64")), 0, C - 1)  # [E*N]
    p1 = flat(a["topk_values"][..., 0].astype("float64"))  # [E*N] top-1 probability
    gp = flat(a["gt_prob"].astype("float64"))  # [E*N]
    right = (top1 == g).astype("float64") * w
    low, high = ferkd
    edges = np.linspace(0.0, 1.0, bins + 1)
    b = da.clip(da.digitize(p1, edges[1:-1]), 0, bins - 1)
    todo = {
        "n_class": da.bincount(g, weights=w, minlength=C),
        "right_class": da.bincount(g, weights=right, minlength=C),
        "gp_class": da.bincount(g, weights=gp * w, minlength=C),
        "confusion": da.bincount(g * C + top1, weights=w, minlength=C * C),
        "bin_n": da.bincount(b, weights=w, minlength=bins),
        "bin_conf": da.bincount(b, weights=p1 * w, minlength=bins),
        "bin_right": da.bincount(b, weights=right, minlength=bins),
        "gp_hist": da.histogram(gp, bins=20, range=(0.0, 1.0), weights=w)[0],
        "bands": da.stack([((gp < low) * w).sum(), (((gp >= low) & (gp <= high)) * w).sum(), ((gp > high) * w).sum()]),
    }
    if "mc_values" in a:
        sd = flat(a["mc_values"][..., 0].astype("float64").std(axis=2))  # [E*N] std over passes
        todo["mc_right"] = (sd * right).sum()
        todo["mc_wrong"] = (sd * (w - right)).sum()
        todo["n_right"] = right.sum()
    with _client(scheduler):
        r = dask.compute(todo)[0]
    n = max(int(r["n_class"].sum()), 1)
    nc = np.maximum(r["n_class"], 1)
    nb = np.maximum(r["bin_n"], 1)
    acc_b, conf_b = r["bin_right"] / nb, r["bin_conf"] / nb
    out = {
        "views": int(round(float(r["n_class"].sum()))),
        "per_class_accuracy": (r["right_class"] / nc).tolist(),
        "per_class_gt_prob": (r["gp_class"] / nc).tolist(),
        "per_class_views": r["n_class"].astype(int).tolist(),
        "confusion": r["confusion"].reshape(C, C).astype(int).tolist(),
        "reliability": {"edges": edges.tolist(), "count": r["bin_n"].astype(int).tolist(), "confidence": conf_b.tolist(),
                        "accuracy": acc_b.tolist()},
        "ece": float((r["bin_n"] / n * np.abs(acc_b - conf_b)).sum()),
        "gt_prob_hist": {"edges": np.linspace(0, 1, 21).tolist(), "counts": r["gp_hist"].astype(int).tolist()},
        "ferkd": {"low": low, "high": high, "below": int(r["bands"][0]), "between": int(r["bands"][1]),
                  "above": int(r["bands"][2])},
    }
    if "mc_right" in r:
        nr = float(r["n_right"])
        out["mc_std_correct"] = float(r["mc_right"] / max(nr, 1))
        out["mc_std_wrong"] = float(r["mc_wrong"] / max(n - nr, 1))
        out["mc_views_correct"], out["mc_views_wrong"] = int(round(nr)), int(round(n - nr))
    return out


def retrieval_details(store, videos: int = 3, block: int = 12, epoch: int = 0) -> dict:
    """What the report shows of a retrieval store, from epoch `epoch`:

      heatmaps : for the first `videos` videos with captions, frame_scores[epoch, c, :] of each of
                 their captions c (captions x frame slots; a softmax over the frames, rows sum to 1)
                 and the frame indices of the view
      block    : teacher similarity s(c, v) of one caption of each of `block` videos (rows) against
                 those videos (columns), so the matching pairs are the diagonal: `similarity`
                 (dense), logit_scale * <text_emb, video_emb> (embeddings), or the first stored
                 batch (batches: [i, j] = s(caption i, video of caption j))
    """
    g, a = store.group, store.attrs
    cv = g["caption_video"][:].astype(np.int64)  # [Nc]
    text = np.asarray(g["caption_text"][:], dtype=object)
    ids = store.ids
    heat = []
    for v in [int(v) for v in dict.fromkeys(cv.tolist()) if v >= 0][:videos]:
        caps = np.flatnonzero(cv == v)
        heat.append({"video": str(ids[v]), "captions": [str(text[c]) for c in caps],
                     "frames": g["aug/frames/indices"][epoch, v].tolist(),
                     "scores": g["frame_scores"].oindex[epoch, caps, :].astype(np.float64).tolist()})
    mode = a.get("similarity_mode")
    if mode == "batches":
        caps = g["batch_captions"][epoch, 0].astype(np.int64)  # [B]
        caps = caps[caps >= 0][:block]
        s = g["batch_similarity"][epoch, 0].astype(np.float64)[: len(caps), : len(caps)]
        where = "first stored batch"
    else:
        first = {}
        for c, v in enumerate(cv.tolist()):
            first.setdefault(v, c)
        caps = np.asarray([first[v] for v in sorted(first) if v >= 0][:block], dtype=np.int64)
        vids = cv[caps]
        if mode == "dense":
            s = g["similarity"].oindex[epoch, caps, vids].astype(np.float64)
        else:  # embeddings
            t = g["text_emb"].oindex[caps, :].astype(np.float64)  # [b, D]
            ve = g["video_emb"].oindex[epoch, vids, :].astype(np.float64)  # [b, D]
            s = float(a["logit_scale"]) * t @ ve.T
        where = "one caption per video"
    return {"epoch": epoch, "mode": mode, "heatmaps": heat,
            "block": {"captions": [str(text[c]) for c in caps], "videos": [str(ids[v]) for v in cv[caps]],
                      "similarity": s.tolist(), "rows": where}}


def videoqa_details(store, scheduler: str | None = None, n: int = 4, epoch: int = 0, show_k: int = 5) -> dict:
    """What the report shows of a VideoQA store:

      rankings    : the teacher's top-`show_k` answers with probabilities at epoch `epoch` for the n
                    questions with the lowest and the n with the highest gt_prob there
      gt_rank_hist: over all epochs and questions with gt >= 0, counts of the rank (1..K) of the
                    annotated answer in the stored top-K, and of "not in the top-K" (last bin)
      gt_prob_hist: 20 bins on [0, 1] of gt_prob over the same views (computed with Dask)
    """
    g = store.group
    names = store.attrs.get("classes") or [str(c) for c in range(store.num_classes)]
    a = to_dask(store)
    gt = a["gt"].astype("int64")  # [N]
    valid = gt >= 0
    idx = a["topk_indices"].astype("int64")  # [E, N, K]
    K = idx.shape[-1]
    hit = idx == gt[None, :, None]  # [E, N, K]
    E, N = hit.shape[:2]
    flat = lambda x: x.ravel().rechunk(N)  # noqa: E731  [E, N] -> [E*N], one block per epoch (bincount needs equal blocks)
    rank = flat(da.where(hit.any(-1), hit.argmax(-1), K))  # [E*N] 0-based, K = not stored
    w = flat(da.broadcast_to(valid[None], (E, N))).astype("float64")  # [E*N] 1 = counted
    gp = flat(da.nan_to_num(a["gt_prob"].astype("float64")))  # [E*N]
    todo = {"rank": da.bincount(rank, weights=w, minlength=K + 1),
            "gp": da.histogram(gp, bins=20, range=(0.0, 1.0), weights=w)[0]}
    with _client(scheduler):
        (r,) = dask.compute(todo)
    gt_np = g["gt"][:].astype(np.int64)
    gp_e = g["gt_prob"][epoch].astype(np.float64)  # [N]
    rows = np.flatnonzero(gt_np >= 0)
    order = rows[np.argsort(gp_e[rows], kind="stable")]
    ids = store.ids
    vals, inds = g["topk_values"][epoch], g["topk_indices"][epoch]

    def ranking(q: int, kind: str) -> dict:
        return {"kind": kind, "row": int(q), "video": str(ids[q]), "answer": names[int(gt_np[q])],
                "gt_prob": float(gp_e[q]),
                "top": [(names[int(c)], float(p)) for c, p in zip(inds[q, :show_k], vals[q, :show_k])]}

    hard = order[:n]
    easy = [q for q in order[::-1][:n] if q not in set(hard.tolist())]
    return {"epoch": epoch, "top_k": K,
            "rankings": [ranking(q, "lowest gt_prob") for q in hard] + [ranking(q, "highest gt_prob") for q in easy],
            "gt_rank_hist": {"labels": [str(k + 1) for k in range(K)] + [f">{K}"],
                             "counts": r["rank"].astype(int).tolist()},
            "gt_prob_hist": {"edges": np.linspace(0, 1, 21).tolist(), "counts": r["gp"].astype(int).tolist()}}
