"""pipeline/recycle.py: a block is handed out again only once nothing references it, and the stage's
decode, render and teacher input give the same bytes in recycled memory as in fresh memory."""

import gc
import threading

import numpy as np
import torch

from labelstore.pipeline.augment import make_policy
from labelstore.pipeline.images import ImageFolder, decode_file
from labelstore.pipeline.recycle import Recycler, size_class


def _address(a) -> int:
    return a.__array_interface__["data"][0] if isinstance(a, np.ndarray) else a.data_ptr()


def test_size_classes_cover_the_request_with_little_slack():
    for n in [1, 4096, 4097, 562_500, 38_535_168, 154_140_672, 10**9 + 7]:
        c = size_class(n)
        assert c >= n and c % 4096 == 0
        assert c <= max(4096, 1.19 * n + 4096)
    assert size_class(562_500) == size_class(560_000)  # near sizes share a class


def test_a_block_returns_only_when_every_view_and_tensor_over_it_is_gone():
    r = Recycler()
    a = r.empty((375, 500, 3))
    assert a.shape == (375, 500, 3) and a.dtype == np.uint8 and a.flags.writeable
    p = _address(a)
    view, tensor = a[10:20, ::2], torch.from_numpy(a)[5:]
    del a
    gc.collect()
    b = r.empty((375, 500, 3))
    assert _address(b) != p  # the views hold the first block
    del view
    gc.collect()
    c = r.empty((375, 500, 3))
    assert _address(c) != p  # the tensor still does
    del tensor
    gc.collect()
    d = r.empty((370, 500, 3))  # the same size class
    assert _address(d) == p
    assert r.fresh == 3


def test_dtypes_and_idle_bytes_never_exceed_the_peak_in_use():
    r = Recycler()
    x = torch.from_numpy(r.empty((4, 3, 8, 8), np.float32))
    assert x.dtype == torch.float32 and x.shape == (4, 3, 8, 8)
    x.fill_(1.5)
    assert float(x.sum()) == 1.5 * x.numel()
    blocks = [r.empty(100_000 * (i + 1)) for i in range(20)]
    peak = r.peak
    del blocks, x
    gc.collect()
    assert r.in_use == 0 and 0 < r.idle <= peak


def test_threads_never_share_a_live_block():
    r = Recycler()
    bad = []

    def work(tag: int) -> None:
        held = []
        for i in range(300):
            a = r.empty((1000 + 37 * (i % 5), 64))
            a.fill(tag)
            held.append(a)
            if len(held) > 4:
                old = held.pop(0)
                if not (old == tag).all():  # another thread wrote into a block this one holds
                    bad.append(tag)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(1, 5)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad
    assert r.fresh < 4 * 300  # blocks were reused


def test_recycled_decode_render_and_input_equal_fresh_ones(tmp_path):
    from labelstore.trainers.bench import write_jpegs

    data = ImageFolder(write_jpegs(str(tmp_path / "photos"), 6))
    r = Recycler()
    fresh = [data.load(i) for i in range(len(data))]
    for _ in range(2):  # the second round runs in blocks the first gave back
        recycled = [data.load(i, empty=r.empty) for i in range(len(data))]
        assert all(np.array_equal(a, b) for a, b in zip(fresh, recycled))
        del recycled
        gc.collect()
    assert r.fresh == len(data)
    assert np.array_equal(decode_file(data.path(0)), decode_file(data.path(0), r.empty))
    for name in ("crop-flip", "cutmix", "mixup"):
        policy = make_policy(name, (64, 64))
        hw = np.array([im.shape[:2] for im in fresh])
        params = policy.sample(0, 1, np.arange(len(fresh)), hw, len(fresh))
        partners = policy.partners(params, len(fresh))
        p_images = [fresh[q] if q >= 0 else None for q in partners.tolist()]
        p_params = policy.sample(0, 1, np.maximum(partners, 0), hw[np.maximum(partners, 0)], len(fresh))
        want = policy.render_batch(fresh, params, p_images, p_params)
        got = policy.render_batch(fresh, params, p_images, p_params, empty=r.empty)
        assert torch.equal(want.x, got.x)
        into = torch.from_numpy(r.empty(tuple(got.x.shape), np.float32))
        assert torch.equal(policy.to_input(want), policy.to_input(got, out=into))
