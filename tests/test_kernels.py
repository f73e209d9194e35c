"""The numba uint8 kernels compute exactly the integer formulas of their docstrings."""

import numpy as np
import pytest
from oracles import reference_jitter, reference_resize

from labelstore.pipeline import kernels as K


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("box,size", [((0, 0, 37, 50), (16, 16)), ((3, 5, 20, 9), (31, 24)),
                                      ((0, 0, 37, 50), (37, 50)), ((10, 2, 1, 1), (4, 3))])
def test_resize_matches_numpy_reference(box, size):
    src = _img(40, 60)
    out = np.zeros((1, 3, *size), np.uint8)
    prog = np.zeros((1, 2, K.OP_WIDTH), np.int64)
    prog[0, 0, :5] = (K.OP_RESIZE, *box)
    K.render_views([src], np.zeros(1, np.int64), prog, out)
    np.testing.assert_array_equal(out[0], reference_resize(src, box, size))


def test_identity_resize_is_a_copy_and_weights_sum_to_one():
    src = _img(12, 7)
    np.testing.assert_array_equal(reference_resize(src, (0, 0, 12, 7), (12, 7)), src.transpose(2, 0, 1))
    for n, o in [(500, 224), (7, 30), (1, 5), (375, 224)]:
        starts, w = K.filter_weights(n, o)
        assert (w.sum(1) == K.ONE).all() and (w >= 0).all() and starts.min() >= 0


@pytest.mark.parametrize("f", [(2048, 2048, 2048), (1400, 2600, 900), (2867, 1229, 0), (2048, 2800, 2048)])
def test_jitter_matches_numpy_reference(f):
    view = np.ascontiguousarray(_img(9, 13, 1).transpose(2, 0, 1))
    got = view.copy()
    K.jitter_(got, *f)
    np.testing.assert_array_equal(got, reference_jitter(view, *f))
    if f == (2048, 2048, 2048):
        np.testing.assert_array_equal(got, view)


def test_flip_and_paste():
    v = np.ascontiguousarray(_img(5, 6, 2).transpose(2, 0, 1))
    got = v.copy()
    K.flip_(got)
    np.testing.assert_array_equal(got, v[:, :, ::-1])
    a, b = v[None].copy(), np.zeros_like(v[None])
    K.paste_boxes(a, b, np.array([[1, 2, 3, 2]], np.int64))
    exp = v.copy()
    exp[:, 1:4, 2:4] = 0
    np.testing.assert_array_equal(a[0], exp)
