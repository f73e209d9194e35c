"""The gallery of `labelstore inspect --report --data DIR`: replayed views of chosen samples as plain arrays.

classification_inspect.gallery_figure draws them from plain data: everything here comes out as
uint8 images, numbers and strings.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import torch

from labelstore.views import to_dask

from .augment import HorizontalFlip, RandomResizedCrop, Views
from .replay import check_data, replay_views, store_policy

KINDS = ("hardest", "easiest", "uncertain")
THUMB_SIDE = 256  # longest side of a source image as the report shows it (drawing full-size photos is slow)


def thumbnail(image: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """uint8 [h, w, 3] with max(h, w) <= side (area-averaged; the image itself when already small)."""
    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image
    from PIL import Image

    f = side / max(h, w)
    return np.asarray(Image.fromarray(image).resize((max(1, round(w * f)), max(1, round(h * f))), Image.BOX))


def view_to_uint8(views: Views, j: int) -> np.ndarray:
    """View j of a rendered batch as uint8 [H, W, 3] for display.

    A MixUp view is blended as the teacher saw it: round(lam * x + (1 - lam) * partner).
    """
    x = views.x[j]  # uint8 [3, H, W]
    if views.partner is not None and float(views.lam[j]) != 1.0:
        lam = float(views.lam[j])
        x = (lam * x.float() + (1.0 - lam) * views.partner[j].float()).round().clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 0).numpy().copy()


def pick_views(store, n: int = 4) -> tuple[dict[str, list[tuple[int, int, float]]], str]:
    """(kind -> [(epoch, row, score)], the uncertainty measure): the n samples (one view each) at the
    extremes, computed with Dask; score = gt_prob, or the uncertainty measure for "uncertain".

    Over views that were not skipped (hardest / easiest: with gt >= 0; an unlabelled store has only
    "uncertain" views), per sample the most extreme epoch of
      hardest   : lowest gt_prob (teacher probability of the ground-truth class)
      easiest   : highest gt_prob
      uncertain : largest std over the MC passes of the top-1 probability; without MC passes the
                  smallest top-1 margin p1 - p2
    """
    a = to_dask(store)
    decoded = ~a["skipped"]  # [N]
    labelled = (a["gt"].astype("int64") >= 0) & decoded  # [N]
    gp = a["gt_prob"].astype("float64")  # [E, N]
    if "mc_values" in a:
        measure, unc, most = "MC std", a["mc_values"][..., 0].astype("float64").std(axis=2), True  # [E, N]
    else:
        v = a["topk_values"].astype("float64")  # [E, N, K]
        measure, unc, most = "top-1 margin", v[..., 0] - (v[..., 1] if v.shape[-1] > 1 else 0), False
    todo = {}
    for kind, value, largest, valid in (("hardest", gp, False, labelled), ("easiest", gp, True, labelled),
                                        ("uncertain", unc, most, decoded)):
        s = da.where(valid[None], value if largest else -value, -np.inf)  # [E, N] larger = more extreme
        todo[kind] = (s.max(0), s.argmax(0), 1.0 if largest else -1.0)  # [N] per sample: extreme, its epoch
    (todo,) = dask.compute(todo)
    out = {}
    for kind, (best, epochs, sign) in todo.items():
        rows = np.argsort(-best, kind="stable")[:n]  # ties: lower row first
        out[kind] = [(int(epochs[r]), int(r), float(sign * best[r])) for r in rows if np.isfinite(best[r])]
    return out, measure


def view_gallery(store, data, n: int = 4) -> dict[str, list[dict]]:
    """kind -> entries for classification_inspect.gallery_figure, one per view of pick_views(store, n).

    Entry: epoch, row, sample_id, source uint8 [h, w, 3] (the decoded source image, shrunk to at most
    THUMB_SIDE pixels a side for display), source_hw (its decoded size), box (y, x, h, w)
    of the recorded random-resized crop in source pixels (None without one), flipped (bool or None),
    partner (the sample mixed in, -1 if none), mix_weight (the own sample's share of the view, 1 if
    unmixed), view uint8 [H, W, 3] (the replayed view), gt (class name), gt_prob, top [(class name,
    probability)] (the stored top-3), score and measure (what it was picked by: gt_prob, "MC std" or
    "top-1 margin").
    """
    check_data(store, data)
    policy = store_policy(store)
    crop = next((f"{op.name}/box" for op in policy.ops if isinstance(op, RandomResizedCrop)), None)
    flip = next((f"{op.name}/flag" for op in policy.ops if isinstance(op, HorizontalFlip)), None)
    names = store.attrs.get("classes") or [str(c) for c in range(store.num_classes)]
    ids = store.ids
    out = {}
    picks_of, measure = pick_views(store, n)
    for kind, picks in picks_of.items():
        out[kind] = []
        for epoch, row, score in picks:
            rec = store.read(epoch, np.array([row]), include_rows=True)
            views = replay_views(store, data, epoch, [row], policy)
            params = {k: rec[k] for k in policy.param_spec()}
            partners = policy.partners(params, 1)
            k = min(3, rec["topk_values"].shape[1])
            source = data.load(row)
            out[kind].append({
                "epoch": epoch, "row": row, "sample_id": str(ids[row]), "source": thumbnail(source),
                "source_hw": tuple(int(v) for v in source.shape[:2]),
                "box": [int(v) for v in rec[crop][0]] if crop else None,
                "flipped": bool(rec[flip][0]) if flip else None, "partner": int(partners[0]),
                "mix_weight": float(policy.mix_weight_array(params, 1)[0]),
                "view": view_to_uint8(views, 0), "gt": names[int(rec["gt"][0])] if rec["gt"][0] >= 0 else "unlabelled",
                "gt_prob": float(rec["gt_prob"][0]), "score": score,
                "measure": "gt_prob" if kind != "uncertain" else measure,
                "top": [(names[int(c)], float(p)) for c, p in zip(rec["topk_indices"][0, :k], rec["topk_values"][0, :k])],
            })
    return out
