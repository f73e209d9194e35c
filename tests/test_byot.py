"""Bring your own teacher, through real `labelstore` subprocesses: the README's walkthrough as written.

The README's "Bring your own teacher" block runs in bash in a fresh folder holding a copy of
examples/byot/ (a teacher module and its plain-PyTorch training script, nothing of labelstore):
built-in images, the teacher trained on them with its own mean/std, its state_dict at an absolute
.pt path handed over as --teacher-weights and as the callable's own ?weights= argument, views
labelled under that mean/std and a crop-without-flip op list given on the command line, and a
student trained from the store and scored on held-out images; a folder of unlabelled images
labelled, inspected and verified. Then what the user sees (agreement lines, warnings, errors) and
what the store records.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_same_arrays
from test_cli import ROOT, _env, assert_user_error

import labelstore
from labelstore.pipeline.classification_inspect import teacher_agreement
from labelstore.pipeline.replay import derived_params

README = ROOT / "README.md"
AGREEMENT = re.compile(r"teacher top-1 agreement with the labels: ([\d.]+)% of (\d+) views \(chance ([\d.]+)%\)"
                       r"(?:; by flip/flag: true ([\d.]+)% of (\d+), false ([\d.]+)% of (\d+))?$", re.M)


def readme_block() -> str:
    section = README.read_text().split("## Bring your own teacher", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> dict:
    """The README block, run once as written (bash -e) in a fresh folder."""
    w = tmp_path_factory.mktemp("byot")
    shutil.copytree(ROOT / "examples" / "byot", w / "examples" / "byot")
    env = _env()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]  # `labelstore` and `python` of this venv
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block()], cwd=w, env=env, capture_output=True,
                       text=True)
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr}"
    env["PYTHONPATH"] = str(w / "examples" / "byot") + os.pathsep + env["PYTHONPATH"]
    return {"w": w, "out": p.stdout, "err": p.stderr, "env": env, "net": w / "byot" / "net.pt"}


def cli(walk, *args, check: bool = True) -> subprocess.CompletedProcess:
    """`labelstore ARGS` in the walkthrough's folder, with `mymod` importable."""
    p = subprocess.run([str(Path(sys.executable).with_name("labelstore")), *map(str, args)], cwd=walk["w"],
                       env=walk["env"], capture_output=True, text=True)
    if check:
        assert p.returncode == 0, f"{args}: rc={p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def test_readme_walkthrough_teacher_weights_two_ways(walk):
    w = walk["w"]
    lines = AGREEMENT.findall(walk["out"])
    assert len(lines) == 2 and lines[0] == lines[1], walk["out"]  # the two ways give one teacher
    assert lines[0][3:] == ("",) * 4, walk["out"]  # no flip op: no split by flipped or not
    top1, views, chance = (float(v) for v in lines[0][:3])
    assert views == 600 * 4 and chance == 10.0
    assert top1 > 3 * chance, walk["out"]  # a trained teacher, far from chance
    assert "near chance" not in walk["err"], walk["err"]
    a, b = labelstore.open(w / "byot" / "labels.zarr"), labelstore.open(w / "byot" / "labels-self.zarr")
    assert_same_arrays(w / "byot" / "labels.zarr", w / "byot" / "labels-self.zarr")
    # the teacher's own normalisation and a crop-without-flip op list, as given on the command line
    for s in (a, b):
        pol = s.attrs["policy"]
        assert pol["mean"] == [0.5, 0.5, 0.5] and pol["std"] == [0.25, 0.25, 0.25], pol
        assert [op["config"]["name"] for op in pol["ops"]] == ["rrc"] and pol["ops"][0]["config"]["scale"] == [0.5, 1.0]
    # no view is flipped: every epoch's views have a crop box and no flip parameter
    assert all(set(derived_params(a, e)) == {"rrc/box"} for e in range(a.epochs))
    assert teacher_agreement(a)["by_param"] == {}
    # the store records the weights' sha256: the state_dict file's, loaded into mymod.Net
    sys.path.insert(0, str(w / "examples" / "byot"))
    try:
        import mymod

        from labelstore.pipeline.teacher import weights_hash

        digest = weights_hash(mymod.Net(num_classes=10, weights=str(walk["net"])))
    finally:
        sys.path.remove(str(w / "examples" / "byot"))
        sys.modules.pop("mymod", None)
    assert a.attrs["teacher"]["weights_sha256"] == b.attrs["teacher"]["weights_sha256"] == digest
    assert a.attrs["teacher"]["weights_file"] == str(walk["net"]) and a.attrs["teacher"]["name"] == "mymod:Net"
    assert b.attrs["teacher"]["name"] == f"mymod:Net?weights={walk['net']}" and "weights_file" not in b.attrs["teacher"]
    stored = teacher_agreement(a)
    assert round(100 * stored["top1"], 1) == top1 and stored["views"] == views
    # train prints the store's teacher beside the student
    m = re.search(r"eval accuracy ([\d.]+) \(the store's teacher: top-1 ([\d.]+) on its (\d+) labelled views\)",
                  walk["out"])
    assert m and round(100 * float(m.group(2)), 1) == top1 and int(m.group(3)) == views, walk["out"]
    metrics = json.loads((w / "byot" / "student" / "metrics.json").read_text())
    assert metrics["final"]["eval_accuracy"] == pytest.approx(float(m.group(1)), abs=1e-4)
    # the student learns: at least twice chance on held-out images (byot/test: 200 images, none of them
    # among the store's 600 views' images)
    assert len(metrics["history"]) == 20 and float(m.group(1)) >= 2 * chance / 100, walk["out"]
    # outside a terminal train's progress is one log line per epoch, as teach's is one per 10 %
    epochs = [ln for ln in walk["err"].splitlines() if ln.startswith("cache epoch ")]
    assert "\r" not in walk["err"] and len(epochs) == 20 and epochs[-1].startswith("cache epoch 20/20: 100% 19/19 batch")

    def image_digests(folder: Path) -> set[str]:
        return {hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.rglob("*") if f.is_file()}

    held_out, seen = image_digests(w / "byot" / "test"), image_digests(w / "byot" / "train")
    assert len(held_out) == 200 and len(seen) == a.num_samples == 600 and not held_out & seen


