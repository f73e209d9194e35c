"""The torch integer render path gives the numba kernels' bytes (golden images, random rows, any batch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracles import reference_resize
from test_golden import DIGESTS, _images, _render

from labelstore.pipeline import render_torch as RT
from labelstore.pipeline.augment import POLICY_NAMES, make_policy


def _partners(pol, p, imgs):
    q = pol.partners(p, len(imgs))
    return [imgs[j] if j >= 0 else None for j in q], {k: v[np.maximum(q, 0)] for k, v in p.items()}


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_golden_digests_in_torch(name):
    import json

    from test_golden import GOLDEN, SIZE

    pol, imgs = make_policy(name, SIZE), _images()
    p = {k: np.asarray(v, dtype=np.dtype(pol.param_spec()[k][0]))
         for k, v in json.loads((GOLDEN / "params.json").read_text())[name].items()}
    pimgs, prows = _partners(pol, p, imgs)
    srcs = [torch.from_numpy(im) for im in imgs]
    v = RT.render_batch(pol, srcs, p, [None if im is None else torch.from_numpy(im) for im in pimgs], prows)
    assert v.digests().tolist() == DIGESTS[name]
    ref = _render(name)
    assert torch.equal(v.x, ref.x)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_random_rows_same_bytes_batch_1_and_n(name):
    n, size = 1000, (19, 24)
    g = np.random.default_rng(POLICY_NAMES.index(name))
    imgs = [g.integers(0, 256, (int(g.integers(6, 70)), int(g.integers(6, 70)), 3), dtype=np.uint8) for _ in range(n)]
    pol = make_policy(name, size, crop_scale=(0.02, 1.0))
    p = pol.sample(11, 3, np.arange(n), np.array([im.shape[:2] for im in imgs]), n)
    pimgs, prows = _partners(pol, p, imgs)
    ref = pol.render_batch(imgs, p, pimgs, prows)
    got = RT.render_batch(pol, imgs, p, pimgs, prows)
    assert torch.equal(got.x, ref.x)
    if ref.partner is not None:
        assert torch.equal(got.partner, ref.partner) and torch.equal(got.lam, ref.lam)
    assert np.array_equal(got.digests(), ref.digests())
    for i in range(0, n, 7):  # batch 1
        one = {k: v[i : i + 1] for k, v in p.items()}
        pone = {k: v[i : i + 1] for k, v in prows.items()}
        v = RT.render_batch(pol, [torch.from_numpy(imgs[i])], one,
                            [None if pimgs[i] is None else torch.from_numpy(pimgs[i])], pone)
        assert torch.equal(v.x[0], ref.x[i]), i


def test_resize_matches_the_numpy_reference_and_flip():
    src = np.random.default_rng(5).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    for box, size in [((0, 0, 37, 50), (16, 16)), ((3, 5, 20, 9), (31, 24)), ((10, 2, 1, 1), (4, 3))]:
        ref = reference_resize(src, box, size)
        np.testing.assert_array_equal(RT.resize(torch.from_numpy(src), box, size).numpy(), ref)
        np.testing.assert_array_equal(RT.resize(torch.from_numpy(src), box, size, flip=True).numpy(), ref[:, :, ::-1])


@pytest.mark.parametrize("policy", ["crop-flip-jitter", "cutmix"])
def test_teacher_stage_rendering_in_torch_writes_the_same_store(tmp_path, source, teacher, policy):
    from conftest import assert_same_arrays, teach_store

    teach_store(tmp_path / "numba.zarr", source, teacher, policy=policy, epochs=2, mc_passes=0)
    teach_store(tmp_path / "torch.zarr", source, teacher, policy=policy, epochs=2, mc_passes=0,
                render_device="torch:cpu")
    assert_same_arrays(tmp_path / "numba.zarr", tmp_path / "torch.zarr")


def test_render_device_must_be_a_torch_device():
    from labelstore.errors import ConfigError
    from labelstore.pipeline.teach import TeachConfig, render_device

    assert render_device(TeachConfig(), torch.device("cpu")) is None  # the numba kernels
    assert render_device(TeachConfig(render_device="torch:cpu"), torch.device("cpu")) == torch.device("cpu")
    assert render_device(TeachConfig(), torch.device("cuda", 1)) == torch.device("cuda", 1)  # the teacher's device
    with pytest.raises(ConfigError, match="--render-device 'gpu0'"):
        render_device(TeachConfig(render_device="gpu0"), torch.device("cpu"))


def test_replay_views_rendered_by_torch_equal_the_stored_digests(base_store, source):
    import labelstore
    from labelstore.pipeline.replay import replay_views

    store = labelstore.open(base_store)
    idx = np.arange(min(12, store.num_samples))
    cpu = replay_views(store, source, 1, idx)
    dev = replay_views(store, source, 1, idx, device="cpu")
    assert torch.equal(cpu.x, dev.x)
    from labelstore.integrity import view_check

    assert view_check(dev.digests()).tolist() == store.read(1, idx)["view_digest"].tolist()
