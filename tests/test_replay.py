"""Replay reproduces the teacher's views bit for bit (issue 3 Done-when), on real stores and images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import N_TRAIN, copy_dataset, corrupt_image, read_arrays, teach_store

import labelstore
from labelstore.integrity import view_check, view_digest
from labelstore.pipeline.images import ImageFolder
from labelstore.pipeline.replay import ReplayDataset, ReplayLoader, replay_inputs, replay_views

POLICIES = ("none", "crop-flip", "crop-flip-jitter", "cutmix", "mixup", "selfmix")
EPOCHS = 2
SIZE = 16


def _policy_stores(root, source, teacher, **overrides) -> dict:
    """One store per policy under root (policy name -> path)."""
    out = {}
    for name in POLICIES:
        out[name] = root / f"{name}.zarr"
        teach_store(out[name], source, teacher, policy=name, epochs=EPOCHS, mc_passes=0, image_size=SIZE, **overrides)
    return out


@pytest.fixture(scope="module")
def policy_stores(tmp_path_factory, source, teacher):
    return _policy_stores(tmp_path_factory.mktemp("policies"), source, teacher)


def _digests(x: torch.Tensor) -> np.ndarray:
    return view_check(np.array([view_digest(v) for v in x.numpy()], dtype=np.uint32))


@pytest.mark.parametrize("policy", POLICIES)
def test_replay_inputs_reproduce_teacher_views(policy, policy_stores, source, teacher):
    store = labelstore.open(policy_stores[policy])
    model = teacher[0].eval()
    idx = np.arange(N_TRAIN)[::-1].copy()  # any order
    for epoch in range(EPOCHS):
        x = replay_inputs(store, source, epoch, idx)
        assert x.dtype == torch.float32 and x.shape == (N_TRAIN, 3, SIZE, SIZE)
        rec = store.read(epoch, idx)
        np.testing.assert_array_equal(view_check(replay_views(store, source, epoch, idx).digests()), rec["view_digest"])
        with torch.no_grad():
            probs = model(x).softmax(1)
        vals, ind = probs.topk(store.top_k, dim=1)
        np.testing.assert_array_equal(ind.numpy(), rec["topk_indices"].astype(np.int64))
        np.testing.assert_allclose(vals.numpy(), rec["topk_values"].astype(np.float32), atol=1e-3, rtol=2.0**-7)
        gp = probs.gather(1, torch.as_tensor(rec["gt"].astype(np.int64))[:, None])[:, 0]
        np.testing.assert_allclose(gp.numpy(), rec["gt_prob"].astype(np.float32), atol=1e-3, rtol=2.0**-7)
    # views differ between epochs unless the policy is deterministic
    d0, d1 = store.read(0)["view_digest"], store.read(1)["view_digest"]
    if policy == "none":
        np.testing.assert_array_equal(d0, d1)
    else:
        assert (d0 != d1).mean() > 0.9


@pytest.mark.parametrize("policy", ["cutmix", "mixup", "selfmix", "crop-flip"])
def test_mix_targets(policy, policy_stores, source):
    store = labelstore.open(policy_stores[policy])
    arrays = read_arrays(policy_stores[policy])
    for epoch in range(EPOCHS):
        rec = store.read(epoch)  # parameters derived from the RNG (the store has no aug/* arrays)
        batches = list(ReplayLoader(store, source, epoch=epoch, batch_size=64, shuffle=False))
        assert len(batches) == 1
        x, t = batches[0]
        idx = t["index"].numpy()
        w, partner = t["mix_weight"].numpy(), t["partner"].numpy()
        assert ((w >= 0) & (w <= 1)).all()  # mixup lam ~ Beta(0.2, 0.2) can round to 0 in float16
        np.testing.assert_array_equal(w[partner < 0], 1.0)
        if policy in ("cutmix", "mixup"):
            stored_partner = rec[f"{policy}/partner"][idx]
            np.testing.assert_array_equal(partner, stored_partner)
            mixed = partner >= 0
            assert mixed.sum() >= N_TRAIN // 2
            assert (partner[mixed] != idx[mixed]).all()
            assert (w < 1).sum() >= N_TRAIN // 4
            assert (partner[w < 1] >= 0).all()
            np.testing.assert_array_equal(t["partner_gt"].numpy()[mixed], arrays["gt"][partner[mixed]])
            np.testing.assert_array_equal(t["partner_gt"].numpy()[~mixed], -1)
            if policy == "cutmix":
                box = rec["cutmix/box"][idx].astype(np.int64)
                kept = 1.0 - box[:, 2] * box[:, 3] / float(SIZE * SIZE)
                np.testing.assert_allclose(w, np.where(mixed, kept, 1.0).astype(np.float32))
            else:
                lam = rec["mixup/lam"][idx].astype(np.float32)
                np.testing.assert_array_equal(w, np.where(mixed, lam, np.float32(1.0)))
        else:
            np.testing.assert_array_equal(partner, -1)
            np.testing.assert_array_equal(w, 1.0)
            np.testing.assert_array_equal(t["partner_gt"].numpy(), -1)
            if policy == "selfmix":
                assert rec["selfmix/apply"].any()


@pytest.fixture(scope="module")
def skip_store(tmp_path_factory, shapes_dir, teacher):
    """cutmix store over a copy of the data with one undecodable image (skip_bad)."""
    root = tmp_path_factory.mktemp("skip")
    data = copy_dataset(shapes_dir, root / "data")
    src = ImageFolder(data)
    bad_row = next(i for i, r in enumerate(src.ids) if r.endswith(".png") and i >= 20)
    corrupt_image(data / src.ids[bad_row])
    teach_store(root / "s.zarr", src, teacher, policy="cutmix", epochs=EPOCHS, image_size=SIZE, skip_bad=True)
    return labelstore.open(root / "s.zarr"), src, bad_row


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [1, 64])
def test_replay_loader_yields_recorded_views_once(skip_store, batch_size, shuffle, num_workers):
    store, src, bad_row = skip_store
    epoch = 1
    rec = store.read(epoch)  # all rows, index order
    assert store.group["skipped"][bad_row] and rec["skipped"].sum() == 1
    loader = ReplayLoader(store, src, epoch=epoch, batch_size=batch_size, shuffle=shuffle, seed=3,
                          num_workers=num_workers)
    n = N_TRAIN - 1
    assert len(loader) == -(-n // batch_size)
    seen = []
    nbatches = 0
    for x, t in loader:
        nbatches += 1
        i = t["index"].numpy()
        assert x.shape == (len(i), 3, SIZE, SIZE) and len(i) <= batch_size
        np.testing.assert_array_equal(_digests(x), rec["view_digest"][i])
        np.testing.assert_array_equal(t["topk_values"].numpy(), rec["topk_values"][i].astype(np.float32))
        np.testing.assert_array_equal(t["topk_indices"].numpy(), rec["topk_indices"][i].astype(np.int64))
        np.testing.assert_array_equal(t["mc_values"].numpy(), rec["mc_values"][i].astype(np.float32))
        np.testing.assert_array_equal(t["gt"].numpy(), rec["gt"][i].astype(np.int64))
        np.testing.assert_array_equal(t["gt_prob"].numpy(), rec["gt_prob"][i].astype(np.float32))
        np.testing.assert_array_equal(t["partner"].numpy(), rec["cutmix/partner"][i].astype(np.int64))
        seen.append(i)
    seen = np.concatenate(seen)
    assert nbatches == len(loader)
    assert sorted(seen.tolist()) == [r for r in range(N_TRAIN) if r != bad_row]
    assert (seen[:-1] < seen[1:]).all() != shuffle  # shuffled order iff shuffle
    # nobody is mixed with the undecodable sample
    assert not (rec["cutmix/partner"] == bad_row).any()
    if shuffle:  # the order is a function of (seed, epoch) only
        again = np.concatenate([t["index"].numpy() for _, t in ReplayLoader(
            store, src, epoch=epoch, batch_size=64, shuffle=True, seed=3, num_workers=0)])
        np.testing.assert_array_equal(again, seen)


def test_replay_loader_quasi_random_order(skip_store):
    """window > 0: the shard-aware quasi-random order; every recorded view once, with its targets."""
    store, src, bad_row = skip_store
    rec = store.read(1)
    chunk = store.group["topk_values"].shards[1]
    loader = ReplayLoader(store, src, epoch=1, batch_size=8, shuffle=True, seed=2, window=2, num_workers=0)
    seen = []
    for x, t in loader:
        i = t["index"].numpy()
        np.testing.assert_array_equal(_digests(x), rec["view_digest"][i])
        np.testing.assert_array_equal(t["topk_indices"].numpy(), rec["topk_indices"][i].astype(np.int64))
        seen.append(i)
    seen = np.concatenate(seen)
    assert sorted(seen.tolist()) == [r for r in range(N_TRAIN) if r != bad_row]
    assert not (seen[:-1] < seen[1:]).all()
    held, reads = [], 0  # a reader holding the last 2 shards reads each shard once
    for c in (seen // chunk).tolist():
        if c not in held:
            reads, held = reads + 1, (held + [c])[-2:]
    assert reads == len(np.unique(seen // chunk)) > 2


def test_replay_dataset_with_distributed_sampler_and_persistent_workers(skip_store):
    """A standard DataLoader over ReplayDataset: DistributedSampler shares, pin_memory, persistent workers
    that follow set_epoch; every view is the teacher's (digest) with its stored targets."""
    from torch.utils.data import DataLoader, DistributedSampler

    store, src, bad_row = skip_store
    ds = ReplayDataset(store, src, epoch=0)
    assert len(ds) == N_TRAIN - 1
    loaders = [DataLoader(ds, batch_size=8, sampler=DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=5),
                          num_workers=2, pin_memory=True, persistent_workers=True) for r in range(2)]
    for epoch in range(EPOCHS):
        ds.set_epoch(epoch)
        rec = store.read(epoch)
        seen = []
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
            for x, t in loader:
                i = t["index"].numpy()
                assert x.dtype == torch.uint8 and x.shape == (len(i), 3, SIZE, SIZE)
                np.testing.assert_array_equal(_digests(x), rec["view_digest"][i])
                np.testing.assert_array_equal(t["topk_indices"].numpy(), rec["topk_indices"][i].astype(np.int64))
                np.testing.assert_array_equal(t["partner"].numpy(), rec["cutmix/partner"][i].astype(np.int64))
                seen.append(i)
        seen = np.concatenate(seen)  # two ranks: every row once (DistributedSampler pads to equal shares)
        assert set(seen.tolist()) == {r for r in range(N_TRAIN) if r != bad_row}
        assert len(seen) == 2 * -(-(N_TRAIN - 1) // 2)
    with pytest.raises(IndexError, match="epoch 9 out of range"):
        ds.set_epoch(9)


# ----------------------------------------------------------------------------- derived parameters (issue 18)
@pytest.fixture(scope="module")
def stored_policy_stores(tmp_path_factory, source, teacher):
    """The stores of policy_stores written with --store-params (explicit aug/* arrays)."""
    return _policy_stores(tmp_path_factory.mktemp("stored-params"), source, teacher, store_params=True)


@pytest.mark.parametrize("policy", POLICIES)
def test_derived_params_equal_stored_and_replay_the_same_views(policy, policy_stores, stored_policy_stores, source):
    derived, stored = labelstore.open(policy_stores[policy]), labelstore.open(stored_policy_stores[policy])
    assert (derived.attrs["aug_params"], stored.attrs["aug_params"]) == ("derived", "stored")
    D, S = read_arrays(policy_stores[policy]), read_arrays(stored_policy_stores[policy])
    aug = sorted(n for n in S if n.startswith("aug/"))
    assert (bool(aug) or policy == "none") and not [n for n in D if n.startswith("aug/")]
    for name in D:  # the teacher saw the same pixels and wrote the same records either way
        if name not in ("progress", "manifest", "manifest_all"):  # bookkeeping: it lists the aug/* objects too
            np.testing.assert_array_equal(D[name], S[name], err_msg=name)
    idx = np.arange(N_TRAIN)[::-1].copy()
    for epoch in range(EPOCHS):
        rd, rs = derived.read(epoch, idx), stored.read(epoch, idx)
        assert rd.keys() == rs.keys()
        for k in rs:
            assert rd[k].dtype == rs[k].dtype, k
            np.testing.assert_array_equal(rd[k], rs[k], err_msg=k)
        vd, vs = replay_views(derived, source, epoch, idx), replay_views(stored, source, epoch, idx)
        np.testing.assert_array_equal(vd.x.numpy(), vs.x.numpy())
        np.testing.assert_array_equal(view_check(vd.digests()), rs["view_digest"])


def test_view_check_catches_a_wrong_view(policy_stores, source):
    """16-bit view checks: a view rendered from a crop box one pixel off, or from another image, fails."""
    from labelstore.pipeline.replay import store_policy

    store = labelstore.open(policy_stores["crop-flip"])
    policy, idx = store_policy(store), np.arange(N_TRAIN)
    rec = store.read(0, idx)
    params = {k: rec[k].copy() for k in policy.param_spec()}
    images = [source.load(int(i)) for i in idx]
    ok = view_check(policy.render_batch(images, params).digests())
    np.testing.assert_array_equal(ok, rec["view_digest"])
    box = params["rrc/box"]
    movable = box[:, 1].astype(np.int64) + box[:, 3] < rec["source_hw"][:, 1]  # room to shift right
    box[movable, 1] += 1
    shifted = view_check(policy.render_batch(images, params).digests())
    assert movable.sum() > N_TRAIN // 2 and (shifted[movable] != rec["view_digest"][movable]).all()
    # the same params on the next sample's image, where the crop fits in it
    nxt = (idx + 1) % N_TRAIN
    b = rec["rrc/box"].astype(np.int64)
    fits = np.nonzero((b[:, 0] + b[:, 2] <= rec["source_hw"][nxt, 0]) & (b[:, 1] + b[:, 3] <= rec["source_hw"][nxt, 1]))[0]
    other = view_check(policy.render_batch([images[int(j)] for j in nxt[fits]],
                                           {k: rec[k][fits] for k in policy.param_spec()}).digests())
    assert len(fits) > N_TRAIN // 4 and (other != rec["view_digest"][fits]).all()


def test_derived_params_of_another_sample_version_refused(policy_stores, tmp_path):
    import shutil

    import zarr

    from labelstore.errors import StoreMismatch

    copy = tmp_path / "old.zarr"
    shutil.copytree(policy_stores["cutmix"], copy)
    g = zarr.open_group(str(copy), mode="r+")
    g.attrs["policy"] = {**g.attrs["policy"], "sample_version": 0}
    store = labelstore.open(copy, check_metadata=False)  # the edit itself is refused at open by the metadata checksums
    with pytest.raises(StoreMismatch, match="old.zarr: its augmentation parameters are derived under sample version 0"):
        store.read(0, [1, 2])


def test_derived_params_need_the_pipeline(policy_stores):
    """The store layer alone (no labelstore.pipeline imported) names what is missing instead of omitting keys."""
    import subprocess
    import sys

    code = ("import labelstore, sys\n"
            f"s = labelstore.open({str(policy_stores['crop-flip'])!r})\n"
            "assert s.read_array('topk_values', 0).shape[0] == s.num_samples\n"
            "try:\n    s.read(0, [1])\nexcept labelstore.errors.StoreError as e:\n    print(e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "derived from the policy" in p.stdout and "import labelstore.pipeline" in p.stdout, p.stdout + p.stderr


def test_inspect_crop_histograms_from_derived_params(policy_stores, stored_policy_stores):
    from labelstore.pipeline.classification_inspect import classification_stats

    derived = classification_stats(labelstore.open(policy_stores["crop-flip"]))
    stored = classification_stats(labelstore.open(stored_policy_stores["crop-flip"]))
    assert derived["histograms"]["crop_area"]["counts"] and derived == stored
    assert sum(derived["histograms"]["crop_area"]["counts"]) == EPOCHS * N_TRAIN


def test_other_decoder_refused_by_name(tmp_path, base_store, source):
    import shutil

    import zarr

    from labelstore.errors import StoreMismatch
    from labelstore.pipeline.replay import ReplayDataset

    copy = tmp_path / "other-decoder.zarr"
    shutil.copytree(base_store, copy)
    attrs = zarr.open_group(str(copy), mode="r+").attrs
    ds = dict(attrs["dataset"])
    assert ds["decoder"]["jpeg"].startswith("simplejpeg ") and ds["decoder"]["other"].startswith("pillow ")
    ReplayDataset(labelstore.open(copy, check_metadata=False), source)  # the same decoders: accepted
    attrs["dataset"] = {**ds, "decoder": {**ds["decoder"], "jpeg": "simplejpeg 0.1"}}
    ReplayDataset(labelstore.open(copy, check_metadata=False), source)  # another version of the same library: accepted
    attrs["dataset"] = {**ds, "decoder": {**ds["decoder"], "jpeg": "opencv 4.10"}}
    with pytest.raises(StoreMismatch, match="decoded with .*opencv 4.10.*this source decodes with .*simplejpeg"):
        ReplayDataset(labelstore.open(copy, check_metadata=False), source)


def test_replay_dataset_in_spawned_workers(skip_store):
    """DataLoader workers started by spawn get the dataset pickled (each makes its own recycler of
    decode and render memory, pipeline/recycle.py): the same teacher's views."""
    from torch.utils.data import DataLoader

    store, src, _ = skip_store
    ds = ReplayDataset(store, src, epoch=1)
    ds.batch(np.arange(4))  # this process's recycler exists: the workers must not get it
    rec = store.read(1)
    n = 0
    for x, t in DataLoader(ds, batch_size=8, num_workers=1, multiprocessing_context="spawn"):
        i = t["index"].numpy()
        np.testing.assert_array_equal(_digests(x), rec["view_digest"][i])
        n += len(i)
    assert n == len(ds)


@pytest.mark.parametrize("policy", POLICIES)
def test_replay_loader_renders_on_a_device_with_the_same_bytes(policy, policy_stores, source):
    """render_device: the workers decode, this process renders (pipeline/render_torch.py) on the
    device ("cpu" here: the torch path); every batch equals the numba-rendered loader's."""
    store = labelstore.open(policy_stores[policy])
    workers = 2 if policy == "cutmix" else 0
    plain = ReplayLoader(store, source, epoch=1, batch_size=16, seed=3, num_workers=workers)
    on_device = ReplayLoader(store, source, epoch=1, batch_size=16, seed=3, num_workers=workers, render_device="cpu")
    rec, n = store.read(1), 0
    for (x, t), (y, u) in zip(plain, on_device, strict=True):
        assert torch.equal(x, y) and t.keys() == u.keys()
        assert all(torch.equal(t[k], u[k]) for k in t)
        if policy != "mixup":  # (a MixUp view's digest covers its partner and lam: the equality above)
            np.testing.assert_array_equal(_digests(y), rec["view_digest"][u["index"].numpy()])
        n += len(y)
    assert n == len(plain.indices)
