"""`labelstore bench --scale` at a tiny size: the figures' structure and their consistency (no timings)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_scale_tiny(tmp_path):
    n, epochs = 5000, 2
    store = tmp_path / "scale.zarr"
    p = subprocess.run([sys.executable, "-m", "labelstore", "bench", "--scale", "--samples", str(n), "--epochs",
                        str(epochs), "--workers", "0,2", "--store", str(store), "--json"],
                       capture_output=True, text=True, check=True)
    r = json.loads(p.stdout)
    assert "figure" in p.stderr and "records/s" in p.stderr  # the table goes to stderr with --json
    assert (r["num_samples"], r["epochs"]) == (n, epochs)
    assert r["write"]["complete"] and r["write"]["views"] == n * epochs
    rd = r["read"]
    assert rd["same_records"] and rd["keys"] == rd["first_keys"]
    assert r["aug_params"] == "derived" and r["view_check_dtype"] == "uint16"  # format 3
    assert rd["derive_epoch"]["equal"]  # the cache's derived parameters are replay.derived_params
    assert {"topk_values", "topk_indices", "gt_prob", "rrc/box", "flip/flag", "gt", "index"} <= set(rd["keys"])
    assert rd["new_records_per_s"] > 0 and rd["old_records_per_s"] > 0
    assert r["quasi_random"]["shard_reads_per_shard"] == 1.0 and r["quasi_random"]["records"] == n
    assert [d["workers"] for d in r["dataset"]] == [0, 2]
    for d in r["dataset"]:  # every pass saw every row once
        assert d["records"] == n and d["index_sum"] == n * (n - 1) // 2
        assert d["worker_pids"] == d["workers"]
    assert r["dataset"][1]["worker_uss_max"] > 0 and r["dataset"][1]["worker_cache_rss_max"] > 0
    assert r["epoch_cache_bytes"] >= n * (2 * 5 + 2 * 5 + 2 + 8 + 1)  # top-5 values + ids, gt_prob, box, flip
    per = r["bytes_per_view"]  # every array of the store, none for the derived parameters
    assert {"topk_values", "topk_indices", "gt_prob", "view_digest", "sample_id", "source_hw"} <= set(per)
    assert not any(name.startswith("aug/") for name in per)
    assert [t["name"] for t in r["bytes_per_view_table"]] == list(per)
    assert abs(sum(per.values()) - r["bytes_per_view_all_in"]) < 1e-9 and r["bytes_per_view_all_in"] == r["info"]["bytes_per_view"]
    assert {"topk_values", "topk_indices", "view_digest"} <= set(r["to_xarray_vars"])  # (derived parameters: not stored)
    assert {"topk_values", "view_digest", "source_hw"} <= set(r["open_datatree_vars"])  # every array
    assert r["inspect"]["views"] == n * epochs and len(r["inspect"]["topk_mass"]) == epochs
