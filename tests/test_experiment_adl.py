"""`labelstore experiment adl`: the dense testbed's mAP against a hand-computed example, its data and teacher
stage through a real store, and the command end to end in a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import labelstore
from labelstore.errors import ConfigError
from labelstore.pipeline.stage import run_stage
from labelstore.trainers import experiment_adl
from labelstore.trainers.dense_cells import CellNet, CellsFolder, CellTask, average_precision, cell_map, \
    make_cells_folder, to_input
from labelstore.trainers.loop import seed_everything

torch.set_num_threads(1)


def test_average_precision_hand_example():
    # ranked by score: 0.9 (+), 0.8 (-), 0.7 (+), 0.4 (-), 0.2 (+)
    # precision at the positives: 1/1, 2/3, 3/5 -> AP = (1 + 2/3 + 3/5) / 3 = 0.75555...
    scores = np.array([0.2, 0.9, 0.4, 0.7, 0.8])
    labels = np.array([1, 1, 0, 1, 0])
    assert average_precision(scores, labels) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3, abs=1e-12)
    assert np.isnan(average_precision(scores, np.zeros(5)))
    assert average_precision(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)  # ties: input order


def test_cell_map_hand_example():
    # 2 images x 1 x 2 cells x 3 classes; class 2 has no positive and is left out of the mean
    s = np.zeros((2, 1, 2, 3))
    y = np.zeros((2, 1, 2, 3))
    s[..., 0] = [[[0.9, 0.1]], [[0.3, 0.8]]]  # class 0 positives: (0,0,0) and (1,0,0)
    y[0, 0, 0, 0] = y[1, 0, 0, 0] = 1        # ranking 0.9 +, 0.8 -, 0.3 +, 0.1 -: AP = (1 + 2/3) / 2
    s[..., 1] = [[[0.2, 0.6]], [[0.4, 0.1]]]  # class 1 positive: (1,0,1) score 0.1, ranked last of 4
    y[1, 0, 1, 1] = 1                         # AP = 1/4
    assert cell_map(s, y) == pytest.approx(((1 + 2 / 3) / 2 + 1 / 4) / 2, abs=1e-12)


def test_cells_data_and_store_round_trip(tmp_path):
    root = make_cells_folder(tmp_path / "pool", 12, seed=3, kinds={"objects": 0.5, "empty": 0.5})
    data = CellsFolder(root)
    assert len(data) == 12 and sorted(p.name for p in root.glob("*.png")) == data.files
    images = data.images()
    assert images.shape == (12, 64, 64, 3) and images.dtype == np.uint8
    y = data.targets()
    kinds = np.asarray(data.meta["kinds"])
    assert (y[kinds == "empty"].sum() == 0) and (y[kinds == "objects"].reshape(-1, 640).sum(1) >= 1).all()
    torch.manual_seed(0)
    teacher = CellNet(4, downs=3)
    path = str(tmp_path / "pool.zarr")
    stats = run_stage(CellTask(data, teacher, input_size=64, batch_size=5, shard_rows=8), path)
    assert stats["complete"] and stats["images"] == 12
    store = labelstore.open(path)
    q = store.read_array("cell_probs", epoch=0)
    assert store.task == "dense-cells" and q.shape == (12, 8, 8, 10) and q.dtype == np.float16
    with torch.inference_mode():
        want = teacher.eval()(to_input(images, 64)).sigmoid().numpy().astype(np.float16)
    np.testing.assert_array_equal(q, want)


def test_unknown_recipe_key_and_arm(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown recipe key\(s\) \['epochs'\]"):
        experiment_adl.setup(str(tmp_path / "x"), echo=lambda m: None, epochs=1)
    with pytest.raises(ConfigError, match=r"unknown arm\(s\) \['kl'\]"):
        experiment_adl.make_arms({}, ["kl"])


TINY = {"n_train": 24, "n_test": 12, "n_pool": 16, "teacher_width": 4, "teacher_epochs": 1, "student_width": 4,
        "student_epochs": 1}


def test_experiment_adl_cli(tmp_path):
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "labelstore", "experiment", "adl", "--seeds", "1", "--out", str(out),
           "--recipe", json.dumps(TINY)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("$ labelstore experiment adl --seeds 1")
    assert lines[1].startswith("metric: mAP   seeds: [0]   reference: focal")
    rows = {ln.split()[0]: ln for ln in lines[3:3 + len(experiment_adl.ARMS)]}
    assert list(rows) == list(experiment_adl.ARMS) and "(reference)" in rows["focal"]
    assert lines[3 + len(experiment_adl.ARMS)].startswith("teacher (CellNet width 4, 64 px) test mAP ")
    result = json.loads((out / "result.json").read_text())
    setup = result["setup"]
    assert setup["recipe"]["n_train"] == 24 and setup["pool_selected"].keys() == {"objects", "empty", "distractors"}
    assert labelstore.open(setup["train_store"]).num_samples == 24 and labelstore.open(setup["pool_store"]).num_samples == 16
    for arm, stats in result["arms"].items():
        assert len(stats["values"]) == 1 and 0 <= stats["values"][0] <= 1
    saved = json.loads((out / "adl-semi-all" / "seed_0.json").read_text())["metrics"]
    assert saved["train_images"] == 24 + 16  # no filter: every pool image
    kept = sum(v["kept"] for v in setup["pool_selected"].values())
    assert json.loads((out / "adl-semi" / "seed_0.json").read_text())["metrics"]["train_images"] == 24 + kept
    assert json.loads((out / "focal-semi-all" / "seed_0.json").read_text())["metrics"]["train_images"] == 24 + 16


def test_unfiltered_arms_train_on_every_pool_image(tmp_path):
    """focal-semi-all is the focal loss alone on the labelled images plus every pool image (the empty and
    distractor-only ones with all-negative pseudo labels); adl-semi-all is the same plus the ADL term.
    Each arm's run equals a student trained here on exactly that data, and the ADL term changes it."""
    meta = experiment_adl.setup(str(tmp_path / "exp"), echo=lambda m: None, **{**TINY, "n_pool": 20})
    r = meta["recipe"]
    got = {name: run(0) for name, run in experiment_adl.make_arms(meta, ["focal-semi-all", "adl-semi-all"]).items()}
    assert got["focal-semi-all"]["train_images"] == got["adl-semi-all"]["train_images"] == 24 + 20

    train, test, pool = CellsFolder(meta["train"]), CellsFolder(meta["test"]), CellsFolder(meta["pool"])
    kinds = np.asarray(pool.meta["kinds"])
    assert {"empty", "distractors"} <= set(kinds)
    q_pool = torch.from_numpy(labelstore.open(meta["pool_store"]).read_array("cell_probs", epoch=0).astype(np.float32))
    pseudo = (q_pool >= r["pseudo_threshold"]).float()  # [20, 8, 8, 10]: the teacher's hard labels
    size = r["student_size"]
    x = torch.cat([to_input(train.images(), size), to_input(pool.images(), size)])
    y = torch.cat([torch.from_numpy(train.targets()), pseudo])
    q = torch.cat([torch.from_numpy(labelstore.open(meta["train_store"]).read_array("cell_probs", epoch=0)
                                    .astype(np.float32)), q_pool])
    x_test = to_input(test.images(), size)

    def student(distill):
        seed_everything(0)
        model = CellNet(r["student_width"], downs=2)
        experiment_adl._train(model, x, y, q, distill, r["student_epochs"], r["batch_size"], r["lr"], seed=0)
        return experiment_adl._predict(model, x_test)  # [12, 8, 8, 10]

    focal_only, with_adl = student(None), student("adl")
    assert got["focal-semi-all"]["mAP"] == cell_map(focal_only, test.targets())
    assert got["adl-semi-all"]["mAP"] == cell_map(with_adl, test.targets())
    assert np.abs(focal_only - with_adl).max() > 1e-6  # the distillation term is what the two arms differ in
