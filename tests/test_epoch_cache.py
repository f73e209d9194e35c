"""The read path at memory speed: the shared-memory epoch cache behind store.read and ReplayDataset,
its memory across DataLoader workers, and the chunk-aware quasi-random order (no timings)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import zarr

import labelstore
from labelstore.order import quasi_random_order
from labelstore.pipeline.replay import ReplayDataset, derived_params
from labelstore.trainers.bench_scale import unique_memory, write_store

N, E, CHUNK, SHARD = 20_000, 2, 512, 2048  # 10 shards of 4 inner chunks per epoch


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A synthetic 1000-class top-5 crop-flip store written by the real teacher stage (run_stage)."""
    path = tmp_path_factory.mktemp("synth") / "s.zarr"
    write_store(str(path), N, E, shard_rows=SHARD, chunk_rows=CHUNK)
    return path


def _direct(path, epoch: int, idx: np.ndarray) -> dict[str, np.ndarray]:
    """The records of idx read with zarr alone, keyed as store.read keys them; the augmentation
    parameters from replay.derived_params of the store (they are derived, not stored)."""
    g = zarr.open_group(str(path), mode="r")
    out = {}
    for name in ("topk_values", "topk_indices", "gt_prob", "view_digest"):
        out[name] = g[name][epoch][idx]
    assert "aug" not in g  # write_store's default: the parameters are derived
    out.update(derived_params(labelstore.open(path), epoch, idx))
    for name in ("gt", "skipped", "source_hw"):
        out[name] = g[name][:][idx]
    return out


def _assert_same(got: dict, want: dict) -> None:
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_store_read_of_shuffled_indices_equals_direct_reads(synth):
    """Also on a store that derives its parameters: rrc/box and flip/flag of shuffled indices through
    the epoch cache equal replay.derived_params of those views."""
    store = labelstore.open(synth)
    g = np.random.default_rng(0)
    for epoch in range(E):
        idx = g.permutation(N)[:1000]
        rec = store.read(epoch, idx)
        assert store.epoch_cache.loaded(epoch)  # scattered indices load the epoch into the cache
        _assert_same(rec, _direct(synth, epoch, idx))
        np.testing.assert_array_equal(rec["index"], idx)
        _assert_same(rec, {k: v for k, v in labelstore.open(synth).read(epoch, idx, cache=False).items()})
        _assert_same(store.read(epoch, np.arange(100, 200)), _direct(synth, epoch, np.arange(100, 200)))
        assert set(store.read(epoch, idx[:5], include_rows=False)) == set(rec) - {"gt", "skipped", "source_hw"}
    assert len([f for f in os.listdir(store.epoch_cache.path) if f.endswith(".npy")]) == 1  # one epoch kept
    with pytest.raises(IndexError, match="out of range"):
        store.read(0, [N])


def test_epoch_cache_directory_is_removed_with_its_store(synth):
    store = labelstore.open(synth)
    store.read(0, np.random.default_rng(1).permutation(N)[:100])
    path = store.epoch_cache.path
    assert os.path.isdir(path)
    del store
    import gc

    gc.collect()
    assert not os.path.exists(path)


def test_quasi_random_order():
    rows = np.arange(10_000)
    p = quasi_random_order(rows, block_rows=512, seed=3, epoch=1, window=4)
    assert sorted(p.tolist()) == list(range(len(rows)))  # a permutation
    np.testing.assert_array_equal(p, quasi_random_order(rows, 512, 3, 1, 4))  # deterministic
    assert not np.array_equal(p, quasi_random_order(rows, 512, 4, 1, 4))  # another seed
    assert not np.array_equal(p, quasi_random_order(rows, 512, 3, 2, 4))  # another epoch
    chunks = rows[p] // 512
    # a reader holding the last `window` chunks reads each chunk once
    held, reads = [], 0
    for c in chunks.tolist():
        if c not in held:
            reads += 1
            held = (held + [c])[-4:]
    assert reads == len(np.unique(chunks))
    # and within a window of 4 chunks the rows are shuffled, not in file order
    assert (np.diff(rows[p][: 4 * 512]) < 0).sum() > 500
    sub = np.array([5, 700, 701, 3000, 9999])  # any subset of rows
    assert sorted(quasi_random_order(sub, 512, 0, 0).tolist()) == list(range(5))


