"""pipeline/records.py (teacher buffers, top-k records, MC seeds), the teach configs' checks, writer.create's
per-array shard rows, and tests/compare_stores.py (stores equal array by array and attribute by attribute)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import teach_store
from labelstore import schema, writer
from labelstore.errors import ConfigError
from labelstore.pipeline import classification_store, records, retrieval_store, rng
from labelstore.pipeline.teach import TeachConfig
from labelstore.pipeline.teach_retrieval import RetrievalTeachConfig
from labelstore.pipeline.teach_videoqa import VideoQATeachConfig, mc_seed
from labelstore.pipeline.teacher import _pass_seed

ROOT = Path(__file__).resolve().parents[1]


def _compare_stores():
    spec = importlib.util.spec_from_file_location("compare_stores", ROOT / "tests" / "compare_stores.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.compare


# ----------------------------------------------------------------------------- MC seeds
def _inputs(n: int = 2000):
    """(seed, epoch, first row) over the range the stages accept: seeds [0, 2**63), epochs and rows large."""
    g = np.random.default_rng(0)
    seeds = [0, 1, 2**63 - 1, *g.integers(0, 2**63 - 1, n, dtype=np.int64).tolist()]
    return [(s, int(g.integers(0, 10**6)), int(g.integers(0, 10**9))) for s in seeds]


def test_mc_seed_is_the_formula_both_stages_wrote():
    """records.mc_seed at 64 bits is the classification stage's former inline formula, at 63 bits (teach_videoqa.mc_seed)
    the VideoQA stage's former masked one: stores written before and after get the same MC masks."""
    for seed, epoch, row in _inputs():
        full = int(rng.mix64(np.uint64(seed) ^ rng.mix64(np.uint64(epoch * 1_000_003 + int(row)))))
        assert records.mc_seed(seed, epoch, row) == full
        assert mc_seed(seed, epoch, row) == records.mc_seed(seed, epoch, row, 63) == full & 0x7FFF_FFFF_FFFF_FFFF


def test_mc_seed_width_changes_the_masks():
    """The two widths are not interchangeable: where bit 63 of the mix is set, the pass seeds (torch's
    generator seeds) differ, so each task keeps the width its stores were written with."""
    top = [(s, e, r) for s, e, r in _inputs(200) if records.mc_seed(s, e, r) >> 63]
    assert top  # about half of all batches
    for s, e, r in top:
        assert _pass_seed(records.mc_seed(s, e, r, 64), 0) != _pass_seed(records.mc_seed(s, e, r, 63), 0)


# ----------------------------------------------------------------------------- records of a batch / a unit
def test_topk_records_by_hand():
    g = torch.Generator().manual_seed(0)
    logits, mc = torch.randn(6, 10, generator=g), torch.randn(6, 3, 10, generator=g)
    gt = torch.tensor([0, 3, -1, 9, 2, -1])
    out = records.topk_records(logits, gt, 4, mc)
    p = np.exp(logits.double().numpy())
    p /= p.sum(1, keepdims=True)
    order = np.argsort(-p, 1)[:, :4]
    np.testing.assert_array_equal(out["topk_indices"].numpy(), order)
    np.testing.assert_allclose(out["topk_values"].numpy(), np.take_along_axis(p, order, 1), rtol=1e-6)
    want_gt = np.where(gt.numpy() >= 0, p[np.arange(6), gt.clamp(min=0).numpy()], np.nan)
    np.testing.assert_allclose(out["gt_prob"].numpy(), want_gt, rtol=1e-6)
    q = np.exp(mc.double().numpy())
    q /= q.sum(2, keepdims=True)
    np.testing.assert_allclose(out["mc_values"].numpy(), np.take_along_axis(q, order[:, None, :].repeat(3, 1), 2), rtol=1e-6)
    assert "mc_values" not in records.topk_records(logits, gt, 4, mc[:, :0])  # T = 0
    assert "mc_values" not in records.topk_records(logits, gt, 4, None)