def test_readme_walkthrough_unlabelled_folder(walk):
    w = walk["w"]
    store = labelstore.open(w / "byot" / "photos.zarr")
    assert store.num_samples == len(list((w / "byot" / "photos").iterdir())) == 100
    assert (store.read_array("gt") == -1).all() and store.attrs["policy"]["mean"] == [0.5, 0.5, 0.5]
    assert "report written to byot/photos.html" in walk["out"] and (w / "byot" / "photos.html").stat().st_size
    verify = walk["out"].rsplit("dataset fingerprint: ok", 1)[1]  # the last command's lines
    assert "replayed views: 64/64 pixel-identical" in verify and verify.strip().endswith("OK"), walk["out"]


def test_random_weights_callable_is_not_accepted_silently(walk):
    p = cli(walk, "teach", "--data", "byot/train", "--teacher", "mymod:Net", "--epochs", "1", "--out", "rnd.zarr",
            "--quiet")
    warn = [ln for ln in p.stderr.splitlines() if ln.startswith("warning: --teacher mymod:Net: top-1 agreement")]
    assert len(warn) == 1 and "near chance" in warn[0] and "--teacher-weights" in warn[0], p.stderr
    assert AGREEMENT.search(p.stdout)


def test_verify_and_train_take_weights_files(walk):
    net = walk["net"]
    p = cli(walk, "verify", "byot/labels.zarr", "--data", "byot/train", "--teacher", "mymod:Net", "--teacher-weights",
            net, "--samples", "16")
    assert "on 16 views: 0 disagree" in p.stdout and p.stdout.strip().endswith("OK"), p.stdout
    # a built-in name with --teacher-weights is a trained teacher: no --allow-untrained-teacher needed
    p = cli(walk, "verify", "byot/labels.zarr", "--data", "byot/train", "--teacher", "cnn-tiny", "--teacher-weights",
            net, check=False)
    assert_user_error(p, "--teacher-weights", "does not fit the model of 'cnn-tiny'", "missing keys", "unexpected keys")
    # the student starts from a state_dict file; the online teacher is built with one
    p = cli(walk, "train", "--store", "byot/labels.zarr", "--data", "byot/train", "--student", "mymod:Net",
            "--student-weights", net, "--mode", "online", "--online-teacher", "mymod:Net", "--online-teacher-weights",
            net, "--epochs", "1", "--out", "byot/online", "--json")
    assert json.loads(p.stdout)["config"]["mode"] == "online"


