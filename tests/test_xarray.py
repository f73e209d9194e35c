"""xarray over a store: to_xarray() coordinates and JSON attributes; plain xr.open_zarr opens cleanly."""

from __future__ import annotations

import json
import warnings

import numpy as np
import xarray as xr
import zarr

import labelstore
from conftest import teach_store


def test_to_xarray_coordinates_and_json_attributes(base_store, source):
    store = labelstore.open(base_store)
    ds = store.to_xarray()
    assert list(ds["class"].values) == source.classes  # topk_indices index the class coordinate
    assert ds["sample_id"].dims == ("sample",) and list(ds["sample_id"].values) == list(source.ids)
    np.testing.assert_array_equal(ds["gt"].values, source.labels)
    assert "gt" in ds.coords and "sample_id" in ds.coords and "gt" not in ds.data_vars
    top1 = ds["topk_indices"].isel(epoch=0, k=0).values
    names = ds["class"].values[top1]  # class names of the teacher's top-1, by coordinate lookup
    assert names[0] == source.classes[int(store.read(0, [0])["topk_indices"][0, 0])]
    assert json.loads(ds.attrs["teacher"]) == store.attrs["teacher"]
    assert json.loads(ds.attrs["classes"]) == source.classes
    assert ds.attrs["state"] == "complete" and ds.attrs["epochs"] == store.epochs
    assert all(isinstance(v, (str, int, float, bool)) for v in ds.attrs.values())
    np.testing.assert_array_equal(ds["topk_values"].isel(epoch=1).values, store.read(1)["topk_values"])


def test_plain_open_zarr_has_no_warnings_and_no_bookkeeping_as_data(base_store):
    assert "consolidated_metadata" in json.loads((base_store / "zarr.json").read_text())  # consolidated at finalize
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (e.g. "consolidated metadata not found") fails the test
        ds = xr.open_zarr(base_store)
        ds.load()
    assert "progress" not in ds.data_vars and "progress" in ds.coords
    assert {"sample_id", "gt"} <= set(ds.coords)
    assert {"topk_values", "topk_indices", "gt_prob"} <= set(ds.data_vars)
    np.testing.assert_array_equal(ds["topk_values"].values, zarr.open_group(str(base_store))["topk_values"][:])


def test_every_array_in_to_xarray_lazily_and_in_open_datatree(tmp_path_factory, source, teacher):
    """to_xarray has every array of the store and reads no data to open (all dask, sample table too);
    xr.open_datatree(path, engine="zarr") is the one plain-xarray call that shows the aug/* subgroups
    (of a store written with --store-params: by default the parameters are derived, not stored)."""
    base_store = tmp_path_factory.mktemp("stored") / "labels.zarr"
    teach_store(base_store, source, teacher, store_params=True)
    store = labelstore.open(base_store)
    ds = store.to_xarray()
    assert {n.removeprefix("aug/") for n in store.arrays} <= set(ds.variables)
    assert any(n.startswith("aug/") for n in store.arrays)
    assert all(ds[v].chunks is not None for v in ds.data_vars) and ds["sample_id"].chunks and ds["gt"].chunks
    np.testing.assert_array_equal(ds["rrc/box"].isel(epoch=1).values, store.read(1)["rrc/box"])
    tree = xr.open_datatree(base_store, engine="zarr")
    shown = {f"{node.path.strip('/')}/{v}".lstrip("/") for node in tree.subtree for v in node.variables}
    assert set(store.arrays) <= shown
    np.testing.assert_array_equal(tree["aug/rrc/box"].values, zarr.open_group(str(base_store))["aug/rrc/box"][:])