def test_unit_records_buffers_follow_the_specs():
    specs = classification_store.classification_arrays(num_samples=40, epochs=2, num_classes=300, top_k=3, mc_passes=2, aug_spec={},
                                         digests=True)
    buf = records.UnitRecords(specs)
    assert not buf
    buf.open(5)
    got = {name: (a.shape, a.dtype.name) for name, a in buf.buffers.items()}
    assert got == {"topk_values": ((5, 3), "float16"), "topk_indices": ((5, 3), "uint16"), "gt_prob": ((5,), "float16"),
                   "mc_values": ((5, 2, 3), "float16"), "view_digest": ((5,), "uint16")}
    sel = np.array([1, 3])
    buf.put(sel, {"topk_values": torch.ones(2, 3), "topk_indices": torch.full((2, 3), 299), "gt_prob": torch.zeros(2),
                  "mc_values": np.full((2, 2, 3), 0.5, np.float32), "view_digest": np.array([7, 8])})
    buf.open(5)  # already open: keeps what was put
    writes = buf.writes(16, 1)
    assert not buf and [w[0] for w in writes] == list(got) and {(w[1], w[3]) for w in writes} == {(16, 1)}
    out = {w[0]: w[2] for w in writes}
    assert np.isnan(out["gt_prob"][[0, 2, 4]]).all() and (out["gt_prob"][sel] == 0).all()  # rows no batch filled: NaN
    assert (out["topk_indices"][sel] == 299).all() and (out["topk_values"][[0, 2, 4]] == 0).all()
    assert out["view_digest"].tolist() == [0, 7, 0, 8, 0]


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("make, match", [
    (lambda: TeachConfig(epochs=0), r"epochs \(--epochs\)"),
    (lambda: TeachConfig(seed=2**63), r"seed \(--seed\)"),
    (lambda: TeachConfig(shard_rows=12, chunk_rows=8), r"--shard-samples.*--chunk-samples"),
    (lambda: VideoQATeachConfig(epochs=0), r"epochs \(--epochs\)"),
    (lambda: VideoQATeachConfig(epochs=1, top_k=0), r"top_k \(--top-k\)"),
    (lambda: VideoQATeachConfig(epochs=1, mc_passes=-1), r"mc_passes \(--mc-passes\)"),
    (lambda: VideoQATeachConfig(epochs=1, shard_rows=12, chunk_rows=8), "multiple of chunk_rows"),
    (lambda: VideoQATeachConfig(epochs=1, frame_size=(32,)), r"frame_size \(--frame-size\)"),
    (lambda: RetrievalTeachConfig(epochs=1, mode="sparse"), r"mode \(--similarity-mode\)"),
    (lambda: RetrievalTeachConfig(epochs=1, frame_temperature=0.0), "frame_temperature"),
    (lambda: RetrievalTeachConfig(epochs=1, batch_size=0), r"batch_size \(--batch-size\)"),
])
def test_teach_configs_name_the_bad_option(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_videoqa_config_defaults():
    assert VideoQATeachConfig(epochs=1).chunk_rows == 2048 and VideoQATeachConfig(epochs=1, shard_rows=16).chunk_rows == 16
    assert VideoQATeachConfig(epochs=1, frame_size=[8, 8]).frame_size == (8, 8)


# ----------------------------------------------------------------------------- writer.create: per-array shard rows
def test_per_array_shard_rows_put_each_retrieval_array_in_one_shard(tmp_path):
    """The rule teach_retrieval used to apply itself: inner chunks of min(chunk_rows, rows) rows, one shard =
    all rows (of one epoch), rounded up to whole chunks; and one partition."""
    chunk_rows = 16
    specs = retrieval_store.retrieval_arrays(num_videos=7, num_captions=40, epochs=2, num_frames=4, mode="batches", num_batches=3,
                                    batch_size=5)
    whole = {s.name: -(-s.shape[s.row_axis] // chunk_rows) * chunk_rows for s in specs}
    group = writer.create(str(tmp_path / "r.zarr"), specs, {"epochs": 2}, chunk_rows=chunk_rows, shard_rows=whole,
                          epoch_groups=2)
    assert group.attrs["layout"]["partitions"] == 1 and group["progress"].shape == (2, 1)
    for s in specs:
        rows = s.shape[s.row_axis]
        chunk = min(chunk_rows, rows)
        lead = (1,) if s.per_epoch else ()
        tail = s.shape[s.row_axis + 1:]
        arr = group[s.name]
        assert arr.chunks == (*lead, chunk, *tail) and arr.shards == (*lead, -(-rows // chunk) * chunk, *tail), s.name
    with pytest.raises(ConfigError, match="multiple of chunk_rows"):
        writer.create(str(tmp_path / "x.zarr"), specs, {}, chunk_rows=16, shard_rows={**whole, "caption_text": 24},
                      epoch_groups=1)


# ----------------------------------------------------------------------------- store comparison
def test_compare_stores_equal_and_different(tmp_path, base_store, source, teacher):
    compare = _compare_stores()
    again = tmp_path / "again.zarr"
    assert teach_store(again, source, teacher)["complete"]  # base_store's settings
    assert compare(str(base_store), str(again)) == []
    changed = tmp_path / "changed.zarr"
    shutil.copytree(again, changed)
    arr = zarr.open_group(str(changed), mode="r+")["gt_prob"]
    arr[1, 0] = np.float16(0.25) if arr[1, 0] != np.float16(0.25) else np.float16(0.5)
    zarr.open_group(str(changed), mode="r+").attrs["seed"] = 99
    diffs = compare(str(again), str(changed))
    assert any(d.startswith("gt_prob: values differ") for d in diffs) and any(d.startswith("attribute seed") for d in diffs)
