"""Store layer + teacher stage through the Python API, on real images and real Zarr stores."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from conftest import (
    DEFAULT_CFG,
    N_TRAIN,
    NUM_CLASSES,
    assert_same_arrays,
    copy_dataset,
    corrupt_image,
    load_teacher,
    make_teacher_checkpoint,
    read_arrays,
    teach_store,
)

import labelstore
from labelstore.integrity import StoreError, StoreMismatch, verify_chunks, view_digest
from labelstore.pipeline.images import DecodeError, ImageFolder, make_shapes_dataset
from labelstore.pipeline.replay import ReplayLoader, check_data, replay_inputs, store_policy
from labelstore.errors import TeacherOutputError

DOC = Path(__file__).resolve().parents[1] / "docs" / "store-format.md"


# ----------------------------------------------------------------------------- the documented schema
def _doc_section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start : end if end > 0 else len(text)]


def _table_rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def documented_arrays() -> dict[str, dict]:
    out = {}
    for name, dims, shape, dtype, *_ in _table_rows(_doc_section("## Arrays (task `classification`)")):
        out[name.strip("`")] = {"dims": tuple(d.strip() for d in dims.strip("`").split(",")),
                                "shape": shape, "dtype": dtype}
    return out


def documented_attrs() -> list[str]:
    keys = []
    for row in _table_rows(_doc_section("## Group attributes")):
        keys += re.findall(r"`([a-z_]+)`", row[0])
    return keys


def _smallest(signed: bool, max_value: int) -> str:
    for bits in (8, 16, 32, 64):
        dt = np.dtype(f"{'int' if signed else 'uint'}{bits}")
        if np.iinfo(dt).max >= max_value:
            return dt.name
    raise AssertionError


def test_teach_store_matches_documented_format(base_store, source, teacher):
    store = labelstore.open(base_store)
    E, N, K, T, C = 3, N_TRAIN, 3, 2, NUM_CLASSES
    assert (store.epochs, store.num_samples, store.num_classes, store.top_k, store.mc_passes) == (E, N, C, K, T)
    assert store.complete and store.progress() == (3, 3)

    doc = documented_arrays()
    assert {"sample_id", "gt", "topk_values", "progress", "aug/rrc/box"} <= doc.keys()  # parsed the right table
    group = zarr.open_group(str(base_store), mode="r")
    from labelstore.integrity import iter_arrays

    arrays = dict(iter_arrays(group))
    expected = {n for n in doc if not n.startswith("aug/")}  # parameters derived: no aug/* arrays
    assert set(arrays) == expected
    sym = {"E": E, "N": N, "K": K, "T": T, "G": 1, "P": 3}
    for name, arr in arrays.items():
        d = doc[name]
        assert tuple(arr.metadata.dimension_names) == d["dims"], name
        if name == "manifest_all":  # one row of JSON bytes: its length is the record's
            assert arr.dtype == np.dtype("uint8") and arr.chunks == arr.shape
            continue
        shape = tuple(int(v) if v.isdigit() else sym[v] for v in (s.strip() for s in d["shape"].split("×")))
        assert arr.shape == shape, name
        fixed = re.fullmatch(r"`(\w+)`", d["dtype"])
        if fixed:
            assert arr.dtype == np.dtype(fixed.group(1)), (name, arr.dtype, d["dtype"])
        elif d["dtype"] == "string":
            assert arr.dtype.kind in "OTU", (name, arr.dtype)
        elif d["dtype"].startswith("smallest signed int"):
            assert arr.dtype == np.dtype(_smallest(True, C - 1)) == np.dtype("int8"), name
        elif d["dtype"].startswith("smallest unsigned int"):
            assert arr.dtype == np.dtype(_smallest(False, C - 1)) == np.dtype("uint8"), name
        else:
            pytest.fail(f"undocumented dtype form {d['dtype']!r} for {name}")
        if arr.metadata.dimension_names[0] == "epoch" and name not in ("progress", "manifest", "manifest_all"):
            assert arr.chunks[:2] == (1, 8) and arr.shards[:2] == (1, 16), name
        elif name not in ("progress", "manifest", "manifest_all"):
            assert arr.chunks[0] == 8 and arr.shards[0] == 16, name
    assert group["progress"].chunks == (1, 1) and group["progress"].shards is None  # (G, 1), G = 1 here
    assert group["manifest"].chunks == (1, 1) and group["manifest"].shards is None

    attrs = store.attrs
    keys = documented_attrs()
    assert {"format", "format_version", "teacher", "layout", "state", "completed"} <= set(keys)
    missing = [k for k in keys if k not in attrs]
    assert not missing, missing
    assert attrs["format"] == "labelstore" and attrs["format_version"] == 3 and attrs["state"] == "complete"
    assert attrs["aug_params"] == "derived" and attrs["policy"]["sample_version"] == 1
    assert attrs["task"] == "classification" and attrs["classes"] == source.classes
    assert attrs["teacher"]["weights_sha256"] == teacher[1]["weights_sha256"]
    assert {"kind", "num_samples", "digest", "root"} <= attrs["dataset"].keys()
    assert attrs["dataset"]["digest"] == source.fingerprint()["digest"]
    assert {"ops", "output_size", "mean", "std", "version", "digest"} <= attrs["policy"].keys()
    assert attrs["layout"] == {"chunk_rows": 8, "shard_rows": 16, "epoch_groups": 1, "partitions": 3,
                               "epochs_per_group": 3}

    # contents: sample table, labels, sane probabilities, recorded source sizes
    assert store.ids.tolist() == source.ids
    assert group["gt"][:].tolist() == source.labels.tolist()
    assert group["source_hw"][:].tolist() == [list(source.src_shape(i)) for i in range(N)]
    assert not group["skipped"][:].any()
    vals = group["topk_values"][:].astype(np.float32)
    assert (np.diff(vals, axis=-1) <= 0).all() and (vals > 0).all() and (vals.sum(-1) <= 1.001 + 2.0**-7).all()
    for name in ("topk_values", "gt_prob", "mc_values"):  # 6 of 10 mantissa bits kept: the low 4 bits are 0
        assert group[name].attrs["mantissa_bits"] == 6
        assert not (group[name][:].view(np.uint16) & 0xF).any(), name
    assert group["view_digest"].dtype == np.uint16
    assert not (group["mc_values"][:] == vals[:, :, None, :]).all()  # dropout passes differ from the eval pass

    # read() in the given order, and the Zarr arrays through dask directly
    rec = store.read(1, [5, 0, 47, 5])
    assert rec["index"].tolist() == [5, 0, 47, 5]
    np.testing.assert_array_equal(rec["topk_values"], group["topk_values"][1][[5, 0, 47, 5]])
    assert rec["rrc/box"].dtype == np.uint16 and rec["rrc/box"].shape == (4, 4)  # derived, in storage dtypes
    np.testing.assert_array_equal(rec["rrc/box"][0], rec["rrc/box"][3])
    assert rec["flip/flag"].dtype == bool and rec["jitter/factors"].dtype == np.float16
    d = da.from_zarr(str(base_store), component="topk_values")
    assert d.shape == (E, N, K)
    np.testing.assert_array_equal(d[2].compute(), store.read(2)["topk_values"])
    arrays_dask = store.to_dask()
    np.testing.assert_array_equal(np.asarray(arrays_dask["gt_prob"]), group["gt_prob"][:])
    ds = store.to_xarray()
    assert tuple(ds["topk_values"].dims) == ("epoch", "sample", "k")
    assert store.bytes_per_view() > 0


# ----------------------------------------------------------------------------- determinism
def test_parameters_do_not_depend_on_batch_size_or_workers(tmp_path, source, teacher, base_store):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    teach_store(a, source, teacher, batch_size=4, decode_workers=1, store_params=True)
    teach_store(b, source, teacher, batch_size=32, decode_workers=3, store_params=True)
    A, B = read_arrays(a), read_arrays(b)
    aug = [n for n in A if n.startswith("aug/")]
    assert len(aug) == 3
    assert_same_arrays(A, B, names=aug + ["view_digest", "topk_indices", "gt", "sample_id", "source_hw"])
    np.testing.assert_allclose(A["topk_values"].astype(np.float32), B["topk_values"].astype(np.float32), atol=1e-3)
    # and the reference store (batch 8, parameters derived, not stored) agrees on views and parameters
    R = read_arrays(base_store)
    assert not [n for n in R if n.startswith("aug/")]
    assert_same_arrays({n: A[n] for n in R}, R, names=["view_digest", "topk_indices"])
    ref = labelstore.open(base_store)
    for e in range(ref.epochs):
        rec = ref.read(e)
        for name in aug:
            np.testing.assert_array_equal(rec[name.removeprefix("aug/")], A[name][e], err_msg=name)
            assert rec[name.removeprefix("aug/")].dtype == A[name].dtype, name


def test_mixing_policies_render_on_several_threads(tmp_path, source, teacher):
    """CutMix / SelfMix views rendered by several decode-pool threads at once (numba's workqueue
    layer aborts the process on concurrent parallel launches): the same store as with one worker."""
    for policy in ("cutmix", "selfmix"):
        a, b = tmp_path / f"{policy}1.zarr", tmp_path / f"{policy}4.zarr"
        teach_store(a, source, teacher, policy=policy, batch_size=2, decode_workers=1, mc_passes=0)
        teach_store(b, source, teacher, policy=policy, batch_size=2, decode_workers=4, mc_passes=0)
        assert_same_arrays(a, b)


def test_resume_equals_uninterrupted(tmp_path, source, teacher, base_store):
    out = tmp_path / "r.zarr"
    stats = teach_store(out, source, teacher, rank=0, world_size=2)  # units 0 and 2 of 3
    assert not stats["complete"] and stats["units"] == 2
    half = labelstore.open(out, allow_incomplete=True)
    assert half.group["progress"][:].tolist() == [[1, 0, 1]]
    assert half.attrs["state"] == "running"
    stats = teach_store(out, source, teacher, resume=True)
    assert stats["complete"] and stats["units"] == 1
    assert labelstore.open(out).complete
    assert_same_arrays(out, base_store)


def test_views_per_decode_groups_resume(tmp_path, source, teacher):
    """Epoch groups: V=1 -> 3 x 3 units; a half-done store resumed equals an uninterrupted one."""
    full, part = tmp_path / "full.zarr", tmp_path / "part.zarr"
    teach_store(full, source, teacher, views_per_decode=1)
    assert read_arrays(full)["progress"].shape == (3, 3)
    teach_store(part, source, teacher, views_per_decode=1, rank=1, world_size=2)
    assert read_arrays(part)["progress"].tolist() == [[0, 1, 0]] * 3
    teach_store(part, source, teacher, views_per_decode=1, resume=True)
    assert_same_arrays(full, part)


# ----------------------------------------------------------------------------- reads touch one epoch
class RecordingStore(zarr.storage.WrapperStore):
    """A LocalStore wrapper that records every key read."""

    def __init__(self, store):
        super().__init__(store)
        self.keys: list[str] = []

    async def get(self, key, prototype, byte_range=None):
        self.keys.append(key)
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        self.keys += [k for k, _ in key_ranges]
        return await self._store.get_partial_values(prototype, key_ranges)

    async def _get_many(self, requests):
        requests = list(requests)
        self.keys += [k for k, *_ in requests]
        async for r in self._store._get_many(requests):
            yield r


def test_read_of_one_epoch_touches_only_that_epoch(base_store):
    rec_store = RecordingStore(zarr.storage.LocalStore(str(base_store), read_only=True))
    store = labelstore.open(rec_store)
    per_epoch = set(store.epoch_arrays())
    rows = set(store.row_arrays())
    rec_store.keys.clear()
    rec = store.read(1, [1, 3, 9], include_rows=False)
    data_keys = [k for k in rec_store.keys if not k.endswith("zarr.json")]
    assert data_keys, rec_store.keys
    touched = set()
    for k in data_keys:
        if k.startswith("source_hw/"):  # derived augmentation parameters: the rows' source sizes, shard 0
            assert re.fullmatch(r"source_hw/c/0/0", k), k
            continue
        m = re.fullmatch(r"(.+)/c/(\d+)/(\d+)(/\d+)*", k)
        assert m, k
        assert m.group(1) in per_epoch and m.group(2) == "1" and m.group(3) == "0", k  # epoch 1, first shard
        touched.add(m.group(1))
    assert touched == per_epoch
    # the values came from the right place
    direct = zarr.open_group(str(base_store), mode="r")
    np.testing.assert_array_equal(rec["topk_values"], direct["topk_values"][1, [1, 3, 9]])

    rec_store.keys.clear()
    store.read(2, [40, 33], include_rows=True)
    for k in (k for k in rec_store.keys if not k.endswith("zarr.json")):
        name, rest = k.split("/c/")
        if name in per_epoch:
            assert rest.startswith("2/2"), k
        else:
            assert name in rows and rest.startswith("2"), k  # row arrays: shard 2 (rows 32..47)


# ----------------------------------------------------------------------------- bad input
def _bad_image(folder: Path, source: ImageFolder, row: int) -> Path:
    """Garbage into a PNG at `row` of the folder's listing (same listing as `source`)."""
    rel = source.ids[row]
    if not rel.endswith(".png"):
        rel = next(r for r in source.ids[row:] if r.endswith(".png"))
    return folder / rel


