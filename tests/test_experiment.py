"""trainers/experiment.py: t quantiles, intervals, pairing by seed, resume, table and JSON output."""

from __future__ import annotations

import json
import math

import pytest

from labelstore.errors import ConfigError, DataError
from labelstore.trainers.experiment import (
    format_table,
    run_experiment,
    save_json,
    summarize,
    t_cdf,
    t_quantile,
)

# t_{0.975, df} from standard tables (e.g. NIST/SEMATECH e-Handbook, Table of t critical values)
T_TABLE = {1: 12.7062047, 2: 4.30265273, 4: 2.77644511, 9: 2.26215716, 29: 2.04522964}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_tables(df):
    assert t_quantile(0.975, df) == pytest.approx(T_TABLE[df], abs=1e-6)
    assert t_quantile(0.025, df) == pytest.approx(-T_TABLE[df], abs=1e-6)
    assert t_cdf(T_TABLE[df], df) == pytest.approx(0.975, abs=1e-8)


def test_t_cdf_df1_is_cauchy_and_df2_closed_form():
    # df = 1: F(t) = 1/2 + atan(t)/pi ; df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-3.0, -0.4, 0.0, 0.7, 5.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_summarize_hand_computed():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, s = sqrt(10 / 4), half-width = t_{.975,4} * s / sqrt(5)
    half = 2.77644511 * math.sqrt(2.5) / math.sqrt(5)
    assert s["n"] == 5 and s["mean"] == pytest.approx(3.0)
    assert s["std"] == pytest.approx(math.sqrt(2.5))
    assert s["ci95"] == pytest.approx([3.0 - half, 3.0 + half], abs=1e-6)
    one = summarize([7.0])
    assert one["std"] is None and one["ci95"] is None


def _arm(table: dict[int, float], calls: list | None = None):
    def run(seed: int) -> dict:
        if calls is not None:
            calls.append(seed)
        return {"acc": table[seed], "loss": -table[seed]}

    return run


def test_paired_differences_use_same_seeds():
    seeds = [3, 11, 5]
    ref = {3: 50.0, 11: 60.0, 5: 55.0}
    # arm = ref + 1 on every seed, plus a large per-seed effect shared with ref -> paired std is 0
    arm = {3: 51.0, 11: 61.0, 5: 56.0}
    # a shuffled arm: same multiset as `arm`, but assigned to other seeds -> paired diffs differ
    shuffled = {3: 61.0, 11: 56.0, 5: 51.0}
    r = run_experiment({"ref": _arm(ref), "plus1": _arm(arm), "shuf": _arm(shuffled)}, seeds, "acc", "ref")
    p = r["paired"]["plus1"]
    assert p["values"] == [1.0, 1.0, 1.0] and p["std"] == 0.0 and p["ci95"] == [1.0, 1.0]
    assert r["paired"]["shuf"]["values"] == [61 - 50, 56 - 60, 51 - 55]
    # the unpaired per-arm intervals of plus1 and shuf are identical (same values), only pairing differs
    assert r["arms"]["plus1"]["ci95"] == pytest.approx(r["arms"]["shuf"]["ci95"])
    assert "ref" not in r["paired"]
    # paired interval (hand): diffs 11, -4, -4: mean 1, s = sqrt(150/2), half = t_{.975,2} s / sqrt 3
    half = 4.30265273 * math.sqrt(75.0) / math.sqrt(3.0)
    assert r["paired"]["shuf"]["ci95"] == pytest.approx([1 - half, 1 + half], abs=1e-5)


def test_resume_does_not_rerun_finished_pairs(tmp_path):
    seeds = [0, 1, 2, 3]
    a_vals = {s: 10.0 + s for s in seeds}
    b_vals = {s: 12.0 + s * s for s in seeds}
    calls_a, calls_b = [], []

    class Interrupt(Exception):
        pass

    def b_interrupted(seed):
        if seed == 2:
            raise Interrupt
        return _arm(b_vals, calls_b)(seed)

    with pytest.raises(Interrupt):
        run_experiment({"a": _arm(a_vals, calls_a), "b": b_interrupted}, seeds, "acc", "a", out_dir=tmp_path)
    assert calls_a == [0, 1, 2] and calls_b == [0, 1]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["seed_0.json", "seed_1.json", "seed_2.json"]

    calls_a2, calls_b2 = [], []
    r = run_experiment({"a": _arm(a_vals, calls_a2), "b": _arm(b_vals, calls_b2)}, seeds, "acc", "a",
                       out_dir=tmp_path)
    assert calls_a2 == [3] and calls_b2 == [2, 3]  # only the unfinished pairs ran
    assert r["arms"]["b"]["values"] == [b_vals[s] for s in seeds]
    # a third run loads everything
    calls_a3 = []
    run_experiment({"a": _arm(a_vals, calls_a3), "b": _arm(b_vals)}, seeds, "acc", "a", out_dir=tmp_path)
    assert calls_a3 == []