def test_weights_errors_are_one_line(walk):
    teach = ["teach", "--data", "byot/train", "--epochs", "1", "--out", "never.zarr", "--quiet"]
    (walk["w"] / "junk.pt").write_bytes(b"junk")
    for args, words in (
        (["--teacher", "mymod:Net", "--teacher-weights", "nowhere.pt"], ["--teacher-weights", "nowhere.pt", "not found"]),
        (["--teacher", "mymod:Net", "--teacher-weights", "junk.pt"], ["--teacher-weights", "junk.pt", "torch.load"]),
        (["--teacher", f"mymod:Net?weights={walk['w']}/nowhere.pt"], ["mymod:Net?weights=", "nowhere.pt"]),
        (["--teacher", "mymod:Net", "--teacher-weights", walk["net"], "--task", "retrieval", "--captions", "c.jsonl"],
         ["--teacher-weights is for --task classification"]),
    ):
        assert_user_error(cli(walk, *teach, *args, check=False), *words)
    assert not (walk["w"] / "never.zarr").exists()
    p = cli(walk, "train", "--store", "byot/labels.zarr", "--data", "byot/train", "--online-teacher-weights",
            walk["net"], "--out", "byot/x", check=False)
    assert_user_error(p, "--online-teacher-weights goes with --mode online")


def test_hf_teacher_from_a_save_pretrained_folder(walk):
    from test_spec_args import save_tiny_hf

    save_tiny_hf(walk["w"] / "hf-tiny", num_labels=10)
    p = cli(walk, "teach", "--data", "byot/train", "--teacher", f"hf:{walk['w'] / 'hf-tiny'}", "--epochs", "1",
            "--image-size", "24", "--out", "hf.zarr", "--quiet")
    assert AGREEMENT.search(p.stdout) and "[transformers]" not in p.stderr, p.stderr
    store = labelstore.open(walk["w"] / "hf.zarr")
    pre = store.attrs["teacher"]["preprocessing"]
    assert pre["mean"] == [0.5, 0.4, 0.3] and pre["std"] == [0.2, 0.25, 0.3] and pre["input_size"] == [24, 24]
    assert pre["resample"] == "bicubic"
    # the views are normalised as the model's image processor says (pipeline/augment.py to_input)
    assert store.attrs["policy"]["mean"] == pre["mean"] and store.attrs["policy"]["std"] == pre["std"]
    p = cli(walk, "teach", "--data", "byot/train", "--teacher", f"hf:{walk['w'] / 'hf-tiny'}", "--epochs", "1",
            "--out", "hf32.zarr", "--quiet")
    assert "takes 24x24 inputs (its preprocessing config), but the views are 32x32" in p.stderr
    assert_user_error(cli(walk, "teach", "--data", "byot/train", "--teacher", "timm:resnet18", "--epochs", "1",
                          "--out", "never.zarr", check=False), "'timm:resnet18'", "needs the timm package")