def test_unreadable_image_then_resume_after_fix(tmp_path, shapes_dir, source, teacher, base_store):
    data = copy_dataset(shapes_dir, tmp_path / "data")
    src = ImageFolder(data)
    bad = _bad_image(data, src, 36)  # third partition (rows 32..47)
    row = src.ids.index(bad.relative_to(data).as_posix())
    assert row >= 32
    original = corrupt_image(bad)
    out = tmp_path / "s.zarr"
    with pytest.raises(DecodeError) as ei:
        teach_store(out, src, teacher)
    assert bad.name in str(ei.value) and str(bad) in ei.value.path

    # the units before the error are flagged and hold their data; the failed one is not flagged
    with pytest.raises(StoreError, match="not finished"):
        labelstore.open(out)
    part = labelstore.open(out, allow_incomplete=True)
    assert part.group["progress"][:].tolist() == [[1, 1, 0]]
    assert part.progress() == (2, 3)
    got, want = read_arrays(out), read_arrays(base_store)
    per_epoch = set(part.epoch_arrays())
    for name, arr in want.items():
        if name in ("progress", "manifest", "manifest_all"):
            continue
        first = (slice(None), slice(0, 32)) if name in per_epoch else (slice(0, 32),)  # units 0 and 1
        assert_same_arrays({name: got[name][first]}, {name: arr[first]})

    # resume without fixing fails again; fixing the file (same size: same dataset digest) finishes it
    with pytest.raises(DecodeError):
        teach_store(out, src, teacher, resume=True)
    bad.write_bytes(original)
    stats = teach_store(out, src, teacher, resume=True)
    assert stats["complete"] and stats["units"] == 1
    assert_same_arrays(out, base_store)


