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
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return buf.getvalue()


def title_of(info: dict) -> str:
    """'store · teacher · dataset' for figure titles."""
    t, d = info.get("teacher") or {}, info.get("dataset") or {}
    return f"{info.get('path')}\nteacher {t.get('name')} · data {d.get('root') or d.get('kind')}"


def classification_figures(stats: dict, details: dict, info: dict, class_names: list[str]) -> dict[str, bytes]:
    """name -> PNG bytes: per-epoch curves, per-class bars, confusion, reliability, gt_prob histogram, MC std."""
    plt = _plt()
    title = title_of(info)
    figs = {}
    per = stats["per_epoch"]
    fig, axes = plt.subplots(1, len(per), figsize=(3.2 * len(per), 3), squeeze=False)
    units = {"entropy": "entropy (nats)", "mc_spread": "std of top-1 prob"}
    for ax, (name, vals) in zip(axes[0], per.items()):
        ax.plot(range(len(vals)), vals, marker="o")
        ax.set_xlabel("epoch")
        ax.set_ylabel(units.get(name, f"{name} (probability)"))
        if name not in units:
            ax.set_ylim(0, 1)
        else:  # from 0: a change in the 3rd decimal must not look dramatic
            ax.set_ylim(0, max(vals) * 1.1 or 1)
        ax.set_title(name)
        ax.set_xticks(range(len(vals)))
    fig.suptitle(title.replace("\n", " · "), fontsize=8)
    figs["per_epoch"] = _png(fig)

    C = len(details["per_class_accuracy"])
    x = np.arange(C)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * C), 3.5))
    ax.bar(x - 0.2, details["per_class_accuracy"], 0.4, label="teacher top-1 accuracy")
    ax.bar(x + 0.2, details["per_class_gt_prob"], 0.4, label="mean gt_prob")
    ax.set_xticks(x, class_names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability / accuracy")
    ax.legend(fontsize=8)
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
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.bar(e[:-1], rel["accuracy"], np.diff(e), align="edge", edgecolor="k", label="accuracy")
    ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("teacher top-1 probability (confidence)")
    ax.set_ylabel("top-1 accuracy")
    ax.legend(fontsize=8)
    ax.set_title(f"reliability, ECE = {details['ece']:.3f}\n{title}", fontsize=8)
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
        ax.bar(["teacher right", "teacher wrong"], [details["mc_std_correct"], details["mc_std_wrong"]])
        ax.set_ylabel("mean std over MC passes of top-1 prob")
        ax.set_title(f"MC-dropout uncertainty vs correctness\n{title}", fontsize=8)
        figs["mc_uncertainty"] = _png(fig)
    return figs


def _table(header: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))  # noqa: E731
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html(path: str, info: dict, stats: dict, details: dict | None, figures: dict[str, bytes],
               class_names: list[str] | None = None) -> None:
    """One self-contained HTML file: the figures as base64 PNGs and the numbers as tables."""
    parts = [f"<h1>labelstore inspect</h1><p>{html.escape(title_of(info))}</p>"]
    per = stats["per_epoch"]
    parts.append("<h2>per epoch</h2>" + _table(["epoch", *per], [[e, *(per[k][e] for k in per)]
                                                              for e in range(len(next(iter(per.values()))))]))
    if details:
        names = class_names or [str(c) for c in range(len(details["per_class_accuracy"]))]
        parts.append("<h2>per class</h2>" + _table(
            ["class", "views", "teacher accuracy", "mean gt_prob"],
            [[n, v, a, g] for n, v, a, g in zip(names, details["per_class_views"], details["per_class_accuracy"],
                                                details["per_class_gt_prob"])]))
        parts.append(f"<h2>calibration</h2><p id='ece'>ECE = {details['ece']:.4f}</p>")
        fk = details["ferkd"]
        parts.append("<h2>FerKD bands</h2>" + _table(["below low", "between", "above high"],
                                                     [[fk["below"], fk["between"], fk["above"]]]))
    for name, png in figures.items():
        b64 = base64.b64encode(png).decode()
        parts.append(f"<h2>{html.escape(name)}</h2><img alt='{name}' src='data:image/png;base64,{b64}'>")
    style = "body{font-family:sans-serif;max-width:1100px} table{border-collapse:collapse} td,th{border:1px solid #999;padding:2px 6px}"
    with open(path, "w") as f:
        f.write(f"<!doctype html><html><head><meta charset='utf-8'><title>labelstore inspect</title>"
                f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def write_report(path: str, info: dict, stats: dict, details: dict | None) -> None:
    """The HTML report of a store from its `info` (cli.store_info), inspect stats and classification_details."""
    names = (info.get("dataset") or {}).get("classes") or [str(c) for c in range(info.get("num_classes") or 0)]
    figs = classification_figures(stats, details, info, names) if details else {}
    write_html(path, info, stats, details, figs, names)
