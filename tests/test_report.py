"""`labelstore inspect --report`: a self-contained HTML with real PNGs, numbers equal to numpy's on the store."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
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
    assert "Completed" in p.stderr
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
