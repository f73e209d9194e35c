"""End to end through real `labelstore` subprocesses: data, teach, info, inspect, kill -9 + resume, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_arrays, corrupt_image, make_teacher_checkpoint, read_arrays

import labelstore
from labelstore.integrity import StoreError, view_check
from labelstore.pipeline.images import HDF5Images, ImageFolder, make_shapes_dataset
from labelstore.pipeline.replay import replay_views

ROOT = Path(__file__).resolve().parents[1]
_EXE = Path(sys.executable).with_name("labelstore")
CLI = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "labelstore.cli"]
N = 100
# many small work units (13 of 8 rows), small batches: slow enough to be killed in the middle
TEACH = ["--epochs", "4", "--top-k", "3", "--mc-passes", "2", "--policy", "cutmix", "--image-size", "16",
         "--shard-samples", "8", "--chunk-samples", "8", "--batch-size", "2", "--workers", "1", "--seed", "3",
         "--quiet"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # same threads in every run
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run(*args, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(CLI + [str(a) for a in args], cwd=ROOT, env=_env(), capture_output=True, text=True)
    if check:
        assert p.returncode == 0, f"{args}: rc={p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def assert_user_error(p: subprocess.CompletedProcess, *words: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    err = p.stderr.strip()
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def data_dir(work) -> Path:
    p = run("data", "shapes", "--out", work / "shapes", "--train", N, "--test", 4)
    assert "wrote" in p.stdout
    train = work / "shapes" / "train"
    files = sorted(f for f in train.rglob("*") if f.is_file())
    assert len(files) == N and {f.suffix for f in files} == {".png", ".jpg"}
    return train


@pytest.fixture(scope="module")
def ckpt(work) -> Path:
    return make_teacher_checkpoint(work / "teacher.pt")


@pytest.fixture(scope="module")
def full_store(work, data_dir, ckpt) -> Path:
    out = work / "full.zarr"
    p = run("teach", "--data", data_dir, "--teacher", ckpt, "--out", out, *TEACH)
    assert "complete" in p.stdout and f"{4 * N} views" in p.stdout
    return out


def test_teach_info_inspect(full_store, data_dir, ckpt, work):
    from labelstore.trainers.spec import load_checkpoint

    store = labelstore.open(full_store)
    assert store.complete and (store.epochs, store.num_samples, store.top_k, store.mc_passes) == (4, N, 3, 2)
    assert store.ids.tolist() == ImageFolder(data_dir).ids
    assert store.attrs["teacher"]["weights_sha256"] == load_checkpoint(ckpt)["weights_sha256"]
    assert store.attrs["teacher"]["params"] > 0

    info = json.loads(run("info", full_store, "--json").stdout)
    assert info["state"] == "complete" and info["units_done"] == info["units_total"] == 13
    assert info["bytes_per_view"] > 0 and info["bytes_total"] > 0
    assert info["bytes_per_view"] == pytest.approx(store.bytes_per_view())
    arrays = {a["name"]: a for a in info["arrays"]}
    assert {"topk_values", "topk_indices", "gt_prob", "mc_values", "view_digest", "sample_id", "gt"} <= arrays.keys()
    assert info["aug_params"] == "derived" and not [a for a in arrays if a.startswith("aug/")]
    views = 4 * N
    assert all(a["bytes_per_view"] == pytest.approx(a["bytes"] / views) for a in arrays.values())
    assert info["record_bytes_per_view"] == pytest.approx(sum(a["bytes_per_view"] for a in arrays.values()
                                                              if a["dims"][0] == "epoch"))
    assert arrays["topk_values"]["dims"] == ["epoch", "sample", "k"]
    assert arrays["topk_values"]["shape"] == [4, N, 3] and arrays["topk_values"]["dtype"] == "float16"
    assert arrays["topk_values"]["shards"] == [1, 8, 3] and arrays["topk_values"]["bytes"] > 0
    text = run("info", full_store).stdout
    assert "bytes per view" in text and "topk_values" in text and "B/view" in text

    plot = work / "stats.png"
    stats = json.loads(run("inspect", full_store, "--json", "--plot", plot).stdout)
    per = stats["per_epoch"]
    assert {"top1_agreement", "entropy", "gt_prob"} <= per.keys()
    assert all(len(v) == 4 for v in per.values())
    assert all(0.0 <= x <= 1.0 for x in per["top1_agreement"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 1000


def _flags(store: Path) -> int:
    d = store / "progress" / "c"
    return sum(len(files) for _, _, files in os.walk(d)) if d.is_dir() else 0


def test_kill_then_resume_equals_uninterrupted(full_store, data_dir, ckpt, work):
    out = work / "killed.zarr"
    proc = subprocess.Popen(CLI + ["teach", "--data", str(data_dir), "--teacher", str(ckpt), "--out", str(out), *TEACH],
                            cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while _flags(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, f"teach ended before it could be killed: {proc.stderr.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    flags = read_arrays(out)["progress"]
    assert flags.shape == (1, 13) and 1 <= flags.sum() < 13, flags
    with pytest.raises(StoreError, match="not finished"):
        labelstore.open(out)
    info = json.loads(run("info", out, "--json").stdout)
    assert info["state"] == "running" and info["units_done"] == int(flags.sum())

    p = run("teach", "--data", data_dir, "--teacher", ckpt, "--out", out, "--resume", *TEACH)
    assert "complete" in p.stdout
    assert labelstore.open(out).complete
    assert_same_arrays(out, full_store)  # every array, bitwise


def test_unreadable_image_is_a_clear_error(work, ckpt):
    train, _ = make_shapes_dataset(work / "bad", n_train=12, n_test=2, seed=1, min_size=20, max_size=30)
    src = ImageFolder(train)
    rel = next(r for r in src.ids if r.endswith(".png"))
    corrupt_image(train / rel)
    out = work / "bad.zarr"
    p = run("teach", "--data", train, "--teacher", ckpt, "--out", out, "--epochs", "1", "--image-size", "16",
            "--quiet", check=False)
    assert_user_error(p, "cannot decode image", rel)
    p = run("teach", "--data", train, "--teacher", ckpt, "--out", out, "--epochs", "1", "--image-size", "16",
            "--quiet", "--skip-bad", "--overwrite")
    store = labelstore.open(out)
    assert store.group["skipped"][:].tolist() == [r == rel for r in src.ids]
    # an impossible configuration is refused before anything is written
    p = run("teach", "--data", train, "--teacher", ckpt, "--out", work / "k.zarr", "--top-k", "11", "--quiet",
            check=False)
    assert_user_error(p, "top_k")
    assert not (work / "k.zarr").exists()


def test_resume_with_another_teacher_is_a_clear_error(full_store, data_dir, work):
    other = make_teacher_checkpoint(work / "other.pt", seed=7)
    before = read_arrays(full_store)
    p = run("teach", "--data", data_dir, "--teacher", other, "--out", full_store, "--resume", *TEACH, check=False)
    assert_user_error(p, "teacher", "weights_sha256")
    p = run("teach", "--data", data_dir, "--teacher", other, "--out", full_store, *TEACH, check=False)
    assert_user_error(p, "exists", "--resume")
    assert_same_arrays(full_store, before)  # the store is untouched


def test_hdf5_source_end_to_end(work, ckpt):
    h5 = work / "shapes.h5"
    run("data", "shapes-h5", "--out", h5, "--train", 24)
    out = work / "h5.zarr"
    p = run("teach", "--data", h5, "--teacher", ckpt, "--out", out, "--epochs", "2", "--top-k", "2",
            "--policy", "crop-flip", "--image-size", "16", "--shard-samples", "16", "--chunk-samples", "8",
            "--workers", "2", "--store-params", "--quiet")
    assert "complete" in p.stdout
    store = labelstore.open(out)
    assert store.attrs["aug_params"] == "stored" and {"aug/rrc/box", "aug/flip/flag"} <= store.arrays.keys()
    assert store.ids.tolist() == [f"index:{i}" for i in range(24)]
    assert store.attrs["dataset"]["kind"] != "image_folder"
    src = HDF5Images(h5)
    assert store.group["gt"][:].tolist() == np.asarray(src.labels).tolist()
    assert store.group["source_hw"][:].tolist() == [[32, 32]] * 24
    np.testing.assert_array_equal(view_check(replay_views(store, src, 1, np.arange(24)).digests()), store.read(1)["view_digest"])
    shutil.rmtree(out)


def test_two_ranks_started_together_fill_one_store(full_store, data_dir, ckpt, work):
    """Two processes, started at once on a path that does not exist yet: one creates the store (atomically),
    both write their own shards, and the result equals the single-process store."""
    out = work / "ranks.zarr"
    args = ["teach", "--data", data_dir, "--teacher", ckpt, "--out", out, *TEACH, "--world-size", "2"]
    procs = [subprocess.Popen(CLI + [str(a) for a in args] + ["--rank", str(r)], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate() for p in procs]
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, (so, se)
    assert not list(work.glob("ranks.zarr.creating-*"))
    # each rank checks the flags after writing its own, so the later of the two sees every flag set
    assert labelstore.open(out).complete
    assert_same_arrays(out, full_store)


def test_inspect_on_a_dask_distributed_cluster(full_store):
    """`inspect --scheduler` computes on a real dask.distributed cluster (loopback TCP) and agrees with local."""
    from distributed import LocalCluster

    local = json.loads(run("inspect", full_store, "--json").stdout)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      scheduler_port=0, dashboard_address=None) as cluster:
        remote = json.loads(run("inspect", full_store, "--json", "--scheduler", cluster.scheduler_address).stdout)
    assert remote["per_epoch"].keys() == local["per_epoch"].keys()
    for k, v in local["per_epoch"].items():
        np.testing.assert_allclose(remote["per_epoch"][k], v, rtol=1e-6)
    assert remote["histograms"] == local["histograms"]


def test_task_choices_are_the_registry():
    """`--task` offers exactly the registered tasks, read from the registry when first used: importing the
    CLI imports no task code, and the choices list a task registered after the import."""
    code = ("import sys, labelstore.cli as cli\n"
            "assert not [m for m in sys.modules if m.startswith(('labelstore.pipeline', 'labelstore.trainers'))]\n"
            "from labelstore.trainers.tasks import TASKS, Entry, register\n"
            "register('toy', Entry())\n"
            "assert cli.TASKS.choices == tuple(TASKS) and cli.TASKS.choices[-1] == 'toy'\n"
            "print(' '.join(cli.TASKS.choices))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["classification", "retrieval", "videoqa", "toy"]
