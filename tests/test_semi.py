"""ADL's semi-supervised scheme end to end: an unlabelled folder (no class folders) through the real
teacher stage CLI, then a student on labelled + selected unlabelled views through the real train CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import labelstore
from labelstore.pipeline.images import ImageFolder, open_source
from labelstore.trainers.distill import select_unlabeled

from conftest import NUM_CLASSES


@pytest.fixture(scope="module")
def unlabeled_dir(tmp_path_factory, shapes_dir):
    """The shapes files, flat (no class folders), plus one in a nested folder and a hidden one."""
    root = tmp_path_factory.mktemp("unlabeled") / "pool"
    (root / "nested").mkdir(parents=True)
    files = sorted(p for p in shapes_dir.rglob("*") if p.is_file())
    for p in files[:-1]:
        shutil.copy(p, root / p.name)
    shutil.copy(files[-1], root / "nested" / files[-1].name)
    shutil.copy(files[0], root / ".hidden.png")
    return root


def test_unlabeled_folder_listing(unlabeled_dir, shapes_dir, tmp_path):
    data = open_source(unlabeled_dir, unlabeled=True)
    n = sum(1 for p in shapes_dir.rglob("*") if p.is_file())
    assert len(data) == n and data.classes == [] and (data.labels == -1).all()
    assert data.ids == sorted(data.ids) and f"nested/{sorted(shapes_dir.rglob('*'))[-1].name}" in data.ids
    assert ".hidden.png" not in data.ids
    assert data.load(0).shape[2] == 3
    shutil.copy(unlabeled_dir / data.ids[0], tmp_path / data.ids[0])  # a flat folder read as labelled
    with pytest.raises(ValueError, match="no class sub-folders.*--unlabeled"):
        ImageFolder(tmp_path)


def test_select_unlabeled_rows():
    """Labelled rows stay as they are; unlabelled ones stay with the teacher's top-1 as a whole-view
    label when it is >= threshold, and leave the batch otherwise."""
    q = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.3, 0.2], [0.05, 0.05, 0.9], [0.2, 0.2, 0.6]])
    t = {"gt": torch.tensor([0, -1, -1, 2]), "mix_weight": torch.tensor([0.75, 0.5, 0.5, 1.0]),
         "partner_gt": torch.tensor([1, 4, 5, -1]), "index": torch.arange(4)}
    x = torch.arange(4.0)[:, None]
    x2, t2, p2, info = select_unlabeled(x, t, q, 0.8, 3)
    assert t2["index"].tolist() == [0, 2, 3] and x2[:, 0].tolist() == [0.0, 2.0, 3.0]
    assert t2["gt"].tolist() == [0, 2, 2] and t2["mix_weight"].tolist() == [0.75, 1.0, 1.0]
    assert t2["partner_gt"].tolist() == [1, -1, -1] and torch.equal(p2, q[[0, 2, 3]])
    assert info == {"unlabeled_views": 2, "unlabeled_selected": 1}


def _run(args, env):
    r = subprocess.run([sys.executable, "-m", "labelstore", *args], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return r


def test_semi_supervised_cli_end_to_end(tmp_path, unlabeled_dir, shapes_dir, base_store, teacher_ckpt, subprocess_env):
    """teach --unlabeled labels the pool (gt -1, every view); train --unlabeled-store selects exactly
    the views whose stored top-1 is >= the threshold, each epoch."""
    u_store = tmp_path / "pool.zarr"
    common = ["--teacher", str(teacher_ckpt), "--epochs", "2", "--top-k", "3", "--mc-passes", "2", "--image-size", "16",
              "--policy", "crop-flip-jitter", "--quiet"]
    r = subprocess.run([sys.executable, "-m", "labelstore", "teach", "--data", str(unlabeled_dir), "--out",
                        str(tmp_path / "x.zarr"), "--unlabeled", *common], capture_output=True, text=True,
                       env=subprocess_env)
    assert r.returncode == 2 and "--num-classes" in r.stderr and str(unlabeled_dir) in r.stderr
    _run(["teach", "--data", str(unlabeled_dir), "--unlabeled", "--num-classes", str(NUM_CLASSES), "--out", str(u_store),
          *common], subprocess_env)
    store = labelstore.open(str(u_store))
    assert store.num_samples == len(open_source(unlabeled_dir, unlabeled=True))
    assert (store.read_array("gt") == -1).all() and np.isnan(store.read_array("gt_prob", 0)).all()
    top1 = np.stack([store.read_array("topk_values", e)[:, 0] for e in range(2)]).astype(np.float32)
    threshold = float(np.median(top1))
    expected = int((top1 >= threshold).sum())
    assert 0 < expected < top1.size

    base = labelstore.open(str(base_store))
    out = tmp_path / "student"
    train = ["train", "--store", str(base_store), "--data", str(shapes_dir), "--loss", "adl", "--hard-weight", "1",
             "--student", "cnn-micro", "--epochs", "2", "--batch-size", "16", "--out", str(out), "--json"]
    r = _run([*train, "--unlabeled-store", str(u_store), "--unlabeled-data", str(unlabeled_dir),
              "--select-threshold", str(threshold)], subprocess_env)
    m = json.loads(r.stdout)
    assert m["label_counts"] == {"unlabeled_views": 2 * store.num_samples, "unlabeled_selected": expected}
    assert sum(h["views"] for h in m["history"]) == 2 * base.num_samples + expected
    # the pair of options goes together, and an unlabelled store of other classes is refused
    bad = subprocess.run([sys.executable, "-m", "labelstore", *train, "--unlabeled-store", str(u_store)],
                         capture_output=True, text=True, env=subprocess_env)
    assert bad.returncode == 2 and "--unlabeled-data" in bad.stderr
