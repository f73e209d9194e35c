"""Nothing lost, nothing read that was not written: real stores through the real `labelstore` CLI.

--overwrite replaces only a label store; a deleted shard, an edited attribute or a deleted array
zarr.json is named by `verify` and refused by every reader; --resume of a complete store writes
nothing; a store killed at random points resumes to the uninterrupted result.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_teacher_checkpoint
from test_cli import CLI, ROOT, _env, assert_user_error, run

import labelstore
from labelstore import location, writer
from labelstore.errors import StoreError

SMALL = ["--epochs", "2", "--top-k", "3", "--image-size", "16", "--shard-samples", "8", "--chunk-samples", "8",
         "--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    w = tmp_path_factory.mktemp("integrity")
    d = json.loads(run("data", "shapes", "--out", w / "d", "--train", "24", "--test", "2", "--json").stdout)
    ckpt = make_teacher_checkpoint(w / "t.pt")
    store = w / "s.zarr"
    run("teach", "--data", d["train"], "--teacher", ckpt, "--out", store, *SMALL)
    return {"w": w, "data": Path(d["train"]), "ckpt": ckpt, "store": store}


def _copy(env, name: str) -> Path:
    dst = env["w"] / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(env["store"], dst)
    return dst


def _readers(env, store: Path) -> list[subprocess.CompletedProcess]:
    """inspect and train on `store` (each must refuse with one error line)."""
    return [run("inspect", store, "--quiet", check=False),
            run("train", "--store", store, "--data", env["data"], "--out", env["w"] / "student", "--epochs", "2",
                check=False)]


def _tree(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["data", "data_parent", "folder", "file"])
def test_overwrite_refuses_what_is_not_a_label_store(env, target):
    w = env["w"]
    if target == "folder":
        out = w / "victim"
        out.mkdir(exist_ok=True)
        (out / "important.txt").write_text("keep me")
    elif target == "file":
        out = w / "afile"
        out.write_text("keep me too")
    else:
        out = env["data"] if target == "data" else env["data"].parent
    before = _tree(out) if out.is_dir() else out.read_bytes()
    p = run("teach", "--data", env["data"], "--teacher", env["ckpt"], "--out", out, "--overwrite", *SMALL, check=False)
    line = assert_user_error(p, str(out), "is an existing file" if target == "file" else "--overwrite")
    assert ("data folder" in line) == target.startswith("data"), line
    assert (_tree(out) if out.is_dir() else out.read_bytes()) == before  # nothing deleted


def test_overwrite_replaces_a_label_store(env):
    out = _copy(env, "replace.zarr")
    (out / "topk_values" / "c" / "0" / "0" / "0").unlink()
    run("teach", "--data", env["data"], "--teacher", env["ckpt"], "--out", out, "--overwrite", *SMALL)
    assert run("verify", out, "--data", env["data"], "--samples", "4", check=False).returncode == 0


def test_deleted_shard_is_named_and_refused(env):
    s = _copy(env, "shard.zarr")
    (s / "topk_values" / "c" / "1" / "1" / "0").unlink()  # epoch 1, rows 8:16
    p = run("verify", s, "--data", env["data"], "--samples", "4", check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "array topk_values epoch 1 rows 8:16: missing" in p.stdout, p.stdout
    info = json.loads(run("info", s, "--check-objects", "--json").stdout)
    assert info["state"].startswith("damaged") and "topk_values epoch 1 rows 8:16" in info["missing"][0]
    info = json.loads(run("info", s, "--json").stdout)  # metadata only: objects are not checked by default
    assert info["missing"] is None and info["state"] == "complete"
    assert "objects: not checked" in run("info", s).stdout
    for r in _readers(env, s):
        assert_user_error(r, "topk_values epoch 1 rows 8:16", "missing")
    store = labelstore.open(s)
    with pytest.raises(StoreError, match="topk_values epoch 1 rows 8:16"):
        store.read(1)
    with pytest.raises(StoreError, match="topk_values epoch 1 rows 8:16"):
        store.to_dask()["topk_values"][1].compute()
    assert store.read(0)["topk_values"].any()  # the other epoch still reads


def _edit_top_k(a):
    a["top_k"] = 2


def _swap_classes(a):
    a["classes"][0], a["classes"][1] = a["classes"][1], a["classes"][0]


def _edit_seed(a):
    a["seed"] = a["seed"] + 1


@pytest.mark.parametrize("edit,attr", [(_edit_top_k, "top_k"), (_swap_classes, "classes"), (_edit_seed, "seed")])
def test_edited_attribute_is_named_and_refused(env, edit, attr):
    s = _copy(env, f"edit-{attr}.zarr")
    meta = json.loads((s / "zarr.json").read_text())
    edit(meta["attributes"])
    (s / "zarr.json").write_text(json.dumps(meta))
    p = run("verify", s, "--data", env["data"], "--samples", "4", check=False)
    assert p.returncode == 1 and f"attribute '{attr}' was edited" in p.stdout, p.stdout + p.stderr
    for r in _readers(env, s):
        assert_user_error(r, f"attribute '{attr}'")
    with pytest.raises(StoreError, match=f"'{attr}'"):
        labelstore.open(s)


def test_deleted_array_metadata_is_named_and_refused(env):
    s = _copy(env, "meta.zarr")
    (s / "gt_prob" / "zarr.json").unlink()
    p = run("verify", s, "--data", env["data"], "--samples", "4", check=False)
    assert p.returncode == 1 and "array gt_prob: its zarr.json is missing" in p.stdout, p.stdout + p.stderr
    for r in _readers(env, s):
        assert_user_error(r, "gt_prob", "zarr.json is missing")


def test_edited_array_metadata_is_named(env):
    s = _copy(env, "fill.zarr")
    meta = json.loads((s / "gt_prob" / "zarr.json").read_text())
    meta["fill_value"] = 1.0
    (s / "gt_prob" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="array gt_prob: zarr.json field.s. fill_value edited"):
        labelstore.open(s)


def test_resume_of_a_complete_store_writes_nothing(env):
    s = _copy(env, "done.zarr")
    before = _tree(s)
    stamp = os.stat(s / "zarr.json").st_mtime_ns
    p = run("teach", "--data", env["data"], "--teacher", env["ckpt"], "--out", s, "--resume", *SMALL)
    assert "already complete" in p.stdout
    assert _tree(s) == before and os.stat(s / "zarr.json").st_mtime_ns == stamp


def test_run_failing_before_its_first_unit_leaves_no_store(env, monkeypatch):
    (env["w"] / "wrong_teachers.py").write_text(textwrap.dedent("""
        import torch
        def one_d(num_classes=10):
            class M(torch.nn.Module):
                def forward(self, x):
                    return torch.zeros(x.shape[0], 3)  # 3 classes, the store expects 10
            return M()
    """))
    monkeypatch.setenv("PYTHONPATH", str(env["w"]))
    out = env["w"] / "never.zarr"
    p = run("teach", "--data", env["data"], "--teacher", "wrong_teachers:one_d", "--out", out, *SMALL, check=False)
    assert_user_error(p, "classes")
    assert not out.exists() and not list(env["w"].glob("never.zarr.creating-*"))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_creating_folder_removed_only_when_ours(tmp_path):
    out = tmp_path / "x.zarr"
    ours = tmp_path / f"x.zarr.creating-{_dead_pid()}"
    writer.create(str(ours), [], {"epochs": 1}, chunk_rows=8, shard_rows=8, epoch_groups=1)  # killed mid-creation
    theirs = tmp_path / f"x.zarr.creating-{_dead_pid() + 0}x"  # not a pid suffix
    theirs.mkdir()
    other = tmp_path / f"x.zarr.creating-{_dead_pid()}"
    other.mkdir()
    (other / "notes.txt").write_text("not a store")
    live = tmp_path / f"x.zarr.creating-{os.getpid()}"
    writer.create(str(live), [], {"epochs": 1}, chunk_rows=8, shard_rows=8, epoch_groups=1)  # a live creator's
    assert writer.remove_stale_creating(str(out)) == [str(ours)]
    assert not ours.exists() and theirs.exists() and other.exists() and live.exists()


def test_url_store_killed_right_after_its_root_zarr_json_says_so():
    from labelstore.schema import ArraySpec

    url = "memory://integrity/half.zarr"
    broken = ArraySpec("x", ("sample",), (8,), "no-such-dtype", "an array that cannot be created")

    def killed(at):  # the creation stops right after its first object, the root zarr.json
        writer.create(at, [broken], {"epochs": 1}, chunk_rows=8, shard_rows=8, epoch_groups=1)

    with pytest.raises(Exception):  # noqa: B017 - whatever stops it
        writer.open_or_create(url, killed, lambda g: None)
    fs, root = location.filesystem(url)
    assert fs.ls(root, detail=False) == [f"{root}/zarr.json"]  # nothing but the root zarr.json
    with pytest.raises(StoreError, match="interrupted while it was being created: pass --overwrite"):
        writer.open_or_create(url, killed, lambda g: None, resume=True)
    built = writer.open_or_create(url, lambda at: writer.create(at, [], {"epochs": 1}, chunk_rows=8, shard_rows=8,
                                                                 epoch_groups=1), lambda g: None, overwrite=True)
    assert built.attrs["state"] == "running"
    location.remove(url)


# ------------------------------------------------------------------------------------------------
KILL = ["--epochs", "2", "--top-k", "3", "--image-size", "16", "--shard-samples", "4", "--chunk-samples", "4",
        "--batch-size", "2", "--workers", "1", "--quiet", "--mc-passes", "2", "--seed", "5"]


def _arrays(path: Path) -> dict[str, np.ndarray]:
    store = labelstore.open(path)
    return {n: np.asarray(a[...]) for n, a in store.arrays.items()}


def test_kill_at_random_points_then_resume_equals_uninterrupted(env):
    """kill -9 `labelstore teach` at seeded random points (after 0..5 finished units, a random short
    delay on top), resume, and compare every array with an uninterrupted run. Whatever point the
    kill lands on (before creation, mid-unit, after the last unit), the resumed store is equal."""
    w = env["w"]
    ref = w / "ref.zarr"
    run("teach", "--data", env["data"], "--teacher", env["ckpt"], "--out", ref, *KILL)
    want = _arrays(ref)
    rng = np.random.default_rng(20)
    for trial in range(3):
        out = w / f"killed-{trial}.zarr"
        after_units, delay = int(rng.integers(0, 6)), float(rng.uniform(0, 0.5))
        proc = subprocess.Popen(CLI + ["teach", "--data", str(env["data"]), "--teacher", str(env["ckpt"]),
                                       "--out", str(out), *KILL], cwd=ROOT, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None:  # observed progress, not the clock, decides when to kill
            flags = list((out / "progress" / "c").rglob("*")) if out.exists() else []
            if sum(f.is_file() for f in flags) >= after_units:
                time.sleep(delay)
                break
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        mode = "--resume" if location.group_exists(str(out)) else "--overwrite"
        run("teach", "--data", env["data"], "--teacher", env["ckpt"], "--out", out, mode, *KILL)
        got = _arrays(out)
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"trial {trial} array {name}")
        assert run("verify", out, "--data", env["data"], "--samples", "8", check=False).returncode == 0
        assert not list(w.glob(f"killed-{trial}.zarr.creating-*"))  # a kill mid-creation's folder: removed by the rerun


def test_inspect_allow_incomplete_leaves_out_unwritten_units(env):
    """A store whose last unit (rows 16:24) was never written: its rows read as fill values and must
    not count (as zeros) in the per-epoch means; inspect says how many units are missing."""
    import zarr

    s = _copy(env, "partial.zarr")
    full = labelstore.open(env["store"])
    mass = [float(full.read(e)["topk_values"][:16].astype(np.float32).sum(-1).mean()) for e in range(full.epochs)]
    g = zarr.open_group(str(s), mode="r+", use_consolidated=False)
    for name, lay in g.attrs["integrity"]["layout"].items():
        if lay["per_epoch"]:
            for f in (s / name / "c").glob("*/2*"):
                shutil.rmtree(f) if f.is_dir() else f.unlink()
    g["progress"][0, 2] = 0
    g["manifest"][0, 2] = ""
    g.attrs["state"] = "running"
    assert_user_error(run("inspect", s, "--quiet", check=False), "has not finished")
    p = run("inspect", s, "--quiet", "--allow-incomplete", "--json")
    assert "1 of 3 work units are not written" in p.stderr
    got = json.loads(p.stdout)["per_epoch"]["topk_mass"]
    np.testing.assert_allclose(got, mass, rtol=1e-5)
