import json
from dataclasses import dataclass

import numba
import numpy as np
import pytest
import torch

from labelstore.pipeline import augment as A
from labelstore.pipeline.augment import (
    POLICY_NAMES,
    ColorJitter,
    CutMix,
    HorizontalFlip,
    MixUp,
    Op,
    Policy,
    RandomResizedCrop,
    Resize,
    SelfMix,
    eval_policy,
    make_policy,
)

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _shapes(n, seed=0, lo=8, hi=80):
    return np.random.default_rng(seed).integers(lo, hi, size=(n, 2))


def _images(shapes, seed=0):
    rs = np.random.default_rng(seed)
    return [rs.integers(0, 256, size=(int(h), int(w), 3), dtype=np.uint8) for h, w in shapes]


def _render(pol, image, row, partner_image=None, partner_row=None) -> torch.Tensor:
    """float32 [3, out_H, out_W] normalised view of one sample: Policy.render_batch + to_input."""
    rows = {k: np.asarray(v)[None] for k, v in row.items()}
    prows = {k: np.asarray(v)[None] for k, v in partner_row.items()} if partner_row is not None else None
    return pol.to_input(pol.render_batch([image], rows, [partner_image], prows))[0]


def _raw(img):
    """uint8 HWC -> float [3, H, W] in [0, 1], the way _render converts (mean 0 / std 1 policies)."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0


def _row(params, i):
    return {k: v[i] for k, v in params.items()}


def _partner_inputs(policy, params, images):
    part = policy.partners(params, n=len(images))
    rows = {k: v[np.maximum(part, 0)] for k, v in params.items()}
    return [images[j] if j >= 0 else None for j in part], rows


# ------------------------------------------------------------------ sampling


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_sampling_is_independent_of_batching(name):
    pol = make_policy(name)
    n = 100
    ids = np.arange(n)
    shapes = _shapes(n)
    full = pol.sample(7, 3, ids, shapes, n)
    assert set(full) == set(pol.param_spec())
    rs = np.random.default_rng(1)
    perm = rs.permutation(n)
    got = {k: np.zeros_like(v) for k, v in full.items()}
    start = 0
    for size in [1, 7, 13, 29, 50]:  # uneven batches in a shuffled order
        sel = perm[start : start + size]
        part = pol.sample(7, 3, sel, shapes[sel], n)
        for k, v in part.items():
            assert v.dtype == full[k].dtype
            got[k][sel] = v
        start += size
    assert start == n
    for k in full:
        assert np.array_equal(got[k], full[k]), k
    # a single id alone, and a reversed batch
    for i in (0, 57, 99):
        one = pol.sample(7, 3, np.array([i]), shapes[i : i + 1], n)
        for k in full:
            assert np.array_equal(one[k][0], full[k][i]), k
    rev = pol.sample(7, 3, ids[::-1], shapes[::-1], n)
    for k in full:
        assert np.array_equal(rev[k][::-1], full[k]), k


@pytest.mark.parametrize("name", [n for n in POLICY_NAMES if n != "none"])
def test_params_depend_on_seed_and_epoch(name):
    pol = make_policy(name)
    n = 64
    shapes = _shapes(n)
    base = pol.sample(0, 0, np.arange(n), shapes, n)
    for seed, epoch in [(0, 1), (1, 0)]:
        other = pol.sample(seed, epoch, np.arange(n), shapes, n)
        for k in base:
            if base[k].dtype == bool:
                assert (base[k] != other[k]).mean() > 0.1, k
            else:
                assert (base[k] != other[k]).any(axis=tuple(range(1, base[k].ndim))).mean() > 0.3, k


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_param_spec_dtypes_and_shapes(name):
    pol = make_policy(name)
    p = pol.sample(0, 0, np.arange(10), _shapes(10), 10)
    spec = pol.param_spec()
    assert set(p) == set(spec)
    for k, (dt, shape) in spec.items():
        assert p[k].dtype == np.dtype(dt) and p[k].shape == (10, *shape), k
    json.dumps(spec)  # spec is JSON-able (dtype strings, tuples)


def test_rrc_boxes_valid_and_in_range():
    op = RandomResizedCrop()
    n = 4000
    shapes = np.concatenate([_shapes(n, lo=100, hi=700), [[1, 1], [1, 100], [100, 1], [5, 3], [2, 2], [65535, 3]]])
    box = op.sample(0, 0, np.arange(len(shapes)), shapes, len(shapes))["box"].astype(np.int64)
    y, x, h, w = box.T
    H, W = shapes.T
    assert (h >= 1).all() and (w >= 1).all()
    assert (y + h <= H).all() and (x + w <= W).all()
    # big sources never need the fallback: area and aspect within the ranges (up to pixel rounding)
    big = slice(0, n)
    area = h[big] * w[big] / (H[big] * W[big])
    assert area.min() >= 0.08 * 0.97 and area.max() <= 1.0
    asp = w[big] / h[big]
    assert asp.min() >= 0.75 * 0.97 and asp.max() <= 4 / 3 * 1.03
    # square sources: area ~ U(0.08, 1) minus the large-area attempts that do not fit
    sq = op.sample(0, 0, np.arange(n), np.full((n, 2), 224), n)["box"].astype(np.float64)
    assert 0.45 < (sq[:, 2] * sq[:, 3] / 224**2).mean() < 0.51
    # fallback for extreme aspect ratios: full side, centred, ratio clamped
    assert box[n + 1].tolist() == [0, 49, 1, 1]  # 1 x 100
    assert box[n + 2].tolist() == [49, 0, 1, 1]  # 100 x 1
    assert box[n + 5].tolist()[3] == 3 and box[n + 5].tolist()[2] <= 4


def test_empty_sources_get_empty_boxes():
    # an image that failed to decode is sampled with shape (0, 0); its view is never rendered
    pol = make_policy("selfmix")
    shapes = np.array([[30, 40], [0, 0], [25, 25]])
    p = pol.sample(0, 0, np.arange(3), shapes, 3)
    assert p["rrc/box"][1].tolist() == [0, 0, 0, 0] and p["selfmix/box2"][1].tolist() == [0, 0, 0, 0]
    ok = pol.sample(0, 0, np.array([0, 2]), shapes[[0, 2]], 3)
    assert all(np.array_equal(ok[k], p[k][[0, 2]]) for k in p)
    with pytest.raises(ValueError, match="negative"):
        pol.sample(0, 0, np.arange(1), [[-1, 5]], 1)


def test_rrc_rejects_huge_sources():
    with pytest.raises(ValueError, match="65536"):
        RandomResizedCrop().sample(0, 0, np.arange(2), [[10, 10], [65536, 10]], 2)
    with pytest.raises(ValueError, match="65536"):
        make_policy("crop-flip").sample(0, 0, np.arange(1), [[10, 70000]], 1)


def test_flip_rate_and_jitter_ranges():
    n = 20000
    ids = np.arange(n)
    f = HorizontalFlip().sample(0, 0, ids, None, n)["flag"]
    assert abs(f.mean() - 0.5) < 0.02
    f = HorizontalFlip(p=0.2, name="f2").sample(0, 0, ids, None, n)["flag"]
    assert abs(f.mean() - 0.2) < 0.02
    j = ColorJitter().sample(0, 0, ids, None, n)["factors"].astype(np.float64)
    assert j.min() >= 0.6 - 1e-3 and j.max() <= 1.4 + 1e-3
    assert np.allclose(j.mean(0), 1.0, atol=0.01)
    assert (ColorJitter(0, 0, 0).sample(0, 0, ids[:5], None, 5)["factors"] == 1).all()


def test_mixing_partners_and_lams():
    n = 5000
    ids = np.arange(n)
    pol = make_policy("cutmix", output_size=(32, 24))
    p = pol.sample(0, 0, ids, _shapes(n), n)
    part = pol.partners(p)
    assert part.dtype == np.int64
    assert (part != ids).all() and part.min() >= 0 and part.max() < n
    assert len(np.unique(part)) > 0.5 * n  # spread over the dataset
    box = p["cutmix/box"].astype(np.int64)
    assert (box[:, 0] + box[:, 2] <= 32).all() and (box[:, 1] + box[:, 3] <= 24).all()
    kept = 1 - box[:, 2] * box[:, 3] / (32 * 24)
    assert np.allclose(p["cutmix/lam"].astype(np.float64), kept, atol=1e-3)
    # Beta(1, 1) box sizes; boxes clipped at the border keep more of the own view (timm's rand_bbox)
    assert 0.65 < kept.mean() < 0.75 and kept.min() < 0.3 and kept.max() == 1.0
    w = pol.mix_weight_array(p)
    assert np.array_equal(w, kept)
    assert all(pol.mix_weights(_row(p, i)) == w[i] for i in range(50))

    half = Policy((RandomResizedCrop(), CutMix(p=0.3)), (16, 16)).sample(0, 0, ids, _shapes(n), n)
    off = half["cutmix/partner"] < 0
    assert abs(off.mean() - 0.7) < 0.03
    assert (half["cutmix/lam"][off] == 1).all() and (half["cutmix/box"][off] == 0).all()

    mp = Policy((RandomResizedCrop(), MixUp(alpha=1.0)), (8, 8)).sample(0, 0, ids, _shapes(n), n)
    lam = mp["mixup/lam"].astype(np.float64)
    assert lam.min() >= 0 and lam.max() <= 1 and abs(lam.mean() - 0.5) < 0.02
    assert abs(lam.var() - 1 / 12) < 0.01
    mpol = Policy((RandomResizedCrop(), MixUp(alpha=1.0)), (8, 8))
    assert np.array_equal(mpol.mix_weight_array(mp), lam)  # the stored lam, exactly
    lam2 = make_policy("mixup").sample(0, 0, ids, _shapes(n), n)["mixup/lam"].astype(np.float64)
    assert abs(lam2.var() - 1 / (4 * 1.4)) < 0.02  # Beta(0.2, 0.2) is U-shaped
    # a dataset of one sample cannot be mixed
    lone = pol.sample(0, 0, np.array([0]), [[10, 10]], 1)
    assert lone["cutmix/partner"].tolist() == [-1] and pol.mix_weight_array(lone).tolist() == [1.0]
    with pytest.raises(ValueError, match="num_samples"):
        pol.sample(0, 0, np.array([5]), [[10, 10]], 5)


def test_selfmix_params():
    n = 4000
    pol = make_policy("selfmix", output_size=(20, 30))
    shapes = _shapes(n, lo=3, hi=90)
    p = pol.sample(0, 0, np.arange(n), shapes, n)
    on = p["selfmix/apply"]
    assert abs(on.mean() - 0.5) < 0.03
    b2, paste = p["selfmix/box2"].astype(np.int64), p["selfmix/paste"].astype(np.int64)
    assert (b2[~on] == 0).all() and (paste[~on] == 0).all()
    assert (b2[on, 0] + b2[on, 2] <= shapes[on, 0]).all() and (b2[on, 1] + b2[on, 3] <= shapes[on, 1]).all()
    assert (paste[on, 0] + paste[on, 2] <= 20).all() and (paste[on, 1] + paste[on, 3] <= 30).all()
    assert (paste[on, 2:] >= 1).all()
    assert (pol.partners(p) == -1).all() and (pol.mix_weight_array(p) == 1).all()


# ------------------------------------------------------------------ ops on known images


def test_crop_of_full_box_is_identity_and_subbox_is_exact():
    img = _images([(6, 9)])[0]
    pol = Policy((RandomResizedCrop(),), output_size=(6, 9), mean=ZERO, std=ONE)
    out = _render(pol, img, {"rrc/box": np.array([0, 0, 6, 9], np.uint16)})
    assert torch.equal(out, _raw(img))
    sub = Policy((RandomResizedCrop(),), output_size=(3, 5), mean=ZERO, std=ONE)
    out = _render(sub, img, {"rrc/box": np.array([2, 1, 3, 5], np.uint16)})  # (y, x, h, w)
    assert torch.equal(out, _raw(img[2:5, 1:6]))
    with pytest.raises(ValueError, match="not inside"):
        _render(sub, img, {"rrc/box": np.array([4, 1, 3, 5], np.uint16)})


def test_resize_preserves_constant_and_normalises():
    mean, std = (0.5, 0.25, 0.75), (0.2, 0.3, 0.4)
    img = np.empty((17, 11, 3), np.uint8)
    img[:] = [128, 64, 191]
    out = _render(eval_policy((32, 32), mean=mean, std=std), img, {})
    expect = (torch.tensor([128, 64, 191]) / 255.0 - torch.tensor(mean)) / torch.tensor(std)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out, expect.view(3, 1, 1).expand(3, 32, 32), atol=1e-5)
    # keep_aspect takes the centred crop with the output aspect
    img = _images([(10, 20)])[0]
    out = _render(Policy((Resize(keep_aspect=True),), (10, 10), ZERO, ONE), img, {})
    assert torch.equal(out, _raw(img[:, 5:15]))


def test_flip_reverses_columns():
    img = _images([(5, 7)])[0]
    pol = Policy((RandomResizedCrop(), HorizontalFlip()), (5, 7), ZERO, ONE)
    box = np.array([0, 0, 5, 7], np.uint16)
    assert torch.equal(_render(pol, img, {"rrc/box": box, "flip/flag": np.bool_(True)}), _raw(img[:, ::-1]))
    assert torch.equal(_render(pol, img, {"rrc/box": box, "flip/flag": np.bool_(False)}), _raw(img))
    # flip before the crop flips the source: the crop box is taken from the mirrored image
    pre = Policy((HorizontalFlip(), RandomResizedCrop()), (5, 3), ZERO, ONE)
    out = _render(pre, img, {"rrc/box": np.array([0, 0, 5, 3], np.uint16), "flip/flag": True})
    assert torch.equal(out, _raw(img[:, ::-1][:, :3]))


def test_jitter_identity_and_each_factor():
    img = _images([(6, 6)])[0]
    pol = Policy((RandomResizedCrop(), ColorJitter()), (6, 6), ZERO, ONE)
    box = np.array([0, 0, 6, 6], np.uint16)
    x = _raw(img)

    def r(f):
        return _render(pol, img, {"rrc/box": box, "jitter/factors": np.array(f, np.float16)})

    def u8(f):  # the rendered view back to integers
        return torch.round(r(f) * 255).to(torch.int64)

    v = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).to(torch.int64)
    assert torch.equal(r([1, 1, 1]), x)
    assert torch.equal(u8([0.5, 1, 1]), (v + 1) // 2)  # half, rounded half up
    assert torch.equal(u8([2, 1, 1]), (2 * v).clamp(0, 255))
    gray = (0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2]).float()
    c0 = u8([1, 0, 1])  # contrast 0: the mean gray everywhere
    assert (c0 == c0[0, 0, 0]).all() and abs(float(c0[0, 0, 0]) - float(gray.mean())) <= 0.5 + 1e-3
    assert (u8([1, 1, 0]) - gray.expand(3, 6, 6)).abs().max() <= 0.5 + 1e-3  # saturation 0: grayscale
    c = u8([1, 1.5, 1])
    assert (c - (1.5 * v - 0.5 * gray.mean()).clamp(0, 255)).abs().max() <= 1.0


def _mix_policy(mix, size=(8, 10)):
    return Policy((RandomResizedCrop(), HorizontalFlip(), mix), size, ZERO, ONE)


def test_cutmix_box_pixels_come_from_partner():
    own, other = _images([(8, 10), (8, 10)], seed=3)
    pol = _mix_policy(CutMix())
    full = np.array([0, 0, 8, 10], np.uint16)
    row = {"rrc/box": full, "flip/flag": False, "cutmix/partner": np.int32(4),
           "cutmix/box": np.array([1, 2, 3, 4], np.uint16), "cutmix/lam": np.float16(1 - 12 / 80)}
    # the partner's own mixing params are ignored (no third image needed)
    prow = {"rrc/box": full, "flip/flag": True, "cutmix/partner": np.int32(9),
            "cutmix/box": np.array([0, 0, 8, 10], np.uint16), "cutmix/lam": np.float16(0)}
    out = _render(pol, own, row, other, prow)
    expect = _raw(own).clone()
    expect[:, 1:4, 2:6] = _raw(other[:, ::-1])[:, 1:4, 2:6]  # partner's base view (flipped)
    assert torch.equal(out, expect)
    assert pol.mix_weights(row) == 1 - 12 / 80
    with pytest.raises(ValueError, match="cutmix"):
        _render(pol, own, row)
    with pytest.raises(ValueError, match="cutmix"):
        _render(pol, own, row, other, None)
    # unmixed row needs no partner
    row0 = dict(row, **{"cutmix/partner": np.int32(-1), "cutmix/box": np.zeros(4, np.uint16)})
    assert torch.equal(_render(pol, own, row0), _raw(own)) and pol.mix_weights(row0) == 1.0


def test_mixup_blend_exact():
    own, other = _images([(8, 10), (8, 10)], seed=4)
    pol = _mix_policy(MixUp())
    full = np.array([0, 0, 8, 10], np.uint16)
    row = {"rrc/box": full, "flip/flag": False, "mixup/partner": np.int32(1), "mixup/lam": np.float16(0.25)}
    prow = {"rrc/box": full, "flip/flag": False, "mixup/partner": np.int32(-1), "mixup/lam": np.float16(1)}
    out = _render(pol, own, row, other, prow)
    u8 = [torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() for a in (own, other)]
    assert torch.equal(out, (0.25 * u8[0] + 0.75 * u8[1]) / 255.0)  # blended on uint8 values, then scaled
    assert pol.mix_weights(row) == 0.25
    with pytest.raises(ValueError, match="mixup"):
        _render(pol, own, row, None, prow)


def test_selfmix_pastes_second_crop():
    img = _images([(8, 8)], seed=5)[0]
    pol = Policy((RandomResizedCrop(), SelfMix()), (8, 8), ZERO, ONE)
    row = {"rrc/box": np.array([0, 0, 8, 8], np.uint16), "selfmix/apply": True,
           "selfmix/box2": np.array([2, 3, 4, 5], np.uint16), "selfmix/paste": np.array([1, 0, 4, 5], np.uint16)}
    out = _render(pol, img, row)
    expect = _raw(img).clone()
    expect[:, 1:5, 0:5] = _raw(img[2:6, 3:8])
    assert torch.equal(out, expect)
    assert torch.equal(_render(pol, img, dict(row, **{"selfmix/apply": False})), _raw(img))
    assert pol.mix_weights(row) == 1.0


# ------------------------------------------------------------------ render


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_render_batch_equals_render_with_variable_sizes(name):
    pol = make_policy(name, output_size=(24, 20))
    n = 12
    shapes = np.concatenate([_shapes(n - 3, lo=5, hi=70), [[1, 1], [3, 90], [64, 2]]])
    images = _images(shapes, seed=2)
    p = pol.sample(1, 2, np.arange(n), shapes, n)
    pimgs, prows = _partner_inputs(pol, p, images)
    views = pol.render_batch(images, p, pimgs, prows)
    assert views.x.shape == (n, 3, 24, 20) and views.x.dtype == torch.uint8
    batch = pol.to_input(views)
    assert batch.shape == (n, 3, 24, 20) and batch.dtype == torch.float32
    assert torch.isfinite(batch).all()
    for i in range(n):
        one = _render(pol, images[i], _row(p, i), pimgs[i], _row(prows, i))
        assert torch.equal(batch[i], one), i
    # views differ between samples (not a constant output)
    assert not torch.equal(batch[0], batch[1])


def test_render_is_deterministic_across_calls_and_threads():
    pol = Policy((RandomResizedCrop(), HorizontalFlip(), ColorJitter(), CutMix()), (160, 160))
    shapes = np.array([[300, 250], [280, 320]])
    images = _images(shapes, seed=6)
    p = pol.sample(0, 0, np.arange(2), shapes, 2)
    pimgs, prows = _partner_inputs(pol, p, images)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        a = pol.render_batch(images, p, pimgs, prows).x
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))  # the kernels prange over views: same bytes for any thread count
        b = pol.render_batch(images, p, pimgs, prows).x
    finally:
        numba.set_num_threads(threads)
    assert torch.equal(a, b)
    # inputs were not modified
    assert torch.equal(pol.render_batch(images, p, pimgs, prows).x, a)


def test_render_validates_row_and_image():
    pol = make_policy("crop-flip")
    img = _images([(10, 10)])[0]
    with pytest.raises(ValueError, match="flip/flag"):
        _render(pol, img, {"rrc/box": np.array([0, 0, 5, 5], np.uint16)})
    with pytest.raises(ValueError, match="shape"):
        _render(pol, img, {"rrc/box": np.array([0, 0, 5], np.uint16), "flip/flag": True})
    with pytest.raises(ValueError, match="uint8"):
        _render(pol, img.astype(np.float32), {"rrc/box": np.array([0, 0, 5, 5], np.uint16), "flip/flag": True})
    gray = img[:, :, 0]  # 2-D grayscale is accepted as RGB: equal channels before normalising
    out = _render(pol, gray, {"rrc/box": np.array([0, 0, 5, 5], np.uint16), "flip/flag": False})
    assert torch.allclose(out[0] * 0.229 + 0.485, out[1] * 0.224 + 0.456, atol=1e-6)


# ------------------------------------------------------------------ policy plumbing


def test_to_json_round_trip():
    custom = Policy(
        (RandomResizedCrop(scale=(0.2, 0.9), ratio=(0.5, 2.0), name="crop"), HorizontalFlip(p=0.3),
         ColorJitter(0.1, 0.2, 0.3), SelfMix(p=0.7, paste_scale=(0.2, 0.3)), CutMix(alpha=0.5, p=0.8)),
        (40, 30), mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1), version=3,
    )
    for pol in [make_policy(n) for n in POLICY_NAMES] + [custom]:
        d = json.loads(json.dumps(pol.to_json()))
        back = Policy.from_json(d)
        assert back == pol and back.to_json() == d
        shapes = _shapes(6)
        p1, p2 = pol.sample(3, 1, np.arange(6), shapes, 6), back.sample(3, 1, np.arange(6), shapes, 6)
        assert all(np.array_equal(p1[k], p2[k]) for k in p1)
        imgs = _images(shapes)
        pimgs, prows = _partner_inputs(pol, p1, imgs)
        assert torch.equal(pol.render_batch(imgs, p1, pimgs, prows).x, back.render_batch(imgs, p2, pimgs, prows).x)
    assert custom.to_json()["ops"][0] == {
        "type": "RandomResizedCrop", "config": {"scale": [0.2, 0.9], "ratio": [0.5, 2.0], "name": "crop"}}
    bad = custom.to_json()
    bad["ops"][1]["type"] = "Rotate"
    with pytest.raises(ValueError, match="Rotate"):
        Policy.from_json(bad)
    with pytest.raises(ValueError, match="render_version"):
        Policy.from_json(dict(custom.to_json(), render_version=A.RENDER_VERSION + 1))
    with pytest.raises(ValueError, match="recorded with render_version 2; this code renders version 3"):
        Policy.from_json(dict(custom.to_json(), render_version=2))  # horizontal-pass-first kernels


def test_policy_validation():
    with pytest.raises(ValueError, match="unique"):
        Policy((RandomResizedCrop(), HorizontalFlip(), HorizontalFlip()), (8, 8))
    with pytest.raises(ValueError, match="geometry"):
        Policy((HorizontalFlip(),), (8, 8))
    with pytest.raises(ValueError, match="geometry"):
        Policy((Resize(), RandomResizedCrop()), (8, 8))
    with pytest.raises(ValueError, match="last"):
        Policy((RandomResizedCrop(), CutMix(), HorizontalFlip()), (8, 8))
    with pytest.raises(ValueError, match="mixing"):
        Policy((RandomResizedCrop(), MixUp(), CutMix()), (8, 8))
    with pytest.raises(ValueError, match="after"):
        Policy((SelfMix(), RandomResizedCrop()), (8, 8))
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="alpha"):
        CutMix(alpha=0)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("autoaugment")


def test_make_policy_contents():
    names = {n: [op.name for op in make_policy(n).ops] for n in POLICY_NAMES}
    assert names == {
        "none": ["resize"], "crop-flip": ["rrc", "flip"], "crop-flip-jitter": ["rrc", "flip", "jitter"],
        "cutmix": ["rrc", "flip", "cutmix"], "mixup": ["rrc", "flip", "mixup"], "selfmix": ["rrc", "flip", "selfmix"],
    }
    ev = eval_policy((16, 16))
    assert ev == make_policy("none", (16, 16)) and ev.param_spec() == {}
    assert ev.mean == A.IMAGENET_MEAN and ev.std == A.IMAGENET_STD
    assert make_policy("crop-flip").param_spec() == {"rrc/box": ("uint16", (4,)), "flip/flag": ("bool", ())}
    assert ev.partners({}, n=3).tolist() == [-1, -1, -1]


# ---------------------------------------------------------------- open ops (user-registered)

def test_register_op_refuses_a_taken_name_and_non_ops():
    from labelstore.pipeline.augment import register_op

    with pytest.raises(TypeError, match="Op subclass"):
        register_op(int)

    @dataclass(frozen=True)
    class HorizontalFlip(Op):  # same name as the built-in
        name: str = "hf2"

    with pytest.raises(ValueError, match="already registered"):
        register_op(HorizontalFlip)


def test_to_input_normalises_and_blends_uint8_views():
    from labelstore.pipeline.augment import Views

    g = torch.Generator().manual_seed(0)
    v = torch.randint(0, 256, (2, 3, 4, 5), generator=g, dtype=torch.uint8)
    p = torch.randint(0, 256, (2, 3, 4, 5), generator=g, dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    pol = Policy((Resize(),), (4, 5), mean, std)
    plain = pol.to_input(Views(v), "cpu")
    assert plain.dtype == torch.float32
    torch.testing.assert_close(plain, (v.double() / 255 - m.double()).div(s.double()).float())
    lam = torch.tensor([0.25, 1.0])
    mixed = pol.to_input(Views(v, p, lam), "cpu")
    want = (lam.view(-1, 1, 1, 1) * v / 255 + (1 - lam.view(-1, 1, 1, 1)) * p / 255 - m) / s
    torch.testing.assert_close(mixed, want)
    torch.testing.assert_close(mixed[1], plain[1])  # lam 1: the partner does not count


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_unmix_drops_only_the_given_partners(name):
    """Policy.unmix (teacher: a partner it could not decode; replay: skipped[partner]) sets exactly those partners
    to -1, keeps every other param and every dtype, and the view's own weight becomes 1 there."""
    pol = make_policy(name, (16, 16))
    n = 200
    p = pol.sample(3, 1, np.arange(n), _shapes(n), n)
    drop = np.zeros(n, bool)
    drop[::3] = True
    q = pol.unmix(p, drop)
    assert q.keys() == p.keys() and all(q[k].dtype == p[k].dtype for k in p)
    before, after = pol.partners(p, n), pol.partners(q, n)
    np.testing.assert_array_equal(after[~drop], before[~drop])
    np.testing.assert_array_equal(after[drop], -1)
    np.testing.assert_array_equal(pol.mix_weight_array(q, n)[drop], 1.0)
    for k in p:
        if not k.endswith("/partner"):
            np.testing.assert_array_equal(q[k], p[k])
    if name in ("cutmix", "mixup"):
        assert (before[drop] >= 0).any()  # something was dropped
    assert pol.to_json()["sample_version"] == A.SAMPLE_VERSION


# Policy.sample's draws are part of the store format for stores with derived parameters: a change to
# pipeline/rng.py or to an op's sample must bump SAMPLE_VERSION (and re-pin these).
PINNED_DRAWS = {  # SAMPLE_VERSION 1: sha256 (first 16 hex) over sorted (key, param bytes)
    "none": "e3b0c44298fc1c14", "crop-flip": "1ccb00af1b0a8f0f", "crop-flip-jitter": "b94d7c4609da1ea4",
    "cutmix": "5ae4a565c68f83b7", "mixup": "b5e2a1c1bba408bc", "selfmix": "7c6a67e9cd173fe8",
}


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_sample_draws_are_pinned_to_the_sample_version(name):
    import hashlib

    assert A.SAMPLE_VERSION == 1
    pol = make_policy(name, (224, 224))
    n = 1000
    hw = np.stack([150 + np.arange(n) % 651, 800 - np.arange(n) % 577], 1)
    p = pol.sample(12345, 7, np.arange(n) * 37, hw, 40000)
    h = hashlib.sha256()
    for k in sorted(p):
        h.update(k.encode())
        h.update(np.ascontiguousarray(p[k]).tobytes())
    assert h.hexdigest()[:16] == PINNED_DRAWS[name]
