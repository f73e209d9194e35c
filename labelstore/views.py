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
    """An xarray.Dataset over the dask arrays of every array of the store; dimensions are the Zarr
    dimension_names; augmentation parameters named as `read` names them ("rrc/box", "flip/flag").

    Coordinates: epoch, sample (row numbers), sample_id and gt (per sample), and class (the class
    names, when the store records them; topk_indices index it). Lazy: opening reads metadata only,
    no array data (sample_id and gt too are dask arrays). Attributes that are not plain strings or
    numbers (dicts, lists) are JSON strings, so the Dataset can be written to netCDF / Zarr and read
    back with json.loads.
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
    for name in coord_arrays:
        if name in store.arrays:
            arr = store.arrays[name]
            coords[name] = (arr.metadata.dimension_names, da.from_zarr(arr, chunks=arr.shards or arr.chunks))
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


ROWS_PER_TASK = 65_536  # rows per dask task of the inspect pass (whole shards; all epochs of them)


def classification_sums(store, scheduler: str | None = None, bins: int = 10, hist_bins: int = 20,
                        ferkd=(0.05, 0.95)) -> dict[str, np.ndarray]:
    """One pass over a classification store: the sums `classification_stats` and `classification_details`
    are made of, computed with Dask: one task per block of rows (whole shards) reading the per-row
    arrays' block once and each epoch's block of the per-epoch arrays once (numpy on whole blocks, no
    per-row Python), the tasks' sums added in a tree.
    Kept on the store object, so inspect's statistics and the report's details share the pass."""
    key = ("_inspect_sums", bins, hist_bins, tuple(ferkd))
    if key in store.__dict__:
        return store.__dict__[key]
    g = store.group
    E, N, C, K = store.epochs, store.num_samples, store.num_classes, store.top_k
    names = [n for n in ("gt", "skipped", "source_hw", "topk_values", "topk_indices", "gt_prob", "mc_values",
                         "aug/rrc/box") if n in store.arrays]
    # a store that derives its parameters (no aug/* arrays): the crop boxes and flags recomputed block by block
    crops = "rrc" in [op.get("config", {}).get("name") for op in store.attrs.get("policy", {}).get("ops", [])]
    flags = _flag_params(store)
    derive = store.derived_params if store.params_derived and (crops or flags) else None
    shard = (g["topk_values"].shards or g["topk_values"].chunks)[1]
    step = shard * max(1, ROWS_PER_TASK // shard)
    group = dask.delayed(g, traverse=False)
    block = dask.delayed(_classification_block, pure=True)
    # rows of unfinished work units are left out (an unfinished store read with allow_incomplete)
    written = None if store.complete else store.written_rows("topk_values")  # [E, N] bool
    parts = [block(group, names, E, r0, min(N, r0 + step), C, K, bins, hist_bins, tuple(ferkd),
                   None if written is None else written[:, r0 : r0 + step], derive, crops, flags)
             for r0 in range(0, N, step)]
    while len(parts) > 1:  # a tree of sums: at most a few blocks' sums in memory at once
        parts = [dask.delayed(_add, pure=True)(*parts[i : i + 8]) for i in range(0, len(parts), 8)]
    from .epoch_cache import whole_reads

    with _client(scheduler), whole_reads():
        (out,) = dask.compute(parts[0])
    store.__dict__[key] = out
    return out


def _flag_params(store) -> tuple[str, ...]:
    """The store's boolean per-view parameters ("flip/flag", ...): from its aug/* arrays, or for a store
    that derives them, from the parameters of one view (none when they cannot be derived here)."""
    if not store.params_derived:
        return tuple(sorted(n[4:] for n, a in store.arrays.items()
                            if n.startswith("aug/") and a.dtype == bool and a.ndim == 2))
    if not store.num_samples:
        return ()
    from .errors import StoreError

    try:
        one = store.derived_params(0, np.arange(1))
    except StoreError:  # labelstore.pipeline not imported, or another sample version: no split
        return ()
    return tuple(sorted(k for k, v in one.items() if v.dtype == bool and v.ndim == 1))


def _add(*parts: dict) -> dict:
    out = dict(parts[0])
    for p in parts[1:]:
        for k, v in p.items():
            out[k] = out[k] + v
    return out


def _classification_block(group, names, E: int, r0: int, r1: int, C: int, K: int, bins: int, hist_bins: int,
                          ferkd, written: np.ndarray | None = None, derive=None, crops: bool = True,
                          flags: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The sums over every epoch of rows [r0, r1): per-epoch sums as [E] vectors, the rest as totals.
    written: bool [E, n], the rows finished work units wrote (None: all); the others are not counted.
    derive: LabelStore.derived_params of a store that derives its parameters (None: read aug/*).
    flags: boolean view parameters ("flip/flag"): labelled views and top-1 agreements split by their
    value, as "flag_valid/<key>" and "flag_agree/<key>" [false, true]."""
    n = r1 - r0
    gt = group["gt"][r0:r1].astype(np.int64)  # [n]
    skipped = group["skipped"][r0:r1].astype(bool)
    labelled = (gt >= 0) & ~skipped  # [n]
    gc = np.maximum(gt, 0)
    edges = np.linspace(0.0, 1.0, bins + 1)
    low, high = ferkd
    out = {k: np.zeros(E) for k in ("rows", "valid", "agree", "mass", "entropy", "gt_prob")}
    out.update({"n_class": np.zeros(C), "right_class": np.zeros(C), "gp_class": np.zeros(C),
                "confusion": np.zeros(C * C, np.int64), "bin_n": np.zeros(bins), "bin_conf": np.zeros(bins),
                "bin_right": np.zeros(bins), "gp_hist": np.zeros(20, np.int64), "bands": np.zeros(3, np.int64)})
    if "mc_values" in names:
        out.update({"mc_spread": np.zeros(E), "mc_right": np.zeros(()), "mc_wrong": np.zeros(()), "n_right": np.zeros(())})
    boxes = "aug/rrc/box" in names or (derive is not None and crops)
    for key in flags:
        out[f"flag_valid/{key}"], out[f"flag_agree/{key}"] = np.zeros(2), np.zeros(2)
    if boxes:
        hw = group["source_hw"][r0:r1].astype(np.float64)  # [n, 2]
        keep = ~skipped & (hw[:, 0] > 0)
        out.update({"crop_area": np.zeros(hist_bins, np.int64), "crop_log_aspect": np.zeros(hist_bins, np.int64)})
    for e in range(E):
        wr = np.ones(n, bool) if written is None else written[e]  # [n] rows written in epoch e
        valid = labelled & wr
        w = valid.astype(np.float64)
        v = group["topk_values"][e, r0:r1].astype(np.float32)  # [n, K]
        top1 = group["topk_indices"][e, r0:r1][:, 0].astype(np.int64)  # [n]
        gp = group["gt_prob"][e, r0:r1].astype(np.float64)  # [n]
        mass = v.sum(1, dtype=np.float64)
        per_other = np.clip(1.0 - mass, 0.0, 1.0) / max(C - K, 1)
        ent = (-(v * np.log(np.clip(v, 1e-12, None))).sum(1, dtype=np.float64)
               - (C - K) * per_other * np.log(np.clip(per_other, 1e-12, None)))
        top1c = np.clip(top1, 0, C - 1)
        right = (top1c == gc) * w
        p1 = v[:, 0].astype(np.float64)
        gpv = np.where(valid, gp, 0.0)
        gpk = gp[valid]
        b = np.clip(np.digitize(p1, edges[1:-1]), 0, bins - 1)
        out["rows"][e] += wr.sum()
        out["valid"][e] += valid.sum()
        out["agree"][e] += ((top1 == gt) & valid).sum()
        out["mass"][e] += mass[wr].sum()
        out["entropy"][e] += ent[wr].sum()
        out["gt_prob"][e] += gpv.sum()
        out["n_class"] += np.bincount(gc, weights=w, minlength=C)
        out["right_class"] += np.bincount(gc, weights=right, minlength=C)
        out["gp_class"] += np.bincount(gc, weights=gpv, minlength=C)
        out["confusion"] += np.bincount((gc * C + top1c)[valid], minlength=C * C)
        out["bin_n"] += np.bincount(b, weights=w, minlength=bins)
        out["bin_conf"] += np.bincount(b, weights=p1 * w, minlength=bins)
        out["bin_right"] += np.bincount(b, weights=right, minlength=bins)
        out["gp_hist"] += np.histogram(gpk, bins=20, range=(0.0, 1.0))[0]
        out["bands"] += np.array([(gpk < low).sum(), ((gpk >= low) & (gpk <= high)).sum(), (gpk > high).sum()])
        if "mc_values" in names:
            sd = group["mc_values"][e, r0:r1][:, :, 0].astype(np.float64).std(axis=1)  # [n] std over the passes
            out["mc_spread"][e] += sd[wr].sum()
            out["mc_right"] += (sd * right).sum()
            out["mc_wrong"] += (sd * (w - right)).sum()
            out["n_right"] += right.sum()
        params = derive(e, np.arange(r0, r1)) if derive is not None else None
        for key in flags:
            flag = (params[key] if params is not None else group[f"aug/{key}"][e, r0:r1]).astype(np.int64)  # [n]
            out[f"flag_valid/{key}"] += np.bincount(flag, weights=w, minlength=2)
            out[f"flag_agree/{key}"] += np.bincount(flag, weights=right, minlength=2)
        if boxes:
            ke = keep & wr
            box = (params["rrc/box"] if params is not None
                   else group["aug/rrc/box"][e, r0:r1])[ke].astype(np.float64)  # [n', 4] (y, x, h, w)
            area = box[:, 2] * box[:, 3] / (hw[ke, 0] * hw[ke, 1])
            aspect = box[:, 3] / np.maximum(box[:, 2], 1)
            out["crop_area"] += np.histogram(area, bins=hist_bins, range=(0.0, 1.0))[0]
            out["crop_log_aspect"] += np.histogram(np.log(aspect), bins=hist_bins, range=(-1.0, 1.0))[0]
    return out


