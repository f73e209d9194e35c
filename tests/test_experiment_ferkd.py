"""The FerKD testbed (`labelstore experiment ferkd`): object boxes of the generator, the object fraction a
crop holds, FerKD's bands, and a quick real run through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from labelstore.errors import ConfigError, DataError
from labelstore.pipeline.images import ImageFolder, draw_shape, generate_shape, make_shapes_dataset, object_boxes
from labelstore.trainers.experiment_ferkd import (
    HELD_GROUPS,
    KAPPA,
    band_rule,
    by_object,
    object_fraction,
    store_bands,
    store_views,
)
from labelstore.trainers.losses import BANDS, ferkd_bands, ferkd_targets


def test_object_fraction_hand_computed():
    obj = [[10, 20, 10, 20]]  # rows 10..19, columns 20..39: area 200
    crops = np.array([
        [0, 0, 15, 30],  # rows 10..14 x columns 20..29 of the object: 5 * 10 = 50 -> 0.25
        [10, 20, 10, 20],  # the object itself -> 1
        [0, 0, 64, 64],  # the whole image -> 1
        [20, 20, 5, 5],  # just below it (rows 20..24) -> 0
        [12, 0, 4, 25],  # rows 12..15 x columns 20..24: 4 * 5 = 20 -> 0.1
    ])
    got = object_fraction(crops, np.repeat(obj, len(crops), 0))
    assert got.tolist() == pytest.approx([0.25, 1.0, 1.0, 0.0, 0.1])
    assert object_fraction([[0, 0, 5, 5]], [[0, 0, 0, 0]]).tolist() == [0.0]  # empty object box


def test_ferkd_bands_thresholds():
    gt = torch.tensor([0, 1, 2, 3, 4, 5, -1])
    p = torch.tensor([0.01, 0.05, 0.49, 0.5, 0.95, 0.99, float("nan")])
    assert ferkd_bands(gt, p, 0.05, 0.95).tolist() == [0, 1, 1, 2, 2, 3, 2]
    assert ferkd_bands(gt, p, 0.05, 0.95, mid=0.05).tolist() == [0, 2, 2, 2, 2, 3, 2]
    assert BANDS[0] == "dropped_low" and BANDS[3] == "dropped_high"


def test_ferkd_bands_background_cut():
    """background > 0: a view whose teacher top probability is under it is dropped_low whatever its
    gt probability; the others keep their gt-probability band."""
    gt = torch.tensor([0, 1, 2, 3, 4, -1])
    p = torch.tensor([0.12, 0.02, 0.29, 0.6, 0.99, 0.1])
    top = torch.tensor([0.25, 0.9, 0.29, 0.6, 0.99, 0.1])
    assert ferkd_bands(gt, p, 0.0, 0.95, mid=0.5, top_prob=top, background=0.3).tolist() == [0, 1, 0, 2, 3, 2]
    # with the gt-probability cut as well, the second view (confidently another class) drops too
    assert ferkd_bands(gt, p, 0.05, 0.95, mid=0.5, top_prob=top, background=0.3).tolist() == [0, 0, 0, 2, 3, 2]
    assert ferkd_bands(gt, p, 0.0, 0.95, mid=0.5).tolist() == [1, 1, 1, 2, 3, 2]  # background 0: off
    with pytest.raises(ConfigError, match="top_prob"):
        ferkd_bands(gt, p, 0.0, 0.95, background=0.3)
    # ferkd_targets takes the top probability from the stored top-k
    vals = torch.tensor([[0.25, 0.2], [0.9, 0.02], [0.29, 0.2], [0.6, 0.2], [0.99, 0.01], [0.1, 0.1]])
    idx = torch.tensor([[1, 0], [2, 1], [2, 0], [3, 0], [4, 0], [0, 1]])
    _, keep, counts = ferkd_targets(vals, idx, gt, p, 10, low=0.0, mid=0.5, background=0.3)
    assert keep.tolist() == [False, True, False, True, False, True]
    assert counts == {"dropped_low": 2, "softened": 1, "teacher": 2, "dropped_high": 1}


def test_band_rule_relative_to_chance():
    assert band_rule(10) == {"low": 0.0, "mid": 0.5, "high": 0.95, "background": KAPPA / 10}
    assert band_rule(1000)["background"] == pytest.approx(0.003)


def test_draw_shape_box_covers_the_object():
    img, (y, x, h, w) = draw_shape(np.random.default_rng(3), 0, 60, 70, (0.17, 0.24))  # a circle
    assert img.shape == (60, 70, 3) and img.dtype == np.uint8
    # a circle of radius r in [0.17, 0.24] * 60: its box is about 2r on a side (the image's edge may cut
    # up to 0.2 r off: its centre is at least 0.8 r inside)
    assert 2 * 0.17 * 60 - 2 <= max(h, w) <= 2 * 0.24 * 60 + 1 and min(h, w) >= 1.8 * 0.17 * 60 - 2
    assert 0 <= y and y + h <= 60 and 0 <= x and x + w <= 70
    # the default scale draws exactly generate_shape's image (the built-in data is unchanged)
    assert np.array_equal(draw_shape(np.random.default_rng(5), 3, 21, 34)[0],
                          generate_shape(np.random.default_rng(5), 3, 21, 34))


def test_shapes_dataset_object_boxes(tmp_path):
    train, test = make_shapes_dataset(tmp_path / "d", n_train=20, n_test=10, min_size=56, max_size=72,
                                      object_scale=(0.17, 0.24))
    data = ImageFolder(train)
    boxes = object_boxes(train)
    assert sorted(boxes) == sorted(data.ids) and len(object_boxes(test)) == 10
    for i, sid in enumerate(data.ids):
        H, W = data.src_shape(i)
        y, x, h, w = boxes[sid]
        assert 0 <= y and y + h <= H and 0 <= x and x + w <= W and 0.03 < h * w / (H * W) < 0.3
    with pytest.raises(DataError, match="object boxes"):
        object_boxes(make_shapes_dataset(tmp_path / "plain", n_train=10, n_test=10)[0])


def test_cli_ferkd_testbed_quick(tmp_path):
    """The real command on a tiny recipe, 1 seed: the arms' table and per store the band table."""
    out = tmp_path / "exp"
    recipe = {"n_train": 100, "n_test": 40, "teacher": "cnn-tiny", "teacher_epochs": 1, "teacher_lr": 0.001,
              "epochs": 1}
    cmd = [sys.executable, "-m", "labelstore", "experiment", "ferkd", "--seeds", "1", "--quiet", "--out", str(out),
           "--recipe", json.dumps(recipe)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("$ labelstore experiment ferkd --seeds 1")
    for arm in ("none", "fkd", "ferkd", "ferkd+selfmix"):
        assert any(line.split()[:1] == [arm] for line in lines), arm
    assert "teacher (cnn-tiny) test accuracy" in run.stdout
    meta = json.loads((out / "setup.json").read_text())
    assert meta["recipe"]["teacher_lr"] == 0.001 and meta["teacher_model"] == "cnn-tiny"
    assert meta["thresholds"] == band_rule(10)
    assert "FerKD bands: dropped_low top_prob < 0.3, mid 0.5, high 0.95" in run.stdout
    bands = store_bands(meta)
    for store in ("plain", "selfmix"):
        title = next(i for i, line in enumerate(lines) if f"({store} store, 100 views)" in line)
        rows = {line.split()[0]: line.split()[1:] for line in lines[title + 2:title + 7]}
        assert list(rows) == [*BANDS, "all"]
        stats = bands[store]
        assert sum(stats[b]["views"] for b in BANDS) == stats["all"]["views"] == 100
        for b in (*BANDS, "all"):
            assert int(rows[b][0]) == stats[b]["views"] and len(rows[b]) == 9
            if stats[b]["views"]:
                assert all(0 <= stats[b][k] <= 1 for k in ("gt_prob", "top_prob", "held", "crop_object", "no_object",
                                                           "quarter_object", "half_object"))
                assert f"{100 * stats[b]['held']:.1f}" == rows[b][4]
                assert stats[b]["no_object"] <= stats[b]["quarter_object"]
        if stats["dropped_low"]["views"]:
            assert stats["dropped_low"]["top_prob"] < 0.3  # every view there is under the cut
        # the FerKD arm trained with the setup's band rule: its counts are the store's bands (1 epoch)
        counts = json.loads((out / ("ferkd" if store == "plain" else "ferkd+selfmix") / "seed_0.json").read_text())
        assert counts["metrics"]["label_counts"] == {b: stats[b]["views"] for b in BANDS}
    # the plain store's views by how much of the object they hold: the groups partition the views
    groups = by_object(store_views(meta)["plain"])
    assert list(groups) == list(HELD_GROUPS) and sum(g["views"] for g in groups.values()) == 100
    assert groups["no object"]["views"] == round(100 * bands["plain"]["all"]["no_object"])
    title = next(i for i, line in enumerate(lines) if line.startswith("the teacher on the plain store's views"))
    for g, (name, s) in enumerate(groups.items()):
        assert lines[title + 2 + g].startswith(name) and int(lines[title + 2 + g][len(name):].split()[0]) == s["views"]
        if s["views"]:
            assert sum(s["bands"]) == pytest.approx(1.0) and s["gt_prob"] == sorted(s["gt_prob"])
    result = json.loads((out / "result.json").read_text())
    assert set(result["arms"]) == {"none", "fkd", "ferkd", "ferkd+selfmix"} and result["reference"] == "fkd"
    assert all(0 <= a["mean"] <= 1 for a in result["arms"].values())
