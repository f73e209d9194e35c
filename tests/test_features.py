"""Teacher features in the store (`teach --features`): real stores on disk, real `labelstore` subprocesses.

Checks: teach --features + verify + resume through the CLI (a store left incomplete by a rank of two,
finished by --resume, equals the uninterrupted one byte for byte); the int8 and float16 codecs within
the bounds written out here (docs/store-format.md, "Teacher features"); the stored classifier equals
the teacher's; a damaged feature value fails verify; the replay batches carry the features.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import assert_same_arrays, load_teacher, make_teacher_checkpoint

import labelstore
from labelstore.pipeline import features
from labelstore.pipeline.images import ImageFolder, make_shapes_dataset
from labelstore.pipeline.replay import ReplayLoader, replay_inputs

ROOT = Path(__file__).resolve().parents[1]
N = 24
TEACH = ["--epochs", "2", "--top-k", "3", "--mc-passes", "2", "--policy", "crop-flip", "--image-size", "16",
         "--shard-samples", "8", "--chunk-samples", "8", "--batch-size", "4", "--workers", "1", "--seed", "5",
         "--quiet", "--features", "penultimate"]


def cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "labelstore", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if check:
        assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def data_dir(work) -> Path:
    train, _ = make_shapes_dataset(work / "shapes", n_train=N, n_test=2, seed=2)
    return Path(train)


@pytest.fixture(scope="module")
def ckpt(work) -> Path:
    return make_teacher_checkpoint(work / "teacher.pt")


@pytest.fixture(scope="module")
def int8_store(work, data_dir, ckpt) -> Path:
    out = work / "int8.zarr"
    cli("teach", "--data", data_dir, "--teacher", ckpt, "--out", out, *TEACH, "--feature-codec", "int8")
    return out


def teacher_features(store, data_dir, ckpt, epoch: int, idx) -> np.ndarray:
    """float32 [n, D]: the input of the teacher's classifier on the replayed views, computed here."""
    model, _ = load_teacher(ckpt)
    x = replay_inputs(store, ImageFolder(data_dir), epoch, idx)
    with torch.inference_mode():
        return model.eval().features(x).numpy()


def test_teach_features_verify_and_resume(int8_store, work, data_dir, ckpt):
    store = labelstore.open(int8_store)
    a = store.attrs["features"]
    assert (a["name"], a["module"], a["codec"], a["dim"]) == ("penultimate", "head.1", "int8", 64)
    assert features.feature_name(int8_store) == "penultimate"
    assert store.group["features/values"].shape == (2, N, 64) and store.group["features/values"].dtype == np.int8
    assert store.group["features/scale"].shape == (2, N) and store.group["features/scale"].dtype == np.float32
    assert not any(k.startswith("features") for k in store.read(0, np.arange(3)))  # read on request only

    p = cli("verify", int8_store, "--data", data_dir, "--teacher", ckpt, "--samples", "16", "--json")
    r = json.loads(p.stdout)
    assert r["ok"] and r["features_checked"] == 16 and r["feature_mismatches"] == 0 and r["head_problems"] == []

    part = work / "part.zarr"  # rank 0 of 2 writes half the work units: a store left incomplete
    cli("teach", "--data", data_dir, "--teacher", ckpt, "--out", part, *TEACH, "--feature-codec", "int8",
        "--rank", "0", "--world-size", "2")
    flags = zarr.open_group(str(part), mode="r")["progress"][...]
    assert 0 < flags.sum() < flags.size
    resumed = cli("teach", "--data", data_dir, "--teacher", ckpt, "--out", part, *TEACH, "--feature-codec", "int8",
                  "--resume")
    assert "complete" in resumed.stdout
    assert_same_arrays(part, int8_store)  # every array, features and head included, bitwise

    other = cli("teach", "--data", data_dir, "--teacher", ckpt, "--out", part, *TEACH, "--feature-codec", "float16",
                "--resume", check=False)
    assert other.returncode == 2 and "feature_codec is 'int8' in the store, 'float16' now" in other.stderr


def test_unknown_module_is_one_error_line(work, data_dir, ckpt):
    args = [a for a in TEACH if a != "penultimate"][:-1]
    p = cli("teach", "--data", data_dir, "--teacher", ckpt, "--out", work / "bad.zarr", *args, "--features", "nosuch",
            check=False)
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "'nosuch'" in lines[0] and "penultimate" in lines[0] and "head.1" in lines[0]
    assert not (work / "bad.zarr").exists()


def test_int8_within_the_stated_bound(int8_store, data_dir, ckpt):
    """Stored int8 features against the teacher's features recomputed here: scale = max|f| / 127 (float32),
    q = round(f / scale), |f - q * scale| <= scale / 2 (+ a recomputation slack of 2^-9 max|f|)."""
    store = labelstore.open(int8_store)
    idx = np.arange(N)
    f = teacher_features(store, data_dir, ckpt, 1, idx)
    q = store.read_array("features/values", 1, idx).astype(np.float32)
    s = store.read_array("features/scale", 1, idx)
    scale = np.abs(f).max(1) / 127
    assert np.allclose(s, scale, rtol=2**-9, atol=0)
    got = features.read_features(store, 1, idx)
    assert np.array_equal(got, q * s[:, None])
    err = np.abs(f - got)
    assert (err <= scale[:, None] / 2 + 2**-9 * np.abs(f).max(1, keepdims=True)).all()
    rel = np.linalg.norm(f - got, axis=1) / np.linalg.norm(f, axis=1)
    cos = (f * got).sum(1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(got, axis=1))
    assert rel.max() < 0.02 and cos.min() > 0.999  # docs/store-format.md states the measured figures

    x = np.random.default_rng(0).normal(size=(64, 512)).astype(np.float32)  # the codec alone, exactly
    enc = features.encode(torch.from_numpy(x), "int8")
    sc = np.abs(x).max(1) / np.float32(127)
    assert np.array_equal(enc[features.SCALE], sc)
    assert np.array_equal(enc[features.VALUES], np.clip(np.round(x / sc[:, None]), -127, 127).astype(np.int8))
    assert (np.abs(x - features.decode(enc[features.VALUES], enc[features.SCALE])) <= features.error_bound(x, "int8")).all()
    h = features.encode(torch.from_numpy(x), "float16")
    assert (np.abs(x - features.decode(h[features.VALUES])) <= np.abs(x) * 2.0**-11 + 2.0**-25).all()


