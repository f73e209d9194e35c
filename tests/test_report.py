"""`labelstore inspect --report`: a self-contained HTML with real PNGs, numbers equal to numpy's on the store."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from conftest import read_arrays
from test_cli import run


def _numpy_details(arrays: dict, C: int, bins: int = 10) -> dict:
    gt, skipped = arrays["gt"].astype(int), arrays["skipped"]
    top1 = arrays["topk_indices"][..., 0].astype(int)  # [E, N]
    p1 = arrays["topk_values"][..., 0].astype(np.float64)
    gp = arrays["gt_prob"].astype(np.float64)
    keep = np.broadcast_to((gt >= 0) & ~skipped, top1.shape)
    g = np.broadcast_to(gt, top1.shape)[keep]
    t, p, q = top1[keep], p1[keep], gp[keep]
    acc = [float((t[g == c] == c).mean()) if (g == c).any() else 0.0 for c in range(C)]
    gpc = [float(q[g == c].mean()) if (g == c).any() else 0.0 for c in range(C)]
    b = np.clip(np.digitize(p, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    ece = sum((b == i).sum() / len(p) * abs((t == g)[b == i].mean() - p[b == i].mean()) for i in range(bins) if (b == i).any())
    conf = np.zeros((C, C), int)
    np.add.at(conf, (g, t), 1)
    return {"acc": acc, "gp": gpc, "ece": ece, "confusion": conf,
            "bands": [int((q < 0.05).sum()), int(((q >= 0.05) & (q <= 0.95)).sum()), int((q > 0.95).sum())]}


def test_report_figures_and_numbers(base_store, tmp_path):
    out = tmp_path / "r.html"
    p = run("inspect", base_store, "--report", out, "--json")
    stats = json.loads(p.stdout)  # progress went to stderr, JSON alone on stdout
    assert "inspect: 100% of the tasks" in p.stderr and "\r" not in p.stderr  # not a terminal: log lines
    text = out.read_text()
    pngs = [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)]
    assert len(pngs) == 6  # per-epoch, per-class, confusion, reliability, gt_prob, MC uncertainty
    for png in pngs:
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        from PIL import Image
        import io

        im = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
        assert im.std() > 10  # not a blank canvas

    arrays = read_arrays(base_store)
    C = len(stats["details"]["per_class_accuracy"])
    want = _numpy_details(arrays, C)
    d = stats["details"]
    np.testing.assert_allclose(d["per_class_accuracy"], want["acc"], atol=1e-9)
    np.testing.assert_allclose(d["per_class_gt_prob"], want["gp"], atol=1e-9)
    np.testing.assert_array_equal(np.asarray(d["confusion"]), want["confusion"])
    assert abs(d["ece"] - want["ece"]) < 1e-9
    fk = d["ferkd"]
    assert [fk["below"], fk["between"], fk["above"]] == want["bands"]
    # and the HTML tables show those numbers
    assert f"ECE = {want['ece']:.4f}" in text
    for a, g in zip(want["acc"], want["gp"]):
        assert f"<td>{a:.4f}</td><td>{g:.4f}</td>" in text
    assert "<td>{}</td><td>{}</td><td>{}</td>".format(*want["bands"]) in text


def _pngs(html_text: str) -> dict[str, np.ndarray]:
    """alt -> the figure as a grey-level array, for every <img> of the report."""
    import io

    from PIL import Image

    out = {}
    for alt, b64 in re.findall(r"<img alt='([^']+)' src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html_text):
        png = base64.b64decode(b64)
        assert png[:8] == b"\x89PNG\r\n\x1a\n", alt
        out[alt] = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    return out


def test_gallery_in_report(base_store, shapes_dir, tmp_path):
    out = tmp_path / "g.html"
    run("inspect", base_store, "--report", out, "--data", shapes_dir, "--quiet")
    figs = _pngs(out.read_text())
    assert list(figs) == ["per_epoch", "per_class", "confusion", "reliability", "gt_prob", "mc_uncertainty",
                          "gallery_hardest", "gallery_easiest", "gallery_uncertain"]
    for alt, im in figs.items():
        assert im.std() > 10, alt  # not a blank canvas
    assert figs["gallery_hardest"].shape[0] > 2.5 * figs["gt_prob"].shape[0]  # one row per picked view


def _per_sample_extreme(arrays: dict, value: np.ndarray, largest: bool) -> tuple[np.ndarray, np.ndarray]:
    """(extreme over epochs per sample, its epoch) over valid views; invalid samples -> nan."""
    valid = (arrays["gt"].astype(int) >= 0) & ~arrays["skipped"]
    v = np.where(valid[None], value, np.nan)
    e = np.nanargmax(v, 0) if largest else np.nanargmin(v, 0)
    return v[e, np.arange(v.shape[1])], e


def test_gallery_picks_and_views_are_the_stored_ones(base_store, source):
    import labelstore
    from labelstore.pipeline.gallery import view_gallery
    from labelstore.pipeline.replay import replay_views

    store = labelstore.open(base_store)
    arrays = read_arrays(base_store)
    g = view_gallery(store, source, n=3)
    gp = arrays["gt_prob"].astype(np.float64)
    lo, e_lo = _per_sample_extreme(arrays, gp, largest=False)
    hi, e_hi = _per_sample_extreme(arrays, gp, largest=True)
    hard = np.argsort(lo, kind="stable")[:3]
    easy = np.argsort(-hi, kind="stable")[:3]
    assert [(x["epoch"], x["row"]) for x in g["hardest"]] == [(int(e_lo[r]), int(r)) for r in hard]
    assert [(x["epoch"], x["row"]) for x in g["easiest"]] == [(int(e_hi[r]), int(r)) for r in easy]
    std = arrays["mc_values"][..., 0].astype(np.float64).std(axis=2)  # [E, N]
    top_std, _ = _per_sample_extreme(arrays, std, largest=True)
    third = np.sort(top_std)[::-1][2]
    for x in g["uncertain"]:
        assert x["measure"] == "MC std"
        assert abs(x["score"] - std[x["epoch"], x["row"]]) < 1e-9 and x["score"] >= third - 1e-9
    names = store.attrs["classes"]
    for x in g["hardest"] + g["easiest"] + g["uncertain"]:
        e, r = x["epoch"], x["row"]
        want = replay_views(store, source, e, [r]).x[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(x["view"], want)
        np.testing.assert_array_equal(x["source"], source.load(r))
        rec = store.read(e, [r])  # the store derives its parameters (no aug/* arrays)
        assert x["box"] == rec["rrc/box"][0].tolist() and x["flipped"] == bool(rec["flip/flag"][0])
        assert x["top"] == [(names[int(c)], float(p)) for c, p in zip(arrays["topk_indices"][e, r], arrays["topk_values"][e, r])]
        assert x["gt"] == names[int(arrays["gt"][r])] and x["gt_prob"] == float(arrays["gt_prob"][e, r])


def test_gallery_without_mc_passes_picks_the_smallest_margin(source, teacher, tmp_path):
    import labelstore
    from conftest import teach_store
    from labelstore.pipeline.gallery import pick_views

    path = tmp_path / "nomc.zarr"
    teach_store(path, source, teacher, mc_passes=0, epochs=2)
    picks, measure = pick_views(labelstore.open(path), n=4)
    assert measure == "top-1 margin"
    arrays = read_arrays(path)
    v = arrays["topk_values"].astype(np.float64)
    margin = v[..., 0] - v[..., 1]
    low, e_low = _per_sample_extreme(arrays, margin, largest=False)
    rows = np.argsort(low, kind="stable")[:4]
    assert [(e, r) for e, r, _ in picks["uncertain"]] == [(int(e_low[r]), int(r)) for r in rows]
    assert [s for _, _, s in picks["uncertain"]] == pytest.approx(low[rows].tolist(), abs=1e-12)