def test_damaged_saved_run_is_named(tmp_path):
    (tmp_path / "a").mkdir()
    bad = tmp_path / "a" / "seed_0.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="seed_0.json"):
        run_experiment({"a": _arm({0: 1.0})}, [0], "acc", "a", out_dir=tmp_path)


def test_refuses_bad_configuration():
    with pytest.raises(ConfigError, match="reference"):
        run_experiment({"a": _arm({0: 1.0})}, [0], "acc", "b")
    with pytest.raises(ConfigError, match="distinct"):
        run_experiment({"a": _arm({0: 1.0})}, [0, 0], "acc", "a")
    with pytest.raises(ConfigError, match="arm name"):
        run_experiment({"../x": _arm({0: 1.0})}, [0], "acc", "../x")
    with pytest.raises(DataError, match="no metric 'r1'"):
        run_experiment({"a": _arm({0: 1.0})}, [0], "r1", "a")


def test_table_and_json(tmp_path):
    seeds = [0, 1, 2]
    r = run_experiment({"none": _arm({0: 40.0, 1: 42.0, 2: 41.0}), "kd": _arm({0: 45.0, 1: 44.0, 2: 47.0})},
                       seeds, "acc", "none")
    inv = "labelstore experiment --task classification --arms none,kd --seeds 3"
    table = format_table(r, inv)
    lines = table.splitlines()
    assert lines[0] == f"$ {inv}"
    kd_line = next(line for line in lines if line.startswith("kd "))
    assert "45.333" in kd_line and "+4.333" in kd_line
    assert "(reference)" in next(line for line in lines if line.startswith("none "))
    path = tmp_path / "r.json"
    save_json(r, path, inv)
    loaded = json.loads(path.read_text())
    assert loaded["invocation"] == inv and loaded["paired"]["kd"]["values"] == pytest.approx([5.0, 2.0, 6.0])


def test_saved_runs_hold_numpy_values_and_paths(tmp_path):
    import numpy as np

    def arm(seed):
        return {"acc": np.float64(0.5 + seed), "curve": np.arange(3), "store": tmp_path / "s.zarr"}

    first = run_experiment({"a": arm}, [0, 1], "acc", "a", out_dir=tmp_path / "runs")
    saved = json.loads((tmp_path / "runs" / "a" / "seed_1.json").read_text())
    assert saved["metrics"] == {"acc": 1.5, "curve": [0, 1, 2], "store": str(tmp_path / "s.zarr")}
    resumed = run_experiment({"a": lambda s: pytest.fail("rerun")}, [0, 1], "acc", "a", out_dir=tmp_path / "runs")
    assert resumed["arms"]["a"]["values"] == first["arms"]["a"]["values"] == [0.5, 1.5]


def test_cli_experiment_end_to_end_and_resume(tmp_path):
    """The real command on a tiny recipe: a table, result.json, and a rerun that loads every run."""
    import subprocess
    import sys

    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "labelstore", "experiment", "classification", "--seeds", "2", "--arms", "none,cache",
           "--out", str(out), "--recipe", '{"n_train": 120, "n_test": 40, "teacher_epochs": 1, "epochs": 1}']
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0].startswith("$ labelstore experiment classification --seeds 2")
    assert "teacher (cnn-tiny) test accuracy" in first.stdout
    saved = json.loads((out / "result.json").read_text())
    assert set(saved["arms"]) == {"none", "cache"} and saved["arms"]["cache"]["n"] == 2
    assert sorted(p.name for p in (out / "cache").iterdir()) == ["seed_0.json", "seed_1.json"]
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr.count("loaded") == 4 and "running" not in again.stderr
    assert json.loads((out / "result.json").read_text())["arms"] == saved["arms"]
    bad = subprocess.run([sys.executable, "-m", "labelstore", "experiment", "classification", "--out", str(out),
                          "--arms", "none,bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "bogus" in bad.stderr and bad.stderr.startswith("error:")
