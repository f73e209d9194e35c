"""Your own data and the teacher's input conventions through the real CLI (issue 22, the data half):
custom mean/std recorded and used by every reader, op-list and JSON policies (crop without flip),
policy errors, unlabelled stores with every --data command, view_digest in replay batches,
progress lines outside a terminal, and a missing optional extra named in one error line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_teacher_checkpoint
from test_cli import CLI, ROOT, _env, assert_user_error, run

import labelstore
from labelstore.integrity import view_check
from labelstore.pipeline.augment import (POLICY_NAMES, HorizontalFlip, Policy, RandomResizedCrop, Views,
                                         make_policy)
from labelstore.pipeline.images import ImageFolder
from labelstore.pipeline.policy_spec import parse_policy
from labelstore.pipeline.replay import ReplayLoader, open_data, replay_views

SMALL = ["--epochs", "2", "--top-k", "3", "--image-size", "16", "--shard-samples", "8", "--chunk-samples", "8",
         "--batch-size", "8", "--workers", "1"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    w = tmp_path_factory.mktemp("byot")
    d = json.loads(run("data", "shapes", "--out", w / "d", "--train", "24", "--test", "8", "--json").stdout)
    flat = w / "photos"  # an unlabelled folder: the same images, no class folders
    flat.mkdir()
    for i, f in enumerate(sorted(Path(d["train"]).rglob("*.*"))):
        shutil.copy(f, flat / f"img{i:03d}{f.suffix}")
    return {"w": w, "train": d["train"], "test": d["test"], "photos": flat, "ckpt": make_teacher_checkpoint(w / "t.pt")}


def teach(env, out, *args, data=None, check=True):
    return run("teach", "--data", data or env["train"], "--teacher", env["ckpt"], "--out", env["w"] / out, *SMALL,
               *args, check=check)


# --------------------------------------------------------------------------- mean / std


def test_custom_mean_std_recorded_and_applied_by_teacher_and_students(env):
    teach(env, "norm.zarr", "--mean", "0.5,0.5,0.5", "--std", "1/4,0.25,0.25", "--policy", "rrc(scale=0.35,1)",
          "--quiet")
    store = labelstore.open(env["w"] / "norm.zarr")
    pol = store.attrs["policy"]
    assert pol["mean"] == [0.5, 0.5, 0.5] and pol["std"] == [0.25, 0.25, 0.25]
    # a student's input: the store's normalisation, (pixel / 255 - 0.5) / 0.25
    loader = ReplayLoader(store, ImageFolder(env["train"]), epoch=1, batch_size=8, shuffle=False)
    x, t = next(iter(loader))
    got = loader.policy.to_input(Views.from_batch(x, t), "cpu")
    torch.testing.assert_close(got, (x.float() / 255 - 0.5) / 0.25)
    # the teacher recomputed by `verify` on the replayed views with the store's normalisation agrees with
    # what the teacher stage stored: both sides used the same mean/std
    p = run("verify", env["w"] / "norm.zarr", "--data", env["train"], "--teacher", env["ckpt"], "--samples", "16",
            "--json")
    r = json.loads(p.stdout)
    assert r["ok"] and r["teacher_mismatches"] == 0 and r["digests_equal"] == r["digests_checked"] == 16
    # and a student trains from that store, evaluated on held-out images normalised the same way
    p = run("train", "--store", env["w"] / "norm.zarr", "--data", env["train"], "--student", "cnn-micro",
            "--epochs", "1", "--eval-data", env["test"], "--out", env["w"] / "student", "--json")
    assert "eval_accuracy" in json.loads(p.stdout)["final"]


def test_default_mean_std_and_builtin_names_are_todays_policies():
    for name in POLICY_NAMES:
        assert parse_policy(name, (16, 16)).to_json() == make_policy(name, (16, 16)).to_json()
    crop = parse_policy("crop-flip", (16, 16), crop_scale=(0.25, 1.0))
    assert crop.to_json() == make_policy("crop-flip", (16, 16), crop_scale=(0.25, 1.0)).to_json()


@pytest.mark.parametrize("args, words", [
    (["--mean", "0.5,0.5"], ["--mean", "3 values"]),
    (["--std", "0.5,x,0.5"], ["--std", "'x'"]),
    (["--std", "0.5,0,0.5"], ["std > 0"]),
])
def test_bad_mean_std_is_one_error_line(env, args, words):
    assert_user_error(teach(env, "bad.zarr", *args, "--quiet", check=False), *words)
    assert not (env["w"] / "bad.zarr").exists()


# --------------------------------------------------------------------------- policies from ops


def test_crop_without_flip_op_list_stored_params_equal_replay(env):
    teach(env, "crop.zarr", "--policy", "rrc(scale=0.35,1)", "--store-params", "--quiet")
    store = labelstore.open(env["w"] / "crop.zarr")
    assert [o["type"] for o in store.attrs["policy"]["ops"]] == ["RandomResizedCrop"]
    assert store.attrs["policy"]["ops"][0]["config"]["scale"] == [0.35, 1.0]
    assert not any("flip" in name for name in store.arrays)  # no flip op, no flip parameter
    data = ImageFolder(env["train"])
    idx = np.arange(store.num_samples)
    for e in range(store.epochs):
        stored = store.read(e, idx)
        derived = store.derived_params(e, idx)
        np.testing.assert_array_equal(stored["rrc/box"], derived["rrc/box"])
        # no view is flipped: the replayed views equal the same crops under a flip that never fires
        never = Policy((RandomResizedCrop(scale=(0.35, 1.0)), HorizontalFlip(p=0.0)), (16, 16))
        views = replay_views(store, data, e, idx)
        rows = {**{k: stored[k] for k in ("rrc/box",)}, "flip/flag": np.zeros(len(idx), bool)}
        again = never.render_batch([data.load(int(i)) for i in idx], rows)
        assert torch.equal(views.x, again.x)
        assert (view_check(views.digests()) == stored["view_digest"]).all()
    r = json.loads(run("verify", env["w"] / "crop.zarr", "--data", env["train"], "--json").stdout)
    assert r["ok"] and r["digests_equal"] == r["digests_checked"]


def test_json_policy_file_equals_the_op_list(env):
    f = env["w"] / "policy.json"
    f.write_text(json.dumps([{"op": "rrc", "scale": [0.35, 1]}, {"op": "flip", "p": 0.25}]))
    teach(env, "json.zarr", "--policy", f, "--quiet")
    store = labelstore.open(env["w"] / "json.zarr")
    want = parse_policy("rrc(scale=0.35,1)+flip(p=0.25)", (16, 16)).to_json()
    assert {k: v for k, v in store.attrs["policy"].items() if k != "digest"} == want
    flags = np.concatenate([store.read(e, np.arange(store.num_samples))["flip/flag"] for e in range(store.epochs)])
    assert 0 < flags.mean() < 0.6  # p = 0.25 of 48 views


def test_op_list_parses_positional_keyword_and_user_ops(tmp_path):
    pol = parse_policy("rrc(0.5,1.0)+jitter(0.4,0.3,0.2)", (8, 8))
    assert pol.ops[0].scale == (0.5, 1.0) and (pol.ops[1].brightness, pol.ops[1].saturation) == (0.4, 0.2)
    pol = parse_policy("rrc(scale=0.5,1, ratio=1,1)+flip(p=1)", (8, 8))
    assert pol.ops[0].ratio == (1.0, 1.0) and pol.ops[1].p == 1.0
    # a registered user op is named by its `name` (tests/test_user_op.py's Posterize, renamed: op types
    # are registered once per process, and test_user_op registers its own in the same worker)
    from test_user_op import USER_OP

    (tmp_path / "my_ops_byot.py").write_text(USER_OP.replace("Posterize", "PosterizeByot")
                                             .replace('"posterize"', '"posterize_byot"'))
    sys.path.insert(0, str(tmp_path))
    try:
        import my_ops_byot
    finally:
        sys.path.remove(str(tmp_path))
    pol = parse_policy("rrc+posterize_byot(p=0.25)", (8, 8))
    assert isinstance(pol.ops[1], my_ops_byot.PosterizeByot) and pol.ops[1].p == 0.25
    sys.path.insert(0, str(tmp_path))
    try:  # module:name imports the module first
        assert parse_policy("rrc+my_ops_byot:posterize_byot(0.5)", (8, 8)).ops[1].p == 0.5
    finally:
        sys.path.remove(str(tmp_path))
    assert Policy.from_json(pol.to_json()) == pol


@pytest.mark.parametrize("spec, words", [
    ("rrc(scal=0.5,1)", ["--policy", "op rrc", "'scal'", "scale, ratio"]),
    ("rrc(scale=0.5)+flip", ["op rrc", "scale takes 2 values"]),
    ("rrc+flip(p=abc)", ["op flip", "p=abc is not a number"]),
    ("rrc+flip(p=2)", ["op flip", "p must be in [0, 1]"]),
    ("rrc+blur(3)", ["unknown op 'blur'", "rrc"]),
    ("flip(p=0.5)", ["exactly one geometry op"]),
    ("crop-flipp", ["crop-flip-jitter"]),
    ("missing.json", ["policy file", "does not exist"]),
])
def test_bad_policy_is_one_error_line_naming_op_and_argument(env, spec, words):
    assert_user_error(teach(env, "badpol.zarr", "--policy", spec, "--quiet", check=False), spec, *words)
    assert not (env["w"] / "badpol.zarr").exists()


def test_crop_scale_is_for_builtin_names(env):
    p = teach(env, "cs.zarr", "--policy", "rrc+flip", "--crop-scale", "0.5", "1", "--quiet", check=False)
    assert_user_error(p, "--crop-scale", "rrc(scale=")


# --------------------------------------------------------------------------- unlabelled stores


def test_unlabelled_store_with_every_data_command(env):
    w, photos = env["w"], env["photos"]
    teach(env, "photos.zarr", "--unlabeled", "--num-classes", "10", "--quiet", data=photos)
    store = labelstore.open(w / "photos.zarr")
    assert (store.read_array("gt") == -1).all()
    # the store says it is unlabelled: no command needs --unlabeled (which none but teach has)
    p = run("inspect", w / "photos.zarr")
    header = p.stdout.splitlines()[0].split()
    assert header[0] == "epoch" and "topk_mass" in header and "top1_agreement" not in header and "gt_prob" not in header
    assert "no labelled views" in p.stdout and "ECE 0" not in p.stdout, p.stdout  # no 0.0000 figures against labels
    p = run("inspect", w / "photos.zarr", "--report", w / "p.html", "--data", photos, "--quiet")
    html = (w / "p.html").read_text()
    assert "id='no-labels'" in html and "alt='confusion'" not in html
    assert "report written" in p.stdout and "alt='gallery_uncertain'" in html  # replayed views, picked without gt
    assert "gallery_hardest" not in html  # hardest / easiest need ground truth
    p = run("verify", w / "photos.zarr", "--data", photos)
    assert p.stdout.strip().endswith("OK")
    p = run("train", "--store", w / "photos.zarr", "--data", photos, "--student", "cnn-micro", "--epochs", "1",
            "--eval-data", env["test"], "--out", w / "from-photos", "--json")
    assert "eval_accuracy" in json.loads(p.stdout)["final"]
    # the Python spelling is the CLI's: unlabeled=True
    assert len(ImageFolder(photos, unlabeled=True)) == store.num_samples == len(open_data(store, photos))


def test_labelled_folder_as_unlabelled_hint(env):
    p = run("teach", "--data", env["photos"], "--teacher", env["ckpt"], "--out", env["w"] / "nohint.zarr", *SMALL,
            "--quiet", check=False)
    assert_user_error(p, "no class sub-folders", "teach --unlabeled")


# --------------------------------------------------------------------------- replay batches, progress


def test_replay_batches_carry_the_stored_view_digest(env):
    store = labelstore.open(env["w"] / "crop.zarr") if (env["w"] / "crop.zarr").exists() else None
    if store is None:
        teach(env, "crop.zarr", "--policy", "rrc(scale=0.35,1)", "--store-params", "--quiet")
        store = labelstore.open(env["w"] / "crop.zarr")
    loader = ReplayLoader(store, ImageFolder(env["train"]), epoch=1, batch_size=10, shuffle=True)
    n = 0
    for x, t in loader:
        assert t["view_digest"].dtype == torch.int32
        assert (view_check(Views.from_batch(x, t).digests()) == t["view_digest"].numpy()).all()
        n += len(x)
    assert n == store.num_samples


def test_progress_outside_a_terminal_is_log_lines(env):
    p = run("teach", "--data", env["train"], "--teacher", env["ckpt"], "--out", env["w"] / "log.zarr",
            "--epochs", "4", "--top-k", "3", "--image-size", "16", "--shard-samples", "8", "--chunk-samples", "8",
            "--batch-size", "2", "--workers", "1")
    assert "\r" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("teach-classification:")]
    assert 2 <= len(lines) <= 11, p.stderr  # one per 10 % of 96 views (and the last)
    assert lines[-1].startswith("teach-classification: 100% 96/96 view")


# --------------------------------------------------------------------------- packaging


def _blocked(module: str, *argv: str) -> subprocess.CompletedProcess:
    """The CLI in a process where `module` cannot be imported (as if its extra were not installed)."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{module!r}] = None
        sys.argv = ["labelstore", *{list(argv)!r}]
        from labelstore.cli import main
        main()
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True)


def test_missing_extra_is_one_error_line_naming_it(tmp_path):
    p = _blocked("s3fs", "info", "s3://bucket/labels.zarr")
    assert_user_error(p, "s3:// stores needs s3fs", "pip install 'labelstore[s3]'")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["av"] = None
        import numpy as np
        from labelstore.errors import ConfigError
        from labelstore.pipeline.builtin_video import write_video
        try:
            write_video({str(tmp_path / 'v.mp4')!r}, np.zeros((2, 16, 16, 3), np.uint8))
        except ConfigError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert "needs PyAV: pip install 'labelstore[video]'" in out.stdout, out.stderr
    # the image path never needs PyAV
    p = _blocked("av", "data", "shapes", "--out", str(tmp_path / "d"), "--train", "4", "--test", "0")
    assert p.returncode == 0, p.stderr


def test_package_is_typed():
    import importlib.resources

    assert importlib.resources.files("labelstore").joinpath("py.typed").is_file()
    assert 'labelstore = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()
