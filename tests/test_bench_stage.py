"""`bench_stage_cores` (labelstore bench line 1b) at a tiny size: its runs and how its ratios are made (no timings)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from labelstore.trainers.bench import bench_stage_cores, stage_cores_line, stage_photos, write_jpegs


def test_stage_photos_repeats_the_files(tmp_path):
    root = write_jpegs(str(tmp_path / "photos"), 3, size=(24, 32), classes=2)
    out = stage_photos(root, str(tmp_path / "more"), 7)
    files = sorted(os.path.join(c, f) for c in os.listdir(out) for f in os.listdir(os.path.join(out, c)))
    assert len(files) == 7 and {f.split(os.sep)[0] for f in files} == {"c0", "c1"}
    with open(os.path.join(root, "c0", "00000.jpg"), "rb") as a, open(os.path.join(out, "c0", "2_00000.jpg"), "rb") as b:
        assert a.read() == b.read()


@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2, reason="needs taskset, 2 cores")
def test_bench_stage_cores_tiny(tmp_path):
    root = write_jpegs(str(tmp_path / "photos"), 4, size=(48, 64))
    r = bench_stage_cores(root, size=32, epochs=2, images=12, shard_rows=4, rounds=3)
    views = 4 * 2  # the third unit's images x epochs: the first two units are each child's warm-up
    assert r["views"] == {"one": views, "two": views, "peers": [views, views]}
    v = r["views_per_s"]
    rounds = r["per_round"]
    assert len(rounds) == r["rounds"] == 3  # each figure: the median of its rounds
    assert v["one"] == np.median([x["one"] for x in rounds]) and v["two"] == np.median([x["two"] for x in rounds])
    assert v["peers"] == [np.median([x["peers"][i] for x in rounds]) for i in (0, 1)]
    assert r["two_over_one"] == v["two"] / v["one"] and r["ceiling"] == sum(v["peers"]) / v["one"]
    assert r["two_over_ceiling"] == v["two"] / sum(v["peers"])
    assert all(c > 0 for c in [r["cpu_s_per_view"]["one"], r["cpu_s_per_view"]["two"], *r["cpu_s_per_view"]["peers"]])
    assert (r["images"], r["shard_rows"], r["epochs"]) == (12, 4, 2)
    line = stage_cores_line(r)
    assert line.startswith("1b. ") and f"{r['ceiling']:.2f} x one" in line and f"{r['two_over_ceiling']:.2f}" in line
    assert stage_cores_line({"skipped": "needs taskset and 2 cores"}).endswith("skipped (needs taskset and 2 cores)")