def test_skip_bad_records_skipped(tmp_path, shapes_dir, teacher):
    data = copy_dataset(shapes_dir, tmp_path / "data")
    src = ImageFolder(data)
    bad = _bad_image(data, src, 10)
    row = src.ids.index(bad.relative_to(data).as_posix())
    corrupt_image(bad)
    out = tmp_path / "s.zarr"
    stats = teach_store(out, src, teacher, policy="cutmix", skip_bad=True)
    assert stats["complete"] and stats["views"] == (N_TRAIN - 1) * DEFAULT_CFG["epochs"]
    store = labelstore.open(out)
    # derived parameters: the skipped sample, drawn as someone's partner, is unmixed exactly as the teacher did
    stored = tmp_path / "stored.zarr"
    teach_store(stored, src, teacher, policy="cutmix", skip_bad=True, store_params=True)
    explicit, derived = read_arrays(stored), read_arrays(out)
    assert_same_arrays({n: explicit[n] for n in derived}, derived,
                       names=["view_digest", "topk_indices", "topk_values", "skipped"])
    drawn = [store_policy(store).sample(store.attrs["seed"], e, np.arange(N_TRAIN), explicit["source_hw"], N_TRAIN)["cutmix/partner"]
             for e in range(store.epochs)]
    assert any((d == row).any() for d in drawn)  # the unmixing path is exercised
    for e in range(store.epochs):
        rec = store.read(e)
        for name in ("cutmix/partner", "cutmix/box", "cutmix/lam", "rrc/box", "flip/flag"):
            np.testing.assert_array_equal(rec[name], explicit[f"aug/{name}"][e], err_msg=name)
    skipped = store.group["skipped"][:]
    assert skipped.tolist() == [i == row for i in range(N_TRAIN)]
    assert store.group["source_hw"][row].tolist() == [0, 0]
    assert (store.group["source_hw"][:][~skipped] > 0).all()
    # nobody is mixed with the skipped sample
    assert not any((store.read(e)["cutmix/partner"] == row).any() for e in range(store.epochs))
    loader = ReplayLoader(store, src, epoch=0, batch_size=16, shuffle=False)
    seen = np.concatenate([t["index"].numpy() for _, t in loader])
    assert sorted(seen.tolist()) == [i for i in range(N_TRAIN) if i != row]


