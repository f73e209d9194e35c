"""`labelstore experiment radi`: the RADI testbed's data (several correct answers, 90 answers), its
frozen features, its store (written by the real teacher stage, read by the students) and the command
end to end on a tiny recipe."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import labelstore
from labelstore.trainers import experiment_radi as X
from labelstore.trainers import tasks

torch.set_num_threads(1)

TINY = {"n_train": 12, "n_test": 4, "num_frames": 4, "teacher_hidden": 16, "teacher_epochs": 2, "teacher_views": 1,
        "store_epochs": 1, "mc_passes": 3, "student_hidden": 8, "student_epochs": 1, "cold_n": 5}


def test_registered_and_arms():
    assert tasks.experiment_module("radi") is X and "radi" in tasks.experiment_names()
    assert X.REFERENCE == "ce" and X.METRIC == "acc_any"
    assert X.ARMS["pair-shuffled"] == {**X.ARMS["pair-adaptive"], "margins": "shuffled"}
    assert X.ARMS["both-a0.1"] == {**X.ARMS["both"], "alpha": 0.1}


def test_vocabulary_and_derived_questions(tmp_path):
    from labelstore.pipeline.builtin_video import make_videoqa_dataset

    vocab = X.testbed_vocabulary()
    assert len(vocab) == len(set(vocab)) == 90
    d = make_videoqa_dataset(tmp_path / "d", n_train=12, n_test=2, frames=8, size=32, seed=0, vocab="large")
    counts = X.derive_questions(d["questions_train"], tmp_path / "q.jsonl")
    qs = [json.loads(line) for line in open(tmp_path / "q.jsonl")]
    assert qs and {q["type"] for q in qs} <= set(X.KEEP) and sum(counts.values()) == len(qs)
    for q in qs:
        assert q["answer"] in q["answers"] and set(q["answers"]) <= set(vocab)
    assert any(len(q["answers"]) > 1 for q in qs)  # real multi-answer questions
    assert X._drop_size("big red circle moving left") == "red circle moving left"


def test_clip_features_find_the_blob():
    """A red square on a dark background: the red channel's area, centroid and fill are the square's."""
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    img = np.full((32, 32, 3), 40, np.float32)
    img[4:12, 20:28] = (225, 35, 35)  # 8x8 square, rows 4..11, columns 20..27
    x = (torch.as_tensor(img).permute(2, 0, 1) / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    f = X.clip_features(x[None, None], mean, std).view(5, X.N_CLIP_FEATURES)  # [C, 7], red first
    area, cu, cv, var_u, var_v, skew, fill = f[0].tolist()
    assert area == pytest.approx(64 / 1024 * 10)
    assert cu == pytest.approx(24 / 32 - 0.5) and cv == pytest.approx(8 / 32 - 0.5)
    assert var_u == pytest.approx(10 * (64 - 1) / 12 / 32**2, rel=1e-4)  # discrete uniform over 8 columns
    assert fill == pytest.approx(1.0) and abs(skew) < 1e-4
    assert (f[1:] == 0).all()  # no other colour present


def test_cli_experiment_radi_end_to_end(tmp_path):
    """The real command on a tiny recipe: the table, the teacher line and the gate line; the store the
    students read is the teacher stage's (full ranking, MC passes)."""
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "labelstore", "experiment", "radi", "--seeds", "2",
           "--arms", "ce,kd,pair-shuffled,both-a0.1", "--out", str(out), "--recipe", json.dumps(TINY)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("$ labelstore experiment radi --seeds 2")
    rows = {ln.split()[0]: ln.split() for ln in lines[3:7]}
    assert set(rows) == {"ce", "kd", "pair-shuffled", "both-a0.1"} and all(r[1] == "2" for r in rows.values())
    assert lines[7].startswith("teacher (FeatureQA hidden 16") and "store K = 90, T = 3" in lines[7]
    assert lines[8].startswith("gate: kd - ce = ") and ("PASSED" in lines[8] or "FAILED" in lines[8])
    result = json.loads((out / "result.json").read_text())
    store = labelstore.open(result["setup"]["store"])
    assert store.task == "videoqa" and store.top_k == store.num_classes == 90 and store.mc_passes == 3
    assert store.num_samples == result["setup"]["n_train_questions"]
