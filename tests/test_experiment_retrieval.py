"""`labelstore experiment retrieval`: the real command end to end, determinism, and agreement with the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from labelstore.errors import ConfigError
from labelstore.trainers import experiment_retrieval as er

torch.set_num_threads(1)
TINY = {"n_train": 24, "n_test": 8, "teacher_epochs": 1, "student_epochs": 1, "teacher_dim": 32, "student_dim": 32,
        "batch_size": 8}


def test_cli_experiment_retrieval_end_to_end_and_resume(tmp_path):
    """The real command on a tiny recipe: a table, the teacher's line, result.json, setup.json, and a rerun
    that loads every run; an unknown arm or recipe key is one `error:` line."""
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "labelstore", "experiment", "retrieval", "--seeds", "2", "--arms", "infonce,teachclip",
           "--out", str(out), "--recipe", json.dumps(TINY)]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith("$ labelstore experiment retrieval --seeds 2")
    assert "metric: t2v_R@5" in lines[1] and "reference: infonce" in lines[1]
    assert [ln.split()[0] for ln in lines[3:5]] == ["infonce", "teachclip"]
    assert lines[-1].startswith("teacher (X-CLIP-like, dim 32) test t2v R@1") and "24 test captions x 8 videos" in lines[-1]
    saved = json.loads((out / "result.json").read_text())
    assert set(saved["arms"]) == {"infonce", "teachclip"} and saved["arms"]["teachclip"]["n"] == 2
    setup = json.loads((out / "setup.json").read_text())
    assert saved["setup"] == setup
    assert {k: setup["recipe"][k] for k in TINY} == TINY
    assert 0.0 <= setup["teacher_metrics"]["t2v_R@1"] <= 100.0
    run = json.loads((out / "teachclip" / "seed_1.json").read_text())
    assert run["metrics"]["t2v_R@5"] == saved["arms"]["teachclip"]["values"][1] and "v2t_R@1" in run["metrics"]
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr.count("loaded") == 4 and "running" not in again.stderr
    assert json.loads((out / "result.json").read_text())["arms"] == saved["arms"]
    bad = subprocess.run([sys.executable, "-m", "labelstore", "experiment", "retrieval", "--out", str(out),
                          "--arms", "infonce,bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "bogus" in bad.stderr and bad.stderr.startswith("error:")
    bad = subprocess.run([sys.executable, "-m", "labelstore", "experiment", "retrieval", "--out", str(tmp_path / "b"),
                          "--recipe", '{"n_trian": 10}'], capture_output=True, text=True)
    assert bad.returncode == 2 and "n_trian" in bad.stderr and bad.stderr.startswith("error:")


def _fresh(code: str):
    """The JSON a Python snippet prints last, run in a fresh process: `labelstore demo` and `labelstore
    experiment` are processes of their own. (Within one process, a cache-mode TeachCLIP student run
    changes later training runs.)"""
    p = subprocess.run([sys.executable, "-c", "import json, torch\ntorch.set_num_threads(1)\n" + code],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def _demo_rows(out, seed: int) -> list[dict]:
    """The retrieval demo's rows (teacher, TeachCLIP store, TeachCLIP online, InfoNCE)."""
    return _fresh("from labelstore.trainers.retrieval_demo import run_retrieval_demo\n"
                  f"d = run_retrieval_demo({str(out)!r}, seed={seed}, progress=False, **{TINY!r})\n"
                  "print(json.dumps([{'name': r['name'], 'metrics': r['metrics']} for r in d['rows']]))\n")


def _arm_runs(out, runs: list[tuple[str, int]]) -> dict:
    """The experiment's setup under `out` and the test metrics of each (arm, seed) in `runs`, in order."""
    return _fresh("from labelstore.trainers import experiment_retrieval as er\n"
                  f"meta = er.setup({str(out)!r}, echo=lambda m: None, **{TINY!r})\n"
                  "arms = er.make_arms(meta, list(er.ARMS))\n"
                  f"out = [{{k: v for k, v in arms[a](s).items() if k != 'seconds'}} for a, s in {runs!r}]\n"
                  "print(json.dumps({'teacher': meta['teacher_metrics'], 'runs': out}))\n")


def test_arms_are_deterministic_and_bogus_arms_refused(tmp_path):
    """Seed s gives the same run twice in one process (one machine)."""
    meta = er.setup(str(tmp_path / "exp"), echo=lambda m: None, **TINY)
    arms = er.make_arms(meta, ["cgt"])
    first, again = arms["cgt"](0), arms["cgt"](0)
    first.pop("seconds"), again.pop("seconds")
    assert again == first
    with pytest.raises(ConfigError, match="bogus"):
        er.make_arms(meta, ["bogus"])


def test_the_demo_trains_the_experiments_students(tmp_path):
    """The demo at seed s trains exactly the experiment's teachclip / teachclip-online / infonce students of
    seed s (same teacher, same metrics), for s = 0 and 1, each command in a process of its own."""
    names = list(er.ARMS)
    got = _arm_runs(tmp_path / "exp", [(n, 0) for n in names] + [("infonce", 1)])
    runs = dict(zip(names, got["runs"]))
    teacher, *students = _demo_rows(tmp_path / "demo", 0)
    assert teacher["metrics"] == got["teacher"]
    assert [s["metrics"] for s in students] == [runs["teachclip"], runs["teachclip-online"], runs["infonce"]]
    assert _demo_rows(tmp_path / "demo", 1)[3]["metrics"] == got["runs"][-1]
