"""What `labelstore inspect` shows of an image-classification store: its statistics, computed with
Dask in one pass over the store, and its section of the HTML report (tables, figures, the gallery
of replayed views). Named by the task's entry in labelstore.trainers.tasks; the generic pieces
(dask arrays, block sums, figure and HTML helpers) are labelstore.views and labelstore.report.
"""

from __future__ import annotations

from typing import Callable

import dask
import numpy as np

from labelstore.errors import StoreError
from labelstore.report import png, pyplot, per_epoch_figure, table, title_of
from labelstore.views import compute_sums, row_blocks

# y-axis label of each per-epoch statistic; those not in UNBOUNDED are probabilities / rates on [0, 1]
PER_EPOCH_LABELS = {
    "top1_agreement": "share of views with top-1 = gt", "topk_mass": "mean stored top-k mass",
    "entropy": "mean entropy (nats)", "gt_prob": "mean P(ground truth)",
    "mc_spread": "std over MC passes of top-1 prob",
}
UNBOUNDED = ("entropy", "mc_spread")


def inspect_stats(store, scheduler: str | None = None, warn: Callable[[str | None], None] = lambda m: None
                  ) -> tuple[dict, list[str]]:
    """(what `inspect --json` prints, the lines printed under the table): `classification_stats` with
    `classification_details` under "details", and the ECE / FerKD band line. Warns when the stored top-k
    keeps little of the teacher's probability mass (pipeline.checks.low_topk_mass)."""
    from .checks import low_topk_mass

    stats = classification_stats(store, scheduler=scheduler)
    details = classification_details(store, scheduler=scheduler)
    mass = stats["per_epoch"]["topk_mass"]
    warn(low_topk_mass(sum(mass) / len(mass), store.top_k))
    stats["details"] = details
    if not details["views"]:
        return stats, [NO_LABELS]
    fk = details["ferkd"]
    return stats, [f"ECE {details['ece']:.4f}; FerKD bands (<{fk['low']}, between, >{fk['high']}): {fk['below']}, "
                   f"{fk['between']}, {fk['above']}"]


NO_LABELS = ("no labelled views (an unlabelled store): top-1 agreement, gt_prob, per-class figures, ECE and "
             "the FerKD bands need labels")


