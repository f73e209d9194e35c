"""Golden views: checked-in PNGs + recorded parameter rows -> asserted uint8 view digests.

Any change of pixel semantics (kernels, op order, rounding) changes a digest and fails here;
such a change must bump RENDER_VERSION (pipeline/augment.py) and FORMAT_VERSION and re-record.
"""

from __future__ import annotations

import json
from pathlib import Path

import numba
import numpy as np
import pytest
from oracles import reference_resize
from PIL import Image

from labelstore.pipeline import kernels as K
from labelstore.pipeline.augment import POLICY_NAMES, RENDER_VERSION, make_policy

GOLDEN = Path(__file__).parent / "golden"
SIZE = (20, 24)
DIGESTS = {  # render version 3: crc32c of the uint8 views (MixUp: own + partner + lam bytes)
    "none": [3739903021, 2216086653, 812028767],
    "crop-flip": [466303210, 3285347303, 1692838410],
    "crop-flip-jitter": [4103936933, 739186989, 201119084],
    "cutmix": [3180814874, 1198014530, 2656646550],
    "mixup": [2706229345, 531136832, 4244508415],
    "selfmix": [3465941503, 3837387063, 1692838410],
}


def _images():
    return [np.asarray(Image.open(GOLDEN / f"g{k}.png").convert("RGB")) for k in range(3)]


def _render(name, rows=None):
    pol = make_policy(name, SIZE)
    imgs = _images()
    p = {k: np.asarray(v, dtype=np.dtype(pol.param_spec()[k][0]))
         for k, v in json.loads((GOLDEN / "params.json").read_text())[name].items()}
    q = pol.partners(p, len(imgs))
    prows = {k: v[np.maximum(q, 0)] for k, v in p.items()}
    return pol.render_batch(imgs, p, [imgs[j] if j >= 0 else None for j in q], prows)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_golden_digests(name):
    assert RENDER_VERSION == 3
    assert _render(name).digests().tolist() == DIGESTS[name]


def test_same_bytes_for_any_thread_count_and_batch_size():
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = {n: _render(n).x for n in POLICY_NAMES}
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        assert all(np.array_equal(_render(n).x, one[n]) for n in POLICY_NAMES)
    finally:
        numba.set_num_threads(threads)
    pol, imgs = make_policy("crop-flip", SIZE), _images()
    p = pol.sample(7, 1, np.arange(3), np.array([i.shape[:2] for i in imgs]), 3)
    batch = pol.render_batch(imgs, p).x.numpy()
    for i in range(3):
        np.testing.assert_array_equal(pol.render_batch([imgs[i]], {k: v[i : i + 1] for k, v in p.items()}).x[0], batch[i])


def test_crop_flip_view_is_the_reference_resize():
    imgs = _images()
    p = {k: np.asarray(v) for k, v in json.loads((GOLDEN / "params.json").read_text())["crop-flip"].items()}
    x = _render("crop-flip").x.numpy()
    for i in range(3):
        ref = reference_resize(imgs[i], tuple(int(v) for v in p["rrc/box"][i]), SIZE)
        np.testing.assert_array_equal(x[i], ref[:, :, ::-1] if p["flip/flag"][i] else ref)