class NaNForViews(torch.nn.Module):
    """The real teacher, but NaN logits for views whose input digest is in `bad_digests`."""

    def __init__(self, inner, bad_digests):
        super().__init__()
        self.inner, self.bad = inner, {int(d) for d in bad_digests}

    def forward(self, x):
        out = self.inner(x)
        mask = torch.tensor([int(view_digest(v)) in self.bad for v in x.detach().cpu().numpy()])
        return out.masked_fill(mask[:, None].to(out.device), float("nan"))


def test_nan_teacher_output_names_samples(tmp_path, source, teacher, base_store):
    model, info = teacher
    bad_rows = [9, 12]  # one batch of 8 (rows 8..15)
    x = replay_inputs(labelstore.open(base_store), source, 0, bad_rows)  # the teacher's float inputs
    wrapped = NaNForViews(model, [view_digest(v) for v in x.numpy()])
    with pytest.raises(TeacherOutputError) as ei:
        teach_store(tmp_path / "nan.zarr", source, (wrapped, info))
    msg = str(ei.value)
    assert "epoch 0" in msg and "[9, 12]" in msg and source.ids[9] in msg and source.ids[12] in msg
    assert not (tmp_path / "nan.zarr").exists()  # it failed before its first unit: the store it created is gone


def test_store_checked_against_another_dataset(tmp_path, base_store, source):
    train, _ = make_shapes_dataset(tmp_path / "other", n_train=N_TRAIN, n_test=2, seed=5, min_size=20, max_size=40)
    other = ImageFolder(train)
    store = labelstore.open(base_store)
    check_data(store, source)  # the right one passes
    with pytest.raises(StoreMismatch, match="dataset"):
        check_data(store, other)
    with pytest.raises(StoreMismatch, match="dataset"):
        ReplayLoader(store, other, epoch=0)
    with pytest.raises(StoreMismatch, match="dataset digest"):
        store.check(dataset={"digest": other.fingerprint()["digest"]})
    store.check(dataset={"digest": source.fingerprint()["digest"]})


