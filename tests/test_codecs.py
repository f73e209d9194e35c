"""The store's codecs (issue 18): exact where exact, the stated bound where lossy; on real Zarr stores."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from labelstore import schema, writer
from labelstore.pipeline import classification_store
from labelstore.integrity import view_check


def _all_float16() -> np.ndarray:
    """Every float16 bit pattern (NaNs, infinities, subnormals, both signs)."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)


@pytest.mark.parametrize("bits", [1, 4, 6, 9, 10])
def test_round_mantissa_bound_on_every_float16(bits):
    x = _all_float16()
    with np.errstate(invalid="ignore", over="ignore"):
        y = schema.round_mantissa(x, bits)
        fin = np.isfinite(x)
        np.testing.assert_array_equal(y[~fin].view(np.uint16), x[~fin].view(np.uint16))  # NaN / inf unchanged
        xf, yf = x[fin].astype(np.float64), y[fin].astype(np.float64)
        big = np.abs(xf) <= 65504 * (1 - 2.0 ** -(bits + 1))  # no carry past the largest float16
        err = np.abs(yf - xf)[big]
        bound = 2.0 ** -(bits + 1) * np.maximum(np.abs(xf[big]), 2.0**-14)
        assert (err <= bound).all(), float((err / bound).max())
        assert err.max() > 0 or bits == 10  # the bound is approached, not vacuous
        assert (err >= bound * 0.999).any() or bits == 10
        assert not (y[fin].view(np.uint16) & ((1 << (10 - bits)) - 1)).any()  # the dropped bits are zero
        np.testing.assert_array_equal(schema.round_mantissa(y, bits).view(np.uint16), y.view(np.uint16))  # idempotent
        assert ((np.sign(yf) == np.sign(xf)) | (yf == 0)).all()


def test_round_mantissa_keeps_order_and_nan():
    p = np.sort(np.random.default_rng(0).random(10_000).astype(np.float16))
    q = schema.round_mantissa(p, classification_store.PROB_MANTISSA_BITS)
    assert (np.diff(q.astype(np.float32)) >= 0).all()  # monotone: a descending top-k stays non-increasing
    assert np.isnan(schema.round_mantissa(np.array([np.nan], np.float16), 6)).all()


def _store(tmp_path, specs):
    return writer.create(str(tmp_path / "c.zarr"), specs, {"task": "classification"}, chunk_rows=64, shard_rows=128,
                         epoch_groups=1)


def test_codec_recipes_round_trip_through_zarr(tmp_path):
    """ids (transpose + zstd) and default: bit-exact; probs: within 2^-7 max(p, 2^-14) of the float16 written."""
    E, N, K, C = 2, 300, 5, 1000
    specs = classification_store.classification_arrays(num_samples=N, epochs=E, num_classes=C, top_k=K, mc_passes=2,
                                                       aug_spec={"rrc/box": ("uint16", (4,))})
    by = {s.name: s for s in specs}
    assert (by["topk_indices"].codec, by["topk_values"].codec, by["gt_prob"].codec) == ("ids", "probs", "probs")
    group = _store(tmp_path, specs)
    g = np.random.default_rng(1)
    ids = g.integers(0, C, (E, N, K)).astype(np.uint16)
    vals = np.sort(g.dirichlet(np.full(C, 0.05), (E, N))[..., :K], -1)[..., ::-1].astype(np.float16)
    gp = g.random((E, N)).astype(np.float16)
    gp[:, ::7] = np.nan  # unlabeled
    mc = g.random((E, N, 2, K)).astype(np.float16)
    box = g.integers(0, 500, (E, N, 4)).astype(np.uint16)
    check = view_check(g.integers(0, 1 << 32, (E, N), dtype=np.uint64).astype(np.uint32))
    for e in range(E):
        for name, data in (("topk_indices", ids), ("topk_values", vals), ("gt_prob", gp), ("mc_values", mc),
                           ("aug/rrc/box", box), ("view_digest", check)):
            writer.write_block(group, name, 0, data[e], e)
    back = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    assert [type(c).__name__ for c in back["topk_indices"].filters] == ["TransposeCodec"]
    np.testing.assert_array_equal(back["topk_indices"][:], ids)
    np.testing.assert_array_equal(back["aug/rrc/box"][:], box)
    np.testing.assert_array_equal(back["view_digest"][:], check)
    assert back["view_digest"].dtype == np.uint16
    for name, data in (("topk_values", vals), ("gt_prob", gp), ("mc_values", mc)):
        got = back[name][:]
        assert got.dtype == np.float16 and back[name].attrs["mantissa_bits"] == classification_store.PROB_MANTISSA_BITS
        np.testing.assert_array_equal(np.isnan(got), np.isnan(data))
        x, y = data.astype(np.float64), got.astype(np.float64)
        ok = ~np.isnan(x)
        bound = 2.0 ** -(classification_store.PROB_MANTISSA_BITS + 1) * np.maximum(np.abs(x[ok]), 2.0**-14)
        assert (np.abs(y[ok] - x[ok]) <= bound).all(), name
        np.testing.assert_array_equal(got.view(np.uint16), schema.round_mantissa(data, classification_store.PROB_MANTISSA_BITS)
                                      .view(np.uint16))  # exactly the rounded values: the codecs are lossless


def test_view_check_is_the_low_16_bits():
    d = np.array([0, 0xFFFF, 0x10000, 0xDEADBEEF], np.uint32)
    np.testing.assert_array_equal(view_check(d), np.array([0, 0xFFFF, 0, 0xBEEF], np.uint16))
    assert view_check(d).dtype == np.uint16


def test_unknown_codec_recipe_refused():
    spec = schema.ArraySpec("x", ("sample",), (4,), "uint8", "x", codec="lz5")
    with pytest.raises(ValueError, match="unknown codec recipe 'lz5'"):
        writer.codecs_for(spec)
