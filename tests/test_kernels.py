"""uint8 view kernels: golden digests, a pure-numpy reference of the same integer formulas,
and the same bytes for any batch size and numba thread count."""

from pathlib import Path

import numba
import numpy as np
import pytest
from PIL import Image

from labelstore.integrity import view_digest
from labelstore.pipeline import kernels as K

GOLDEN = Path(__file__).parent / "golden"


def _img(name: str) -> np.ndarray:
    return np.asarray(Image.open(GOLDEN / name).convert("RGB"), dtype=np.uint8)


# ---------------------------------------------------------------- reference (python ints / numpy)


def ref_weights(n_in: int, n_out: int) -> np.ndarray:
    """Dense [n_out, n_in] weights from the module docstring's formula."""
    D = 2 * max(n_in, n_out)
    W = np.zeros((n_out, n_in), np.int64)
    for i in range(n_out):
        r = [max(0, D - abs((2 * j + 1) * n_out - (2 * i + 1) * n_in)) for j in range(n_in)]
        s = sum(r)
        w = [v * 2**14 // s for v in r]
        w[int(np.argmax(w))] += 2**14 - sum(w)
        W[i] = w
    return W


def ref_crop_resize(src, box, out_size, flip):
    y, x, h, w = box
    c = src[y : y + h, x : x + w].astype(np.int64)  # [h, w, 3]
    t = (np.einsum("oj,hjc->hoc", ref_weights(w, out_size[1]), c) + 2**13) >> 14
    v = (np.einsum("oh,hxc->oxc", ref_weights(h, out_size[0]), t) + 2**13) >> 14
    v = v[:, ::-1] if flip else v
    return np.ascontiguousarray(v.transpose(2, 0, 1)).astype(np.uint8)


def ref_jitter(v, fb, fc, fs):
    p = np.clip((v.astype(np.int64) * fb + 128) >> 8, 0, 255)
    m = int((77 * p[0] + 150 * p[1] + 29 * p[2]).sum()) // (256 * p.shape[1] * p.shape[2])
    p = np.clip(m + (((p - m) * fc + 128) >> 8), 0, 255)
    g = (77 * p[0] + 150 * p[1] + 29 * p[2] + 128) >> 8
    return np.clip(g + (((p - g) * fs + 128) >> 8), 0, 255).astype(np.uint8)


CASES = [  # (image, box (y, x, h, w), out size, flip)
    ("pattern.png", (0, 0, 96, 128), (32, 32), False),  # downscale, both axes
    ("pattern.png", (10, 7, 50, 33), (64, 48), True),  # upscale + flip
    ("pattern.png", (5, 9, 80, 20), (24, 40), False),  # down on one axis, up on the other
    ("python.png", (0, 0, 16, 16), (40, 40), True),
    ("python.png", (3, 2, 1, 1), (5, 7), False),  # a single source pixel
]


@pytest.mark.parametrize("name,box,size,flip", CASES)
def test_kernel_equals_numpy_reference(name, box, size, flip):
    src = _img(name)
    np.testing.assert_array_equal(K.crop_resize(src, box, size, flip), ref_crop_resize(src, box, size, flip))


@pytest.mark.parametrize("n_in,n_out", [(500, 224), (224, 224), (17, 224), (1, 3), (375, 7)])
def test_weights_sum_to_one_and_match_reference(n_in, n_out):
    start, w = K.axis_weights(n_in, n_out)
    assert (w.sum(1) == 2**14).all() and (w >= 0).all()
    dense = np.zeros((n_out, n_in), np.int64)
    for i in range(n_out):
        dense[i, start[i] : start[i] + w.shape[1]] = w[i]
    np.testing.assert_array_equal(dense, ref_weights(n_in, n_out))


def test_identity_size_copies_pixels():
    src = _img("pattern.png")
    np.testing.assert_array_equal(K.crop_resize(src, (0, 0, 96, 128), (96, 128)), src.transpose(2, 0, 1))


def test_jitter_equals_reference():
    v = K.crop_resize(_img("pattern.png"), (0, 0, 96, 128), (24, 32))
    for fb, fc, fs in [(256, 256, 256), (330, 180, 0), (150, 400, 350)]:
        got = v.copy()
        K.jitter_(got, fb, fc, fs)
        np.testing.assert_array_equal(got, ref_jitter(v, fb, fc, fs))
    same = v.copy()
    K.jitter_(same, 256, 256, 256)
    np.testing.assert_array_equal(same, v)  # factor 1.0 (Q8 256) is the identity


def test_paste_copies_box_only():
    a = K.crop_resize(_img("pattern.png"), (0, 0, 96, 128), (16, 16))
    b = K.crop_resize(_img("python.png"), (0, 0, 16, 16), (16, 16))
    got = a.copy()
    K.paste_(got, b, 2, 3, 5, 7)
    want = a.copy()
    want[:, 2:7, 3:10] = b[:, 2:7, 3:10]
    np.testing.assert_array_equal(got, want)


def test_batch_equals_single_for_any_thread_count():
    rng = np.random.default_rng(0)
    imgs = [_img("pattern.png"), _img("python.png")] * 4
    boxes = np.array([[rng.integers(0, 5), rng.integers(0, 5), 3 + i, 4 + i] for i in range(8)])  # inside 16x16
    flips = np.arange(8) % 3 == 0
    single = np.stack([K.crop_resize(im, b, (20, 24), f) for im, b, f in zip(imgs, boxes, flips)])
    before = numba.get_num_threads()
    try:
        for n in (1, 2):
            K.set_threads(n)
            np.testing.assert_array_equal(K.crop_resize_batch(imgs, boxes, flips, (20, 24)), single)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(K.crop_resize_batch(imgs[:1], boxes[:1], flips[:1], (20, 24)), single[:1])


def test_box_outside_source_is_refused():
    with pytest.raises(ValueError, match="not inside the 16x16 source"):
        K.crop_resize(_img("python.png"), (10, 0, 8, 8), (4, 4))


# Golden digests: crc32c of the uint8 views. Any change of pixel semantics changes one of these.
GOLDEN_DIGESTS = {0: 2553041108, 1: 1720764074, 2: 4088825152, 3: 1554020678, 4: 1445079397}


@pytest.mark.parametrize("i", range(len(CASES)))
def test_golden_digests(i):
    name, box, size, flip = CASES[i]
    v = K.crop_resize(_img(name), box, size, flip)
    if i == 0:
        K.jitter_(v, 300, 200, 330)
    assert int(view_digest(v)) == GOLDEN_DIGESTS[i]
