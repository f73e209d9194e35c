"""What `labelstore inspect` shows of an open-ended VideoQA store: its statistics, computed with Dask,
and its section of the HTML report (answer rankings, where the annotated answer ranks). Named by the
task's entry in labelstore.trainers.tasks; the generic pieces are labelstore.views and labelstore.report.
"""

from __future__ import annotations

from typing import Callable

import dask
import dask.array as da
import numpy as np

from labelstore.report import png, pyplot, per_epoch_figure, table, title_of
from labelstore.views import dask_client

# y-axis label of each per-epoch statistic; those not in UNBOUNDED are probabilities / rates on [0, 1]
PER_EPOCH_LABELS = {
    "top1_agreement": "share of views with top-1 = gt", "topk_mass": "mean stored top-k mass",
    "gt_prob": "mean P(ground truth)", "mc_spread": "std over MC passes of top-1 prob",
}
UNBOUNDED = ("mc_spread",)


def inspect_stats(store, scheduler: str | None = None, warn: Callable[[str | None], None] = lambda m: None
                  ) -> tuple[dict, list[str]]:
    """(what `inspect --json` prints, the lines printed under the table): `videoqa_stats`, no lines."""
    return videoqa_stats(store, scheduler=scheduler), []


def report_section(store, stats: dict, info: dict, scheduler: str | None = None
                   ) -> tuple[list[str], dict[str, bytes]]:
    """(HTML sections, name -> PNG) of the report, from `videoqa_details` (rankings of epoch 0)."""
    details = videoqa_details(store, scheduler=scheduler)
    return videoqa_tables(details), videoqa_figures(stats, details, info)


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
    with dask_client(scheduler):
        stats, hist = dask.compute(stats, hist)
    return {
        "per_epoch": {k: [float(x) for x in np.atleast_1d(val)] for k, val in stats.items()},
        "histograms": {"top1_prob": {"edges": hist[1].tolist(), "counts": hist[0].tolist()}},
    }


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
    a = store.to_dask()
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
    with dask_client(scheduler):
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


def videoqa_figures(stats: dict, details: dict, info: dict) -> dict[str, bytes]:
    """name -> PNG: per-epoch curves, top-1 probability histogram, gt_prob histogram, rank of the annotated answer."""
    plt = pyplot()
    title = title_of(info)
    figs = {"per_epoch": per_epoch_figure(stats["per_epoch"], title, PER_EPOCH_LABELS, UNBOUNDED)}
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
    figs["answer_distributions"] = png(fig)
    return figs


def videoqa_tables(details: dict) -> list[str]:
    """HTML: the teacher's answer ranking for a few questions."""
    k = max(len(r["top"]) for r in details["rankings"]) if details["rankings"] else 0
    rows = [[r["kind"], r["row"], r["video"], r["answer"], r["gt_prob"],
             *(f"{a} ({p:.3f})" for a, p in r["top"])] for r in details["rankings"]]
    return [f"<h2>answer rankings (epoch {details['epoch']})</h2>"
            "<p>The teacher's top answers with their probabilities; question = row of the questions file.</p>"
            + table(["picked by", "question", "video", "annotated answer", "gt_prob", *(f"#{i + 1}" for i in range(k))],
                     rows)]