def test_quasi_random_batches_through_store_read_read_each_shard_once(synth):
    store = labelstore.open(synth)
    os.environ["LABELSTORE_CACHE_BYTES"] = "0"  # an epoch "too large for memory"
    try:
        assert not labelstore.open(synth).fits_cache()
    finally:
        del os.environ["LABELSTORE_CACHE_BYTES"]
    store.__dict__["_fits"] = False
    order = quasi_random_order(np.arange(N), SHARD, seed=0, epoch=1, window=4)
    arr = store.group["topk_values"]
    reads = []
    seen = []
    for b in range(0, N, 256):
        idx = order[b : b + 256]
        before = {c for (n, e), held in store._blocks.items() if n == "topk_values" for c in held}
        rec = store.read(1, idx)
        after = {c for (n, e), held in store._blocks.items() if n == "topk_values" for c in held}
        reads += sorted(set(np.unique(idx // SHARD).tolist()) - before)
        assert set(np.unique(idx // SHARD).tolist()) <= after
        np.testing.assert_array_equal(rec["topk_values"], arr[1][idx])
        seen.append(idx)
    assert not store.epoch_cache.loaded(1)
    assert sorted(reads) == list(range(-(-N // SHARD)))  # every shard read once
    assert sorted(np.concatenate(seen).tolist()) == list(range(N))


class _Report(torch.utils.data.Dataset):
    """Item = positions of a label-only ReplayDataset -> (its targets, this worker's pid and memory)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, item):
        js, measure = item
        t = self.ds.targets(js)
        return t, os.getpid(), unique_memory(os.getpid(), self.ds.store.epoch_cache.path) if measure else None


def test_workers_see_the_same_records_and_share_one_copy(tmp_path):
    """2 DataLoader workers index the epoch cache: their targets equal the main process's and zarr's,
    and indexing the whole epoch adds far less than the epoch's size to a worker's unique memory."""
    n = 262_144  # 12 MiB of records in the cache
    path = tmp_path / "big.zarr"
    write_store(str(path), n, 1)
    store = labelstore.open(path)
    ds = ReplayDataset(store, None, epoch=0)
    ds.load()
    cache_bytes = store.epoch_cache.nbytes(store)
    assert cache_bytes >= 10 * 2**20
    order = np.random.default_rng(0).permutation(n)
    batches = [(order[b : b + 2048], False) for b in range(0, n, 2048)]
    ends = [(batches[k][0], True) for k in range(4)]
    batches = ends + batches + ends  # the first and last two of each worker measure its memory
    loader = torch.utils.data.DataLoader(_Report(ds), sampler=batches, batch_size=None, num_workers=2,
                                         collate_fn=lambda x: x)
    first, last, seen = {}, {}, []
    direct = _direct(path, 0, np.arange(n))
    for (js, _), (t, pid, mem) in zip(batches, loader):
        if mem is not None:
            first.setdefault(pid, mem)
            last[pid] = mem
        i = t["index"].numpy()
        np.testing.assert_array_equal(i, ds.rows[js])
        np.testing.assert_array_equal(t["topk_values"].numpy(), direct["topk_values"][i].astype(np.float32))
        np.testing.assert_array_equal(t["topk_indices"].numpy(), direct["topk_indices"][i].astype(np.int64))
        np.testing.assert_array_equal(t["gt"].numpy(), direct["gt"][i].astype(np.int64))
        seen.append(i)
    assert len(last) == 2 and os.getpid() not in last
    assert sorted(np.concatenate(seen[4:-4]).tolist()) == list(range(n))
    js = batches[5][0]
    main = ds.targets(js)
    np.testing.assert_array_equal(main["topk_values"].numpy(), direct["topk_values"][ds.rows[js]].astype(np.float32))
    for pid in last:
        grew = last[pid]["uss"] - first[pid]["uss"]
        assert grew < cache_bytes / 2, (pid, grew, cache_bytes)  # a private copy would add >= cache_bytes
        assert last[pid]["cache_rss"] > cache_bytes / 4  # the worker did index the shared pages
    files = [f for f in os.listdir(store.epoch_cache.path) if f.endswith(".npy")]
    assert len(files) == 1 and os.path.getsize(os.path.join(store.epoch_cache.path, files[0])) < 1.1 * cache_bytes