def report_section(store, stats: dict, info: dict, scheduler: str | None = None, data: str | None = None
                   ) -> tuple[list[str], dict[str, bytes]]:
    """(HTML sections, name -> PNG) of the report: per-class tables, calibration, FerKD bands and their
    figures from stats["details"] (`inspect_stats`); with `data` (the dataset the store was built from,
    an images.open_source spec, opened as the store was: replay.open_data) also the gallery of replayed views (pipeline.gallery.view_gallery)."""
    details = stats["details"]
    names = (info.get("dataset") or {}).get("classes") or [str(c) for c in range(info.get("num_classes") or 0)]
    if details["views"]:
        sections, figs = classification_tables(details, names), classification_figures(stats, details, info, names)
    else:  # an unlabelled store: only what needs no labels
        sections = [f"<p id='no-labels'>{NO_LABELS}</p>"]
        figs = {"per_epoch": per_epoch_figure(stats["per_epoch"], title_of(info), PER_EPOCH_LABELS, UNBOUNDED)}
    if data is not None:
        from .gallery import view_gallery
        from .replay import open_data

        for kind, entries in view_gallery(store, open_data(store, data)).items():
            if entries:
                figs[f"gallery_{kind}"] = gallery_figure(kind, entries, title_of(info))
    return sections, figs


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
    group = dask.delayed(g, traverse=False)
    block = dask.delayed(_classification_block, pure=True)
    # rows of unfinished work units are left out (an unfinished store read with allow_incomplete)
    written = None if store.complete else store.written_rows("topk_values")  # [E, N] bool
    parts = [block(group, names, E, r0, r1, C, K, bins, hist_bins, tuple(ferkd),
                   None if written is None else written[:, r0:r1], derive, crops, flags)
             for r0, r1 in row_blocks(N, shard)]
    out = compute_sums(parts, scheduler)
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
    try:
        one = store.derived_params(0, np.arange(1))
    except StoreError:  # another sample version: no split
        return ()
    return tuple(sorted(k for k, v in one.items() if v.dtype == bool and v.ndim == 1))


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
    ratio log(w/h) of the random-resized-crop box. A store without labelled views has no top1_agreement
    or gt_prob.
    """
    r = classification_sums(store, scheduler, hist_bins=bins)
    rows, nvalid = np.maximum(r["rows"], 1), np.maximum(r["valid"], 1)
    per = {"top1_agreement": r["agree"] / nvalid, "topk_mass": r["mass"] / rows, "entropy": r["entropy"] / rows,
           "gt_prob": r["gt_prob"] / nvalid}
    if not r["valid"].any():  # an unlabelled store: no statistic against labels
        del per["top1_agreement"], per["gt_prob"]
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


def classification_figures(stats: dict, details: dict, info: dict, class_names: list[str]) -> dict[str, bytes]:
    """name -> PNG bytes: per-epoch curves, per-class bars, confusion, reliability, gt_prob histogram, MC std."""
    plt = pyplot()
    title = title_of(info)
    figs = {}
    figs["per_epoch"] = per_epoch_figure(stats["per_epoch"], title, PER_EPOCH_LABELS, UNBOUNDED)

    C = len(details["per_class_accuracy"])
    x = np.arange(C)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * C), 3.5))
    ax.bar(x - 0.2, details["per_class_accuracy"], 0.4, label="teacher top-1 accuracy")
    ax.bar(x + 0.2, details["per_class_gt_prob"], 0.4, label="mean gt_prob")
    ax.set_xticks(x, class_names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability / accuracy")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(f"per class (all epochs)\n{title}", fontsize=8)
    figs["per_class"] = png(fig)

    cm = np.asarray(details["confusion"], float)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(x, class_names, rotation=90)
    ax.set_yticks(x, class_names)
    ax.set_xlabel("teacher top-1 class")
    ax.set_ylabel("ground-truth class")
    fig.colorbar(im, ax=ax, label="share of the true class's views")
    ax.set_title(f"confusion (all epochs)\n{title}", fontsize=8)
    figs["confusion"] = png(fig)

    rel = details["reliability"]
    e = np.asarray(rel["edges"])
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(4.5, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(e[:-1], rel["accuracy"], np.diff(e), align="edge", edgecolor="k", label="accuracy")
    ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("top-1 accuracy")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"reliability, ECE = {details['ece']:.3f}\n{title}", fontsize=8)
    ax_n.bar(e[:-1], rel["count"], np.diff(e), align="edge", edgecolor="k", color="tab:gray")
    ax_n.set_ylabel("views", fontsize=8)
    ax_n.tick_params(axis="y", labelsize=7)
    ax_n.set_xlabel("teacher top-1 probability (confidence)")
    figs["reliability"] = png(fig)

    h, fk = details["gt_prob_hist"], details["ferkd"]
    e = np.asarray(h["edges"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(e[:-1], h["counts"], np.diff(e), align="edge", edgecolor="k")
    for t in (fk["low"], fk["high"]):
        ax.axvline(t, color="r", ls="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel("teacher probability of the ground-truth class (gt_prob)")
    ax.set_ylabel("views")
    ax.set_title(f"gt_prob; FerKD bands < {fk['low']}: {fk['below']}, between: {fk['between']}, "
                 f"> {fk['high']}: {fk['above']}\n{title}", fontsize=8)
    figs["gt_prob"] = png(fig)

    if "mc_std_correct" in details:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar([f"teacher right\n({details['mc_views_correct']} views)", f"teacher wrong\n({details['mc_views_wrong']} views)"],
               [details["mc_std_correct"], details["mc_std_wrong"]])
        ax.set_ylabel("mean std over MC passes of top-1 prob")
        ax.set_title(f"MC-dropout uncertainty vs correctness\n{title}", fontsize=8)
        figs["mc_uncertainty"] = png(fig)
    return figs


GALLERY_TITLES = {
    "hardest": "hardest views: lowest teacher probability of the ground truth (gt_prob)",
    "easiest": "easiest views: highest gt_prob",
    "uncertain MC std": "most uncertain views: largest std of the top-1 probability over the MC-dropout passes",
    "uncertain top-1 margin": "most uncertain views: smallest top-1 margin p1 - p2 (no MC passes recorded)",
}


def gallery_figure(kind: str, entries: list[dict], title: str) -> bytes:
    """One row per entry (labelstore.pipeline.gallery.view_gallery): the source image with the recorded crop box,
    the replayed view, and the stored top-3 classes with their probabilities (ground truth in green)."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    n = len(entries)
    fig, axes = plt.subplots(n, 3, figsize=(8.5, 2.4 * n), squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1.4]})
    for (a_src, a_view, a_top), e in zip(axes, entries):
        sh, sw = e.get("source_hw") or e["source"].shape[:2]  # the decoded size; "source" may be a thumbnail
        a_src.imshow(e["source"], interpolation="nearest", extent=(-0.5, sw - 0.5, sh - 0.5, -0.5))
        a_src.set_xlim(-2, sw + 1)  # a margin, so a crop box along the image border stays visible
        a_src.set_ylim(sh + 1, -2)
        if e["box"] is not None:
            y, x, h, w = e["box"]  # pixel (i, j) covers [j - 0.5, j + 0.5]
            a_src.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="red", linewidth=1.5))
        a_src.set_title(f"{e['sample_id']} ({sw}x{sh})\nepoch {e['epoch']}, crop box in red", fontsize=7)
        a_view.imshow(e["view"], interpolation="nearest")
        vh, vw = e["view"].shape[:2]
        extra = [s for s, on in (("flipped (after the crop)", e["flipped"]), (f"mixed with row {e['partner']} (own share {e['mix_weight']:.2f})", e["partner"] >= 0)) if on]
        a_view.set_title(f"replayed view {vw}x{vh}" + (f"\n{', '.join(extra)}" if extra else ""), fontsize=7)
        for ax in (a_src, a_view):
            ax.set_xticks([])
            ax.set_yticks([])
        names = [c for c, _ in e["top"]][::-1]
        probs = [p for _, p in e["top"]][::-1]
        a_top.barh(range(len(names)), probs, color=["tab:green" if c == e["gt"] else "tab:gray" for c in names])
        a_top.set_yticks(range(len(names)), names, fontsize=7)
        for i, p in enumerate(probs):
            a_top.text(min(p, 0.75) + 0.02, i, f"{p:.3f}", va="center", fontsize=7)
        a_top.set_xlim(0, 1)
        a_top.set_xlabel("teacher probability (stored top-3)", fontsize=7)
        a_top.tick_params(axis="x", labelsize=7)
        a_top.set_title(f"gt {e['gt']}: gt_prob {e['gt_prob']:.3f}" + ("" if e["gt"] in names else " (not in top-3)")
                        + (f"; {e['measure']} {e['score']:.3f}" if kind == "uncertain" else ""), fontsize=7)
    heading = GALLERY_TITLES.get(kind if kind != "uncertain" else f"uncertain {entries[0]['measure']}", kind)
    fig.suptitle(f"{heading}\n{title.replace(chr(10), ' · ')}", fontsize=8)
    return png(fig)


def classification_tables(details: dict, names: list[str]) -> list[str]:
    """HTML: per-class accuracy / gt_prob, ECE, FerKD band counts."""
    fk = details["ferkd"]
    return [
        "<h2>per class</h2>" + table(
            ["class", "views", "teacher accuracy", "mean gt_prob"],
            [[n, v, a, g] for n, v, a, g in zip(names, details["per_class_views"], details["per_class_accuracy"],
                                                details["per_class_gt_prob"])]),
        f"<h2>calibration</h2><p id='ece'>ECE = {details['ece']:.4f}</p>",
        "<h2>FerKD bands</h2>" + table(["below low", "between", "above high"], [[fk["below"], fk["between"], fk["above"]]]),
    ]
