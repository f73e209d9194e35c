"""What `labelstore inspect` shows of a text-to-video retrieval store: its statistics, computed with
Dask, and its section of the HTML report (frame-score heat maps, a similarity block). Named by the
task's entry in labelstore.trainers.tasks; the generic pieces are labelstore.views and labelstore.report.
"""

from __future__ import annotations

from typing import Callable

import dask
import dask.array as da
import numpy as np

from labelstore.report import png, pyplot, per_epoch_figure, short, table, title_of
from labelstore.views import dask_client

# y-axis label of each per-epoch statistic; those not in UNBOUNDED are probabilities / rates on [0, 1]
PER_EPOCH_LABELS = {
    "teacher_r1": "teacher R@1 (share of captions)", "teacher_batch_r1": "teacher R@1 within batches",
    "frame_entropy": "entropy over frames (nats)", "frame_peak": "mean max frame probability",
}
UNBOUNDED = ("frame_entropy",)


def inspect_stats(store, scheduler: str | None = None, warn: Callable[[str | None], None] = lambda m: None
                  ) -> tuple[dict, list[str]]:
    """(what `inspect --json` prints, the lines printed under the table): `retrieval_stats`, no lines."""
    return retrieval_stats(store, scheduler=scheduler), []


def report_section(store, stats: dict, info: dict, scheduler: str | None = None
                   ) -> tuple[list[str], dict[str, bytes]]:
    """(HTML sections, name -> PNG) of the report, from `retrieval_details` of epoch 0."""
    details = retrieval_details(store)
    return retrieval_tables(details), retrieval_figures(stats, details, info)


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
    with dask_client(scheduler):
        stats, hist = dask.compute(stats, hist)
    return {
        "per_epoch": {k: [float(x) for x in np.atleast_1d(v)] for k, v in stats.items()},
        "histograms": {"argmax_frame": {"edges": np.arange(m + 1).tolist(), "counts": np.asarray(hist).tolist()}},
    }


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


def retrieval_figures(stats: dict, details: dict, info: dict) -> dict[str, bytes]:
    """name -> PNG: per-epoch curves, frame-score heat maps per caption, a similarity block, argmax-frame histogram."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    title = title_of(info)
    figs = {"per_epoch": per_epoch_figure(stats["per_epoch"], title, PER_EPOCH_LABELS, UNBOUNDED)}
    heat = details["heatmaps"]
    fig, axes = plt.subplots(len(heat), 1, figsize=(9, 0.9 + 0.45 * sum(len(h["captions"]) + 2 for h in heat)),
                             squeeze=False, gridspec_kw={"height_ratios": [len(h["captions"]) + 1 for h in heat]},
                             layout="constrained")
    for ax, h in zip(axes[:, 0], heat):
        im = ax.imshow(np.asarray(h["scores"]), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_yticks(range(len(h["captions"])), [short(c, 40) for c in h["captions"]], fontsize=7)
        ax.set_xticks(range(len(h["frames"])), [str(f) for f in h["frames"]], fontsize=7)
        ax.set_xlabel("frame index of the view (sampled frames, in order)", fontsize=7)
        ax.set_title(f"video {h['video']}: teacher frame scores per caption (softmax over the "
                     f"{len(h['frames'])} frames; uniform = {1 / len(h['frames']):.3f})", fontsize=8)
        fig.colorbar(im, ax=ax, label="frame score", fraction=0.03)
    fig.suptitle(f"epoch {details['epoch']} · {title.replace(chr(10), ' · ')}", fontsize=8)
    figs["frame_scores"] = png(fig)

    b = details["block"]
    s = np.asarray(b["similarity"])
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(s, cmap="magma")
    for i in range(min(s.shape)):  # the matching (caption, video) pairs
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="cyan", linewidth=1.2))
    ax.set_xticks(range(len(b["videos"])), b["videos"], rotation=90, fontsize=6)
    ax.set_yticks(range(len(b["captions"])), [short(c, 30) for c in b["captions"]], fontsize=6)
    ax.set_xlabel("video")
    ax.set_ylabel(f"caption ({b['rows']})")
    fig.colorbar(im, ax=ax, label="teacher similarity s(caption, video) (logit)")
    ax.set_title(f"similarity block, epoch {details['epoch']}, mode {details['mode']}; "
                 f"matching pairs on the diagonal (cyan)\n{title}", fontsize=8)
    figs["similarity_block"] = png(fig)

    h = stats["histograms"]["argmax_frame"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(h["edges"][:-1], h["counts"], 0.8)
    ax.set_xticks(h["edges"][:-1])
    ax.set_xlabel("slot of the highest-scoring frame (0 = first sampled frame)")
    ax.set_ylabel("captions x epochs")
    ax.set_title(f"where the teacher looks (all epochs)\n{title}", fontsize=8)
    figs["argmax_frame"] = png(fig)
    return figs


def retrieval_tables(details: dict) -> list[str]:
    """HTML: the captions of the heat maps, in full."""
    rows = [[h["video"], c] for h in details["heatmaps"] for c in h["captions"]]
    return ["<h2>captions of the heat maps</h2>" + table(["video", "caption"], rows)]
