"""`labelstore train --loss feat-mse|simkd|srrl` through real subprocesses, on a tiny store taught with
`teach --features penultimate`; a store without features is one `error:` line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_cli import assert_user_error, run

import labelstore
from labelstore.pipeline.features import feature_name, load_head

TEACH = ["--epochs", "1", "--top-k", "3", "--image-size", "16", "--shard-samples", "16", "--chunk-samples", "8",
         "--batch-size", "8", "--workers", "1", "--seed", "1", "--quiet"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory, shapes_dir, teacher_ckpt) -> dict:
    w = tmp_path_factory.mktemp("featcli")
    run("teach", "--data", shapes_dir, "--teacher", teacher_ckpt, "--out", w / "feat.zarr", "--features",
        "penultimate", *TEACH)
    run("teach", "--data", shapes_dir, "--teacher", teacher_ckpt, "--out", w / "plain.zarr", *TEACH)
    return {"w": w, "feat": w / "feat.zarr", "plain": w / "plain.zarr", "data": shapes_dir}


@pytest.mark.parametrize("loss", ["feat-mse", "simkd", "srrl"])
def test_each_feature_loss_trains_a_student_from_the_store(stores, loss):
    out = stores["w"] / f"student-{loss}"
    run("train", "--store", stores["feat"], "--data", stores["data"], "--out", out, "--loss", loss, "--student",
        "cnn-micro", "--epochs", "1", "--batch-size", "16", "--eval-data", stores["data"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["loss"] == loss and len(m["history"]) == 1
    f = m["final"]
    assert math.isfinite(f["loss"]) and f["loss"] > 0 and f["views"] == 48
    assert 0.0 <= f["eval_accuracy"] <= 1.0 and math.isfinite(f["eval_loss"])
    state = torch.load(out / "student.pt", weights_only=True)
    store = labelstore.open(stores["feat"])
    assert feature_name(store) == "penultimate"
    d_t = load_head(store).in_features
    assert state["projector.weight"].shape == (d_t, 32)  # cnn-micro's 32 features -> the teacher's D_t
    if loss == "feat-mse":
        assert not any(k.startswith("teacher_head.") for k in state)
    else:  # the frozen teacher head travels with the student, unchanged
        torch.testing.assert_close(state["teacher_head.weight"], load_head(store).weight.detach())


def test_a_store_without_features_is_one_error_line(stores):
    for loss in ("feat-mse", "simkd", "srrl"):
        p = run("train", "--store", stores["plain"], "--data", stores["data"], "--out", stores["w"] / "o", "--loss",
                loss, "--epochs", "1", check=False)
        assert_user_error(p, str(stores["plain"]), "teach --features")
    p = run("train", "--store", stores["feat"], "--data", stores["data"], "--out", stores["w"] / "o", "--loss",
            "simkd", "--mode", "online", "--online-teacher", "cnn-tiny", "--epochs", "1", check=False)
    assert_user_error(p, "simkd", "--mode cache")


def test_experiment_feature_arms_on_a_tiny_recipe(tmp_path):
    """`labelstore experiment classification` with the feature arms: their store holds the labelled
    store's arrays unchanged plus the features; each arm writes a finite accuracy."""
    import numpy as np
    from conftest import read_arrays

    out = tmp_path / "exp"
    p = run("experiment", "classification", "--seeds", "1", "--arms", "cache,feat-mse,simkd,srrl", "--reference", "cache",
            "--out", out,
            "--recipe", '{"n_train": 120, "n_test": 40, "teacher_epochs": 1, "epochs": 1}', "--json")
    result = json.loads(p.stdout)
    assert set(result["arms"]) == {"cache", "feat-mse", "simkd", "srrl"}
    for arm in result["arms"].values():
        assert 0.0 <= arm["mean"] <= 1.0
    plain, feat = read_arrays(out / "labels.zarr"), read_arrays(out / "features.zarr")
    assert {k for k in feat if k.startswith("features/")} == {"features/values", "features/head/weight",
                                                              "features/head/bias"}
    for k in ("topk_values", "topk_indices", "gt_prob", "mc_values", "view_digest", "gt", "skipped", "sample_id",
              "source_hw"):
        np.testing.assert_array_equal(feat[k], plain[k], err_msg=k)