def classification_stats(store, scheduler: str | None = None, bins: int = 20) -> dict:
    """Per-epoch statistics of an image-classification store, from the one pass of `classification_sums`.

    For each epoch (views with gt >= 0 and not skipped, unless noted; in an unfinished store only
    the rows of finished work units, `store.written_rows`):
      top1_agreement = mean[topk_indices[..., 0] == gt]
      topk_mass      = mean[sum_k topk_values]                              (all views)
      entropy        = mean[H(q)], q = top-k plus the residual mass 1 - sum_k spread evenly
                       over the other C - K classes ("marginal" fill), natural log (all views)
      gt_prob        = mean[teacher probability of the ground-truth class]
      mc_spread      = mean over views of the std over MC passes of the top-1 class
                       probability (when MC passes were recorded)          (all views)
    and histograms (over all epochs) of the crop area fraction h*w/(H*W) and the log crop aspect
    ratio log(w/h) of the random-resized-crop box.
    """
    r = classification_sums(store, scheduler, hist_bins=bins)
    rows, nvalid = np.maximum(r["rows"], 1), np.maximum(r["valid"], 1)
    per = {"top1_agreement": r["agree"] / nvalid, "topk_mass": r["mass"] / rows, "entropy": r["entropy"] / rows,
           "gt_prob": r["gt_prob"] / nvalid}
    if "mc_spread" in r:
        per["mc_spread"] = r["mc_spread"] / rows
    out = {"per_epoch": {k: [float(x) for x in val] for k, val in per.items()}}
    edges = lambda lo, hi: np.linspace(lo, hi, bins + 1).tolist()  # noqa: E731
    out["histograms"] = {
        "crop_area": {"edges": edges(0.0, 1.0), "counts": r["crop_area"].tolist()},
        "crop_log_aspect": {"edges": edges(-1.0, 1.0), "counts": r["crop_log_aspect"].tolist()},
    } if "crop_area" in r else {}
    return out