def test_resume_with_or_without_stored_params_refused(tmp_path, base_store, source, teacher):
    copy = tmp_path / "c.zarr"
    shutil.copytree(base_store, copy)
    before = read_arrays(copy)
    with pytest.raises(StoreMismatch, match="cannot resume: store_params is False in the store, True now"):
        teach_store(copy, source, teacher, resume=True, store_params=True)
    assert_same_arrays(before, copy)


def test_resume_with_another_teacher_refused(tmp_path, source, teacher):
    out = tmp_path / "s.zarr"
    teach_store(out, source, teacher, rank=0, world_size=2)
    other = load_teacher(make_teacher_checkpoint(tmp_path / "other.pt", seed=1))
    assert other[1]["weights_sha256"] != teacher[1]["weights_sha256"]
    before = read_arrays(out)
    with pytest.raises(StoreMismatch, match="teacher") as ei:
        teach_store(out, source, other, resume=True)
    assert "weights_sha256" in str(ei.value)
    assert_same_arrays(out, before)  # nothing written
    with pytest.raises(StoreMismatch, match="teacher weights_sha256"):
        labelstore.open(out, allow_incomplete=True).check(teacher={"weights_sha256": other[1]["weights_sha256"]})
    # and resuming with another configuration is refused as well
    with pytest.raises(StoreMismatch, match="top_k"):
        teach_store(out, source, teacher, resume=True, top_k=4)
    with pytest.raises(StoreError, match="exists"):
        teach_store(out, source, teacher)


def test_other_format_version_refused(tmp_path, base_store):
    copy = tmp_path / "v2.zarr"
    shutil.copytree(base_store, copy)
    zarr.open_group(str(copy), mode="r+").attrs["format_version"] = 2  # stored params, 32-bit digests, render version 2
    with pytest.raises(StoreMismatch, match=r"v2.zarr: store format version 2, this labelstore reads version 3"):
        labelstore.open(copy)
    with pytest.raises(StoreMismatch, match="version"):
        labelstore.open(copy, allow_incomplete=True)
    zarr.open_group(str(copy), mode="r+").attrs["format"] = "something-else"
    with pytest.raises(StoreError, match="not a labelstore"):
        labelstore.open(copy)
    with pytest.raises(StoreError, match="no label store"):
        labelstore.open(tmp_path / "missing.zarr")


