"""torchrun on CPU: 2 teach processes give the arrays of 1; a 2-process DDP student trains from the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import N_TRAIN, assert_same_arrays

import labelstore
from labelstore.pipeline.dist import dist_env, epoch_share
from labelstore.pipeline.teacher import weights_hash

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("labelstore"))
TEACH = ["--epochs", "2", "--top-k", "3", "--mc-passes", "2", "--policy", "crop-flip", "--image-size", "16",
         "--shard-samples", "16", "--chunk-samples", "8", "--batch-size", "8", "--workers", "1", "--seed", "5",
         "--quiet"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def _run(cmd: list, **env) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=_env(**env), capture_output=True, text=True)
    assert p.returncode == 0, f"{cmd}: rc={p.returncode}\n{p.stdout}\n{p.stderr[-4000:]}"
    return p


def torchrun(*args) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "--no-python", EXE, *args])


def test_dist_env_reads_torchrun_variables_and_flags_win(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dist_env() == (0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist_env() == (3, 4, 1)
    assert dist_env(rank=0, world_size=2) == (0, 2, 0)
    with pytest.raises(ValueError, match="rank 4 / world size 4"):
        dist_env(rank=4)


def test_epoch_share_disjoint_equal_and_covering():
    rows = np.arange(10)[np.arange(10) != 3]  # 9 rows (one skipped): padded to 10
    shares = [epoch_share(rows, [0, 1], r, 2) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 5
    assert set(np.concatenate(shares)) == set(rows.tolist())
    even = [epoch_share(np.arange(12), [7, 0], r, 3) for r in range(3)]
    assert sorted(np.concatenate(even).tolist()) == list(range(12))  # disjoint and covering
    assert not np.array_equal(even[0], epoch_share(np.arange(12), [7, 1], 0, 3))  # a new order each epoch


@pytest.fixture(scope="module")
def taught(tmp_path_factory, shapes_dir, teacher_ckpt):
    """The same store taught by one process and by torchrun with 2 processes."""
    work = tmp_path_factory.mktemp("torchrun")
    one, two = work / "one.zarr", work / "two.zarr"
    _run([EXE, "teach", "--data", shapes_dir, "--teacher", teacher_ckpt, "--out", one, *TEACH])
    p = torchrun("teach", "--data", shapes_dir, "--teacher", teacher_ckpt, "--out", two, *TEACH)
    return one, two, p


def test_torchrun_teach_equals_one_process(taught):
    one, two, p = taught
    assert labelstore.open(two).complete, p.stdout
    assert_same_arrays(one, two)
    assert p.stdout.count("views in") == 2, p.stdout  # both ranks labelled their share
    views = sorted(int(line.split(": ")[1].split()[0]) for line in p.stdout.splitlines() if "views in" in line)
    assert views == [16 * 2, 32 * 2], views  # partitions {1} and {0, 2} of 3, two epochs


def test_torchrun_ddp_student(taught, shapes_dir, tmp_path):
    one, _, _ = taught
    out = tmp_path / "ddp"
    torchrun("train", "--store", one, "--data", shapes_dir, "--student", "cnn-tiny", "--epochs", "2",
             "--batch-size", "8", "--out", out)
    m = json.loads((out / "metrics.json").read_text())
    ddp = m["ddp"]
    assert ddp["world_size"] == 2 and len(ddp["per_epoch"]) == 2
    for ep in ddp["per_epoch"]:  # 48 rows, none skipped: 24 each, disjoint, covering
        assert ep["views_per_rank"] == [N_TRAIN // 2, N_TRAIN // 2]
        assert ep["distinct_rows"] == N_TRAIN
    assert [h["views"] for h in m["history"]] == [N_TRAIN, N_TRAIN]
    h0, h1 = ddp["weights_sha256_per_rank"]
    assert h0 == h1  # DDP kept the ranks' weights identical
    from labelstore.trainers.models import build_model

    student = build_model("cnn-tiny", num_classes=10)
    initial = weights_hash(student)
    student.load_state_dict(torch.load(out / "student.pt", weights_only=True))
    assert weights_hash(student) == h0 != initial  # rank 0 wrote the trained weights
