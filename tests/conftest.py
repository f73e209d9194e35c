"""Shared fixtures and helpers for the store / replay / CLI tests.

Everything here is real: generated image files on disk, a saved checkpoint teacher, real Zarr
stores written by the teacher stage.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

N_TRAIN = 48  # 3 partitions of 16 rows
NUM_CLASSES = 10


def make_teacher_checkpoint(path: Path, seed: int = 0, dropout: float = 0.3) -> Path:
    """A cnn-tiny teacher with dropout and well-separated logits (head weights scaled up, so top-k
    orderings are not near-ties), saved as a checkpoint: identical weights in every process."""
    from labelstore.trainers.models import build_model
    from labelstore.trainers.spec import save_checkpoint

    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(seed)
        model = build_model("cnn-tiny", num_classes=NUM_CLASSES, dropout=dropout)
        with torch.no_grad():
            model.head[-1].weight.mul_(30.0)
            model.head[-1].bias.normal_(0.0, 1.0)
    save_checkpoint(path, model, "cnn-tiny", {"num_classes": NUM_CLASSES, "dropout": dropout})
    return path


def load_teacher(path) -> tuple[torch.nn.Module, dict]:
    from labelstore.pipeline.teacher import weights_hash
    from labelstore.trainers.spec import load_model

    model = load_model(str(path), num_classes=NUM_CLASSES)
    return model, {"name": str(path), "weights_sha256": weights_hash(model)}


DEFAULT_CFG = dict(epochs=3, seed=1, top_k=3, mc_passes=2, batch_size=8, shard_rows=16, chunk_rows=8,
                   decode_workers=1)


def teach_store(out, source, teacher, policy: str = "crop-flip-jitter", image_size: int = 16, **overrides):
    """Run the real teacher stage (Python API) into `out`; returns teach()'s stats.

    teacher: (model, info). overrides: TeachConfig fields or teach() keywords (resume, overwrite,
    rank, world_size)."""
    from labelstore.pipeline.augment import make_policy
    from labelstore.pipeline.teach import TeachConfig, teach

    kw = {k: overrides.pop(k) for k in ("resume", "overwrite", "rank", "world_size") if k in overrides}
    cfg = TeachConfig(**{**DEFAULT_CFG, **overrides})
    model, info = teacher
    return teach(str(out), source, model, make_policy(policy, output_size=(image_size, image_size)), cfg,
                 teacher_info=info, num_classes=NUM_CLASSES, device="cpu", progress=False, **kw)


def read_arrays(path) -> dict[str, np.ndarray]:
    """Every array of a store (bookkeeping included), read straight through zarr."""
    import zarr

    from labelstore.integrity import iter_arrays

    group = zarr.open_group(str(path), mode="r")
    return {name: arr[...] for name, arr in iter_arrays(group)}


def assert_same_arrays(a, b, names=None) -> None:
    """Bitwise equality of the arrays of two stores (given as paths or read_arrays dicts)."""
    a = a if isinstance(a, dict) else read_arrays(a)
    b = b if isinstance(b, dict) else read_arrays(b)
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    for name in names or sorted(a):
        x, y = a[name], b[name]
        assert x.shape == y.shape and x.dtype == y.dtype, (name, x.shape, y.shape, x.dtype, y.dtype)
        if x.dtype.kind in "OTU":
            assert x.tolist() == y.tolist(), name
        else:  # bytes: NaN == NaN, -0 != +0
            same = np.array_equal(np.ascontiguousarray(x).view(np.uint8), np.ascontiguousarray(y).view(np.uint8))
            assert same, f"{name} differs at {np.argwhere(x != y)[:5].tolist()}"


def user_module(tmp_path, monkeypatch, name: str, src: str) -> types.ModuleType:
    """A user's own module: `src` (dedented) written as `tmp_path/<name>.py`, `tmp_path` put first on
    sys.path and the module imported fresh, as `module:callable` specs import it. At teardown
    monkeypatch takes it out of sys.modules again (and restores sys.path)."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(src))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, name, None)  # recorded, so teardown restores the entry as it was
    del sys.modules[name]
    return importlib.import_module(name)


def copy_dataset(src, dst) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)


def corrupt_image(path) -> bytes:
    """Overwrite an image with garbage of the same size (so the dataset fingerprint, which is over
    file sizes, is unchanged and a fixed file resumes the same store). Returns the original bytes."""
    path = Path(path)
    original = path.read_bytes()
    garbage = (b"this is not an image " * (len(original) // 21 + 1))[: len(original)]
    path.write_bytes(garbage)
    return original


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """48 mixed-size (20..40 px) PNG/JPEG images in 10 class folders."""
    from labelstore.pipeline.images import make_shapes_dataset

    train, _ = make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_train=N_TRAIN, n_test=2, seed=0,
                                   min_size=20, max_size=40)
    return train


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    return make_teacher_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher.pt")


@pytest.fixture(scope="session")
def teacher(teacher_ckpt):
    return load_teacher(teacher_ckpt)


@pytest.fixture(scope="session")
def source(shapes_dir):
    from labelstore.pipeline.images import ImageFolder

    return ImageFolder(shapes_dir)


@pytest.fixture(scope="session")
def base_store(tmp_path_factory, source, teacher) -> Path:
    """The reference store: crop-flip-jitter, E=3, K=3, T=2, shards of 16 rows, chunks of 8."""
    out = tmp_path_factory.mktemp("base") / "labels.zarr"
    stats = teach_store(out, source, teacher)
    assert stats["complete"]
    return out


@pytest.fixture
def subprocess_env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    return env