def teacher_agreement(store, scheduler: str | None = None) -> dict:
    """The teacher's top-1 agreement with the labels over every epoch's labelled views (gt >= 0, not
    skipped), from the one pass of `classification_sums`:

      top1     = mean[topk_indices[..., 0] == gt]
      chance   = share of the most frequent class among those views (what a constant prediction reaches)
      by_param = {"op/param": {"true": {"views", "top1"}, "false": {...}}} for every boolean view
                 parameter (a flip's flag), the same mean over the views with that value

    {"views": 0, ...} for a store without labels (an unlabelled folder)."""
    r = classification_sums(store, scheduler)
    n = float(r["n_class"].sum())
    out = {"views": int(round(n)), "top1": float(r["agree"].sum() / max(n, 1)),
           "chance": float(r["n_class"].max() / max(n, 1)) if len(r["n_class"]) else 0.0, "by_param": {}}
    for key in sorted(k.partition("/")[2] for k in r if k.startswith("flag_valid/")):
        v, a = r[f"flag_valid/{key}"], r[f"flag_agree/{key}"]
        out["by_param"][key] = {side: {"views": int(round(float(v[i]))), "top1": float(a[i] / max(v[i], 1))}
                                for i, side in ((1, "true"), (0, "false"))}
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
    """What a researcher looks at, over all epochs' views with gt >= 0 and not skipped, from the one pass
    of `classification_sums`:

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
    C = store.num_classes
    low, high = ferkd
    r = classification_sums(store, scheduler, bins=bins, ferkd=ferkd)
    n = max(int(r["n_class"].sum()), 1)
    nc = np.maximum(r["n_class"], 1)
    nb = np.maximum(r["bin_n"], 1)
    acc_b, conf_b = r["bin_right"] / nb, r["bin_conf"] / nb
    edges = np.linspace(0.0, 1.0, bins + 1)
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