def test_head_in_the_store_is_the_teachers(int8_store, ckpt):
    model, info = load_teacher(ckpt)
    head = features.load_head(int8_store)
    assert torch.equal(head.weight, model.head[1].weight) and torch.equal(head.bias, model.head[1].bias)
    x = torch.randn(5, 64)
    assert torch.equal(head(x), model.head[1](x))
    store = labelstore.open(int8_store)
    w, b = model.head[1].weight.detach().numpy(), model.head[1].bias.detach().numpy()
    assert store.attrs["features"]["head"]["sha256"] == features.head_sha256(info["weights_sha256"], w, b)


def test_damaged_feature_fails_verify(int8_store, work, data_dir, ckpt):
    import shutil

    bad = work / "damaged.zarr"
    shutil.copytree(int8_store, bad)
    arr = zarr.open_group(str(bad), mode="r+")["features/values"]
    v = arr[...]
    v[:, :, 0] = np.where(v[:, :, 0] > 60, 0, 127)  # one value of every view, far outside the bound
    arr[...] = v
    p = cli("verify", bad, "--data", data_dir, "--teacher", ckpt, "--samples", "8", check=False)
    assert p.returncode == 1 and "FAILED" in p.stdout
    assert "features recomputed on 8 views: 8 outside the codec's bound" in p.stdout
    r = json.loads(cli("verify", bad, "--data", data_dir, "--teacher", ckpt, "--samples", "8", "--json",
                       check=False).stdout)
    assert not r["ok"] and r["feature_mismatches"] == 8 and r["min_feature_cosine"] < 0.99


def test_float16_store_and_replay_batches(work, data_dir, ckpt):
    """float16 codec through the Python API (teach_store) on a 4-D module (pooled), and the replay key."""
    from conftest import teach_store

    out = work / "f16.zarr"
    teach_store(out, ImageFolder(data_dir), load_teacher(ckpt), policy="crop-flip", epochs=2, mc_passes=0,
                shard_rows=8, chunk_rows=8, batch_size=4, features="body.4")
    store = labelstore.open(out)
    assert store.attrs["features"]["codec"] == "float16" and "features/scale" not in store.arrays
    model, _ = load_teacher(ckpt)
    x = replay_inputs(store, ImageFolder(data_dir), 1, np.arange(N))
    with torch.inference_mode():
        want = model.eval().body[:5](x).mean((2, 3)).numpy()  # body.4's output [n, 64, h, w], averaged over (h, w)
    got = features.read_features(store, 1, np.arange(N))
    assert (np.abs(got - want) <= np.abs(want) * 2.0**-11 + 2.0**-25 + 2**-9 * np.abs(want).max(1, keepdims=True)).all()
    loader = ReplayLoader(store, ImageFolder(data_dir), epoch=1, batch_size=7, shuffle=True, features=True)
    seen = 0
    for _, t in loader:
        assert t["features"].dtype == torch.float32 and t["features"].shape == (len(t["index"]), 64)
        assert torch.equal(t["features"], torch.from_numpy(got[t["index"].numpy()]))
        seen += len(t["index"])
    assert seen == N
    assert "features" not in next(iter(ReplayLoader(store, ImageFolder(data_dir), epoch=1, batch_size=7)))[1]


def test_feature_store_matches_documented_format(int8_store):
    """The arrays of docs/store-format.md, section "Teacher features": names, dimensions, shapes, dtypes."""
    import re

    from test_store import _doc_section, _table_rows

    doc = {r[0].strip("`"): r for r in _table_rows(_doc_section("## Teacher features"))}
    group = zarr.open_group(str(int8_store), mode="r")
    from labelstore.integrity import iter_arrays

    arrays = {n: a for n, a in iter_arrays(group) if n.startswith("features/")}
    assert set(arrays) == set(doc) == {"features/values", "features/scale", "features/head/weight",
                                       "features/head/bias"}
    sym = {"E": 2, "N": N, "D": 64, "C": 10, "D′": 64}
    for name, arr in arrays.items():
        _, dims, shape, dtype, *_ = doc[name]
        assert tuple(arr.metadata.dimension_names) == tuple(d.strip() for d in dims.strip("`").split(",")), name
        assert arr.shape == tuple(sym[s.strip()] for s in shape.split("×")), name
        assert arr.dtype.name in re.findall(r"`(\w+)`", dtype), (name, arr.dtype, dtype)
    assert set(labelstore.open(int8_store).attrs["features"]) == {"name", "module", "codec", "dim", "flatten", "head"}


def test_float16_refuses_values_beyond_its_range():
    from labelstore.errors import TeacherOutputError

    with pytest.raises(TeacherOutputError, match="beyond float16's range.*int8"):
        features.encode(torch.tensor([[1.0, 7e4]]), "float16")
    assert features.encode(torch.tensor([[1.0, 7e4]]), "int8")[features.VALUES].tolist() == [[0, 127]]
