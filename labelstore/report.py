"""Figures (matplotlib Agg) and the self-contained HTML report of `labelstore inspect --report`.

Everything here takes plain dicts / arrays (from labelstore.views); nothing reads the store.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    if fig.get_layout_engine() is None:  # figures made with layout="constrained" lay themselves out
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return buf.getvalue()


def title_of(info: dict) -> str:
    """'store · teacher · dataset' for figure titles."""
    t, d = info.get("teacher") or {}, info.get("dataset") or {}
    return f"{info.get('path')}\nteacher {t.get('name')} · data {d.get('root') or d.get('kind')}"


# y-axis label of each per-epoch statistic; those not in UNBOUNDED are probabilities / rates on [0, 1]
PER_EPOCH_LABELS = {
    "top1_agreement": "share of views with top-1 = gt", "topk_mass": "mean stored top-k mass",
    "entropy": "mean entropy (nats)", "gt_prob": "mean P(ground truth)",
    "mc_spread": "std over MC passes of top-1 prob", "teacher_r1": "teacher R@1 (share of captions)",
    "teacher_batch_r1": "teacher R@1 within batches", "frame_entropy": "entropy over frames (nats)",
    "frame_peak": "mean max frame probability",
}
UNBOUNDED = ("entropy", "frame_entropy", "mc_spread")


def per_epoch_figure(per: dict[str, list[float]], title: str) -> bytes:
    """One panel per statistic against the epoch; probabilities on [0, 1], the others from 0."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    fig, axes = plt.subplots(1, len(per), figsize=(3.2 * len(per), 3.2), squeeze=False)
    for ax, (name, vals) in zip(axes[0], per.items()):
        ax.plot(range(len(vals)), vals, marker="o")
        ax.set_xlabel("epoch")
        ax.set_ylabel(PER_EPOCH_LABELS.get(name, name), fontsize=8)
        top = 1 if name not in UNBOUNDED else max(max(vals) * 1.15, 1e-3)  # from 0: small changes look small
        ax.set_ylim(0, top)
        ax.set_title(name, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))  # whole epochs, readable at any count
    fig.suptitle(title.replace("\n", " · "), fontsize=8)
    return _png(fig)


def classification_figures(stats: dict, details: dict, info: dict, class_names: list[str]) -> dict[str, bytes]:
    """name -> PNG bytes: per-epoch curves, per-class bars, confusion, reliability, gt_prob histogram, MC std."""
    plt = _plt()
    title = title_of(info)
    figs = {}
    figs["per_epoch"] = per_epoch_figure(stats["per_epoch"], title)

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
    figs["per_class"] = _png(fig)

    cm = np.asarray(details["confusion"], float)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(x, class_names, rotation=90)
    ax.set_yticks(x, class_names)
    ax.set_xlabel("teacher top-1 class")
    ax.set_ylabel("ground-truth class")
    fig.colorbar(im, ax=ax, label="share of the true class's views")
    ax.set_title(f"confusion (all epochs)\n{title}", fontsize=8)
    figs["confusion"] = _png(fig)

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
    figs["reliability"] = _png(fig)

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
    figs["gt_prob"] = _png(fig)

    if "mc_std_correct" in details:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar([f"teacher right\n({details['mc_views_correct']} views)", f"teacher wrong\n({details['mc_views_wrong']} views)"],
               [details["mc_std_correct"], details["mc_std_wrong"]])
        ax.set_ylabel("mean std over MC passes of top-1 prob")
        ax.set_title(f"MC-dropout uncertainty vs correctness\n{title}", fontsize=8)
        figs["mc_uncertainty"] = _png(fig)
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

    plt = _plt()
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
    return _png(fig)