def test_unfinished_store_refused_unless_allowed(tmp_path, source, teacher):
    out = tmp_path / "s.zarr"
    teach_store(out, source, teacher, rank=1, world_size=2)
    with pytest.raises(StoreError, match="has not finished") as ei:
        labelstore.open(out)
    assert "1/3" in str(ei.value)
    store = labelstore.open(out, allow_incomplete=True)
    assert not store.complete and store.progress() == (1, 3)
    rec = store.read(0, [16, 17])  # the written unit is readable
    assert (rec["topk_values"] > 0).all()


# ----------------------------------------------------------------------------- corruption
def test_verify_chunks_finds_flipped_byte_and_truncated_shard(tmp_path, base_store):
    copy = tmp_path / "c.zarr"
    shutil.copytree(base_store, copy)
    assert verify_chunks(zarr.open_group(str(copy), mode="r")) == []

    flipped = copy / "topk_values" / "c" / "1" / "0" / "0"
    raw = bytearray(flipped.read_bytes())
    raw[len(raw) // 3] ^= 0x40  # inside the first inner chunk's payload
    flipped.write_bytes(bytes(raw))
    truncated = copy / "gt_prob" / "c" / "2" / "1"
    raw = truncated.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])

    problems = verify_chunks(zarr.open_group(str(copy), mode="r"))
    assert len(problems) == 2, problems
    assert problems[0].startswith("gt_prob[2:3, 16:32]"), problems
    assert problems[1].startswith("topk_values[1:2, 0:16"), problems

    store = labelstore.open(copy)
    with pytest.raises(StoreError, match="cannot read topk_values epoch 1"):
        store.read(1, [0, 1])
    with pytest.raises(StoreError, match="cannot read gt_prob epoch 2"):
        store.read_array("gt_prob", epoch=2, indices=[20])
    # other epochs / shards are still readable
    np.testing.assert_array_equal(store.read(0)["topk_values"], read_arrays(base_store)["topk_values"][0])


# ----------------------------------------------------------------------------- configuration
def test_impossible_config_refused_before_writing(tmp_path, source, teacher):
    from labelstore.errors import ConfigError

    out = tmp_path / "s.zarr"
    with pytest.raises(ConfigError, match="top_k"):
        teach_store(out, source, teacher, top_k=NUM_CLASSES + 1)
    with pytest.raises(ConfigError, match="multiple of chunk_rows"):
        teach_store(out, source, teacher, shard_rows=12, chunk_rows=8)
    assert not out.exists()


def test_dataset_smaller_than_a_shard_and_not_a_multiple_of_the_chunk(tmp_path, source, teacher):
    out = tmp_path / "s.zarr"
    teach_store(out, source, teacher, shard_rows=64, chunk_rows=32, epochs=1, mc_passes=0)  # N=48 < 64
    store = labelstore.open(out)
    assert store.complete and store.read(0)["topk_values"].shape == (N_TRAIN, 3)


def test_bad_partner_image_then_resume_after_fix_with_mixing(tmp_path, shapes_dir, teacher):
    """A bad image that is some earlier unit's cutmix partner: stopping (no skip_bad) and resuming after the
    fix must still give the uninterrupted store (the earlier unit must not silently drop the partner)."""
    data = copy_dataset(shapes_dir, tmp_path / "data")
    src = ImageFolder(data)
    ref = tmp_path / "ref.zarr"
    teach_store(ref, src, teacher, policy="cutmix")
    partners = np.stack([labelstore.open(ref).read(e)["cutmix/partner"] for e in range(3)])  # [E, N], derived
    # a PNG of the last partition that is a partner of a row of the first partition
    bad_row = next(int(q) for q in partners[:, :16].ravel() if q >= 32 and src.ids[q].endswith(".png"))
    original = corrupt_image(data / src.ids[bad_row])
    out = tmp_path / "s.zarr"
    with pytest.raises(DecodeError, match=src.ids[bad_row].split("/")[-1]):
        teach_store(out, src, teacher, policy="cutmix")
    (data / src.ids[bad_row]).write_bytes(original)
    teach_store(out, src, teacher, policy="cutmix", resume=True)
    assert_same_arrays(out, ref)