def retrieval_figures(stats: dict, details: dict, info: dict) -> dict[str, bytes]:
    """name -> PNG: per-epoch curves, frame-score heat maps per caption, a similarity block, argmax-frame histogram."""
    from matplotlib.patches import Rectangle

    plt = _plt()
    title = title_of(info)
    figs = {"per_epoch": per_epoch_figure(stats["per_epoch"], title)}
    heat = details["heatmaps"]
    fig, axes = plt.subplots(len(heat), 1, figsize=(9, 0.9 + 0.45 * sum(len(h["captions"]) + 2 for h in heat)),
                             squeeze=False, gridspec_kw={"height_ratios": [len(h["captions"]) + 1 for h in heat]},
                             layout="constrained")
    for ax, h in zip(axes[:, 0], heat):
        im = ax.imshow(np.asarray(h["scores"]), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_yticks(range(len(h["captions"])), [_short(c, 40) for c in h["captions"]], fontsize=7)
        ax.set_xticks(range(len(h["frames"])), [str(f) for f in h["frames"]], fontsize=7)
        ax.set_xlabel("frame index of the view (sampled frames, in order)", fontsize=7)
        ax.set_title(f"video {h['video']}: teacher frame scores per caption (softmax over the "
                     f"{len(h['frames'])} frames; uniform = {1 / len(h['frames']):.3f})", fontsize=8)
        fig.colorbar(im, ax=ax, label="frame score", fraction=0.03)
    fig.suptitle(f"epoch {details['epoch']} · {title.replace(chr(10), ' · ')}", fontsize=8)
    figs["frame_scores"] = _png(fig)

    b = details["block"]
    s = np.asarray(b["similarity"])
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(s, cmap="magma")
    for i in range(min(s.shape)):  # the matching (caption, video) pairs
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="cyan", linewidth=1.2))
    ax.set_xticks(range(len(b["videos"])), b["videos"], rotation=90, fontsize=6)
    ax.set_yticks(range(len(b["captions"])), [_short(c, 30) for c in b["captions"]], fontsize=6)
    ax.set_xlabel("video")
    ax.set_ylabel(f"caption ({b['rows']})")
    fig.colorbar(im, ax=ax, label="teacher similarity s(caption, video) (logit)")
    ax.set_title(f"similarity block, epoch {details['epoch']}, mode {details['mode']}; "
                 f"matching pairs on the diagonal (cyan)\n{title}", fontsize=8)
    figs["similarity_block"] = _png(fig)

    h = stats["histograms"]["argmax_frame"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(h["edges"][:-1], h["counts"], 0.8)
    ax.set_xticks(h["edges"][:-1])
    ax.set_xlabel("slot of the highest-scoring frame (0 = first sampled frame)")
    ax.set_ylabel("captions x epochs")
    ax.set_title(f"where the teacher looks (all epochs)\n{title}", fontsize=8)
    figs["argmax_frame"] = _png(fig)
    return figs


def videoqa_figures(stats: dict, details: dict, info: dict) -> dict[str, bytes]:
    """name -> PNG: per-epoch curves, top-1 probability histogram, gt_prob histogram, rank of the annotated answer."""
    plt = _plt()
    title = title_of(info)
    figs = {"per_epoch": per_epoch_figure(stats["per_epoch"], title)}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, h, what, who in ((axes[0], stats["histograms"]["top1_prob"], "teacher top-1 answer probability",
                              "all questions"),
                             (axes[1], details["gt_prob_hist"], "teacher probability of the annotated answer",
                              "questions with an in-vocabulary answer")):
        ax.set_title(who, fontsize=8)
        e = np.asarray(h["edges"])
        ax.bar(e[:-1], h["counts"], np.diff(e), align="edge", edgecolor="k")
        ax.set_xlim(0, 1)
        ax.set_xlabel(what, fontsize=8)
        ax.set_ylabel("questions x epochs")
    r = details["gt_rank_hist"]
    axes[2].bar(range(len(r["labels"])), r["counts"], color=["tab:blue"] * (len(r["labels"]) - 1) + ["tab:red"])
    step = max(1, len(r["labels"]) // 12)
    ticks = [i for i in range(len(r["labels"])) if i % step == 0 or i == len(r["labels"]) - 1]
    axes[2].set_xticks(ticks, [r["labels"][i] for i in ticks], fontsize=7)
    axes[2].set_xlabel(f"rank of the annotated answer in the stored top-{details['top_k']} (red: not stored)", fontsize=8)
    axes[2].set_ylabel("questions x epochs")
    axes[2].set_title("questions with an in-vocabulary answer", fontsize=8)
    fig.suptitle(f"all epochs · {title.replace(chr(10), ' · ')}", fontsize=8)
    figs["answer_distributions"] = _png(fig)
    return figs


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _table(header: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))  # noqa: E731
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _per_epoch_table(stats: dict) -> str:
    per = stats["per_epoch"]
    epochs = len(next(iter(per.values())))
    return "<h2>per epoch</h2>" + _table(["epoch", *per], [[e, *(per[k][e] for k in per)] for e in range(epochs)])


def classification_tables(details: dict, names: list[str]) -> list[str]:
    """HTML: per-class accuracy / gt_prob, ECE, FerKD band counts."""
    fk = details["ferkd"]
    return [
        "<h2>per class</h2>" + _table(
            ["class", "views", "teacher accuracy", "mean gt_prob"],
            [[n, v, a, g] for n, v, a, g in zip(names, details["per_class_views"], details["per_class_accuracy"],
                                                details["per_class_gt_prob"])]),
        f"<h2>calibration</h2><p id='ece'>ECE = {details['ece']:.4f}</p>",
        "<h2>FerKD bands</h2>" + _table(["below low", "between", "above high"], [[fk["below"], fk["between"], fk["above"]]]),
    ]


def videoqa_tables(details: dict) -> list[str]:
    """HTML: the teacher's answer ranking for a few questions."""
    k = max(len(r["top"]) for r in details["rankings"]) if details["rankings"] else 0
    rows = [[r["kind"], r["row"], r["video"], r["answer"], r["gt_prob"],
             *(f"{a} ({p:.3f})" for a, p in r["top"])] for r in details["rankings"]]
    return [f"<h2>answer rankings (epoch {details['epoch']})</h2>"
            "<p>The teacher's top answers with their probabilities; question = row of the questions file.</p>"
            + _table(["picked by", "question", "video", "annotated answer", "gt_prob", *(f"#{i + 1}" for i in range(k))],
                     rows)]


def retrieval_tables(details: dict) -> list[str]:
    """HTML: the captions of the heat maps, in full."""
    rows = [[h["video"], c] for h in details["heatmaps"] for c in h["captions"]]
    return ["<h2>captions of the heat maps</h2>" + _table(["video", "caption"], rows)]


def write_html(path: str, info: dict, sections: list[str], figures: dict[str, bytes]) -> None:
    """One self-contained HTML file: the tables (HTML sections) and the figures as base64 PNGs."""
    parts = [f"<h1>labelstore inspect</h1><p>{html.escape(title_of(info))} · task {html.escape(str(info.get('task')))}</p>",
             *sections]
    for name, png in figures.items():
        b64 = base64.b64encode(png).decode()
        parts.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>")
    style = ("body{font-family:sans-serif;max-width:1200px} table{border-collapse:collapse} "
             "td,th{border:1px solid #999;padding:2px 6px} img{max-width:100%}")
    with open(path, "w") as f:
        f.write(f"<!doctype html><html><head><meta charset='utf-8'><title>labelstore inspect</title>"
                f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def write_report(path: str, info: dict, stats: dict, details: dict | None, gallery: dict[str, list[dict]] | None = None) -> None:
    """The HTML report of a store from its `info` (cli.store_info), inspect stats, the task's details
    (views.classification_details / retrieval_details / videoqa_details) and, for classification with
    the dataset at hand, the gallery of replayed views (labelstore.pipeline.gallery.view_gallery)."""
    task = info.get("task")
    sections, figs = [_per_epoch_table(stats)], {}
    if task == "classification" and details:
        names = (info.get("dataset") or {}).get("classes") or [str(c) for c in range(info.get("num_classes") or 0)]
        sections += classification_tables(details, names)
        figs = classification_figures(stats, details, info, names)
        for kind, entries in (gallery or {}).items():
            if entries:
                figs[f"gallery_{kind}"] = gallery_figure(kind, entries, title_of(info))
    elif task == "retrieval" and details:
        sections += retrieval_tables(details)
        figs = retrieval_figures(stats, details, info)
    elif task == "videoqa" and details:
        sections += videoqa_tables(details)
        figs = videoqa_figures(stats, details, info)
    write_html(path, info, sections, figs)
