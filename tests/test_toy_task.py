"""A fourth task defined here, outside the package: teacher features for feature distillation.

It proves the task interface (labelstore.pipeline.stage) is enough: teach -> store -> read the
targets back -> a student step, resume, ranks sharing one store, and the shared error paths.
Everything is real: a Zarr store on disk, the background writer, the prefetch thread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import labelstore
from labelstore import schema, writer
from labelstore.errors import StoreMismatch, TeacherOutputError
from labelstore.integrity import json_digest
from labelstore.pipeline import rng
from labelstore.pipeline.stage import Item, check_teacher_output, run_stage

from conftest import assert_same_arrays

torch.set_num_threads(1)

N, D, F = 20, 8, 4  # samples, input features, teacher features
STREAM = rng.stream_id("toy/scale")


class FeatureTask:
    """Record teacher features f = teacher(x * s) [E, N, F] of a randomly scaled view of each vector,
    s = 0.5 + u(seed, epoch, row) [E, N]; rows in partitions of `shard_rows`."""

    name, count_unit = "toy-features", "view"
    resume_keys = ("task", "epochs", "seed", "num_samples", "dataset.digest", "teacher.weights_sha256",
                   "teach_config.batch_size", "teach_config.shard_rows")

    def __init__(self, x: np.ndarray, teacher: torch.nn.Module, *, epochs: int, seed: int, batch_size: int = 4,
                 shard_rows: int = 8):
        self.x, self.teacher, self.epochs, self.seed = x, teacher.eval(), epochs, seed
        self.batch_size, self.shard_rows = batch_size, shard_rows
        digest = json_digest(x.tolist())
        self.attrs = {"task": self.name, "epochs": epochs, "seed": seed, "num_samples": len(x),
                      "dataset": {"kind": "vectors", "digest": digest},
                      "teacher": {"weights_sha256": json_digest(
                          [p.detach().tolist() for p in teacher.parameters()])},
                      "teach_config": {"batch_size": batch_size, "shard_rows": shard_rows}}
        self._feats: np.ndarray | None = None

    def build(self, at: str) -> None:
        E, n = self.epochs, len(self.x)
        specs = [
            schema.ArraySpec("sample_id", ("sample",), (n,), "str", "sample name", fill_value=""),
            schema.ArraySpec("features", ("epoch", "sample", "feature"), (E, n, F), "float16", "teacher features"),
            schema.ArraySpec("aug/scale/s", ("epoch", "sample"), (E, n), "float32", "input scale of the view"),
        ]
        group = writer.create(at, specs, self.attrs, chunk_rows=4, shard_rows=self.shard_rows, epoch_groups=1)
        group["sample_id"][:] = np.asarray([f"vec{i:03d}" for i in range(n)], dtype=str)

    def scales(self, epoch: int, rows: np.ndarray) -> np.ndarray:
        return (0.5 + rng.uniform(self.seed, epoch, rows, STREAM)[:, 0]).astype(np.float32)  # [n]

    def work(self, units) -> int:
        return sum(len(self._rows(p)) for _, p in units) * self.epochs

    def _rows(self, p: int) -> np.ndarray:
        return np.arange(p * self.shard_rows, min(len(self.x), (p + 1) * self.shard_rows))

    def inputs(self, units, pool):
        for g, p in units:
            rows = self._rows(p)
            for e in range(self.epochs):
                s = self.scales(e, rows)
                for j0 in range(0, len(rows), self.batch_size):
                    sel = slice(j0, j0 + self.batch_size)
                    yield Item("batch", (g, p), e, rows, (sel, torch.from_numpy(self.x[rows[sel]] * s[sel, None])))
                yield Item("epoch", (g, p), e, rows, s)
            yield Item("unit", (g, p), None, rows)

    def label(self, item: Item):
        if item.kind == "unit":
            return [], 0
        start = int(item.rows[0])
        if item.kind == "epoch":
            feats, self._feats = self._feats, None
            return [("features", start, feats, item.epoch), ("aug/scale/s", start, item.data, item.epoch)], 0
        sel, x = item.data
        if self._feats is None:
            self._feats = np.zeros((len(item.rows), F), np.float16)
        with torch.inference_mode():
            f = self.teacher(x)  # [b, F]
        check_teacher_output(f, item.epoch, item.rows[sel], lambda r: f"vec{r:03d}")
        self._feats[sel] = f.numpy()
        return [], len(x)

    def stats(self, count: int, seconds: float) -> dict:
        return {"views": count}


def data_and_teacher(seed: int = 0):
    g = np.random.default_rng(seed)
    torch.manual_seed(seed)
    return g.standard_normal((N, D)).astype(np.float32), torch.nn.Linear(D, F)


def test_teach_store_read_back_student_step(tmp_path):
    x, teacher = data_and_teacher()
    stats = run_stage(FeatureTask(x, teacher, epochs=2, seed=7), str(tmp_path / "t.zarr"))
    assert stats["complete"] and stats["views"] == 2 * N and stats["units"] == 3  # partitions of 8, 8, 4 rows
    store = labelstore.open(tmp_path / "t.zarr")
    assert store.task == "toy-features" and store.progress() == (3, 3)
    for e in range(2):
        rec = store.read(e)  # the targets a student replays, with the view parameters
        s = FeatureTask(x, teacher, epochs=2, seed=7).scales(e, np.arange(N))
        np.testing.assert_array_equal(rec["scale/s"], s)
        with torch.no_grad():
            want = teacher(torch.from_numpy(x * s[:, None])).numpy().astype(np.float16)
        np.testing.assert_array_equal(rec["features"], want)
    # a tiny student regresses the stored features of its replayed views (feature distillation)
    torch.manual_seed(1)
    student = torch.nn.Linear(D, F)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    rec = store.read(1, np.arange(8))
    xv = torch.from_numpy(x[:8] * rec["scale/s"][:, None])  # [8, D]
    target = torch.from_numpy(rec["features"].astype(np.float32))  # [8, F]
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(student(xv), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_stopped_run_resumed_equals_uninterrupted(tmp_path):
    x, teacher = data_and_teacher()
    full = run_stage(FeatureTask(x, teacher, epochs=3, seed=2), str(tmp_path / "full.zarr"))
    part = run_stage(FeatureTask(x, teacher, epochs=3, seed=2), str(tmp_path / "part.zarr"), max_units=1)
    assert full["complete"] and not part["complete"] and part["units"] == 1
    with pytest.raises(labelstore.errors.StoreError, match="resume"):
        run_stage(FeatureTask(x, teacher, epochs=3, seed=2), str(tmp_path / "part.zarr"))
    with pytest.raises(StoreMismatch, match="seed is 2 in the store, 3 now"):
        run_stage(FeatureTask(x, teacher, epochs=3, seed=3), str(tmp_path / "part.zarr"), resume=True)
    with pytest.raises(StoreMismatch, match="batch_size is 4 in the store, 2 now"):
        run_stage(FeatureTask(x, teacher, epochs=3, seed=2, batch_size=2), str(tmp_path / "part.zarr"), resume=True)
    rest = run_stage(FeatureTask(x, teacher, epochs=3, seed=2), str(tmp_path / "part.zarr"), resume=True)
    assert rest["complete"] and rest["units"] == 2
    assert_same_arrays(tmp_path / "full.zarr", tmp_path / "part.zarr")


def test_ranks_share_one_store(tmp_path):
    x, teacher = data_and_teacher()
    run_stage(FeatureTask(x, teacher, epochs=2, seed=2), str(tmp_path / "one.zarr"))
    r0 = run_stage(FeatureTask(x, teacher, epochs=2, seed=2), str(tmp_path / "two.zarr"), rank=0, world_size=2)
    assert r0["units"] == 2 and not r0["complete"]  # partitions 0 and 2
    r1 = run_stage(FeatureTask(x, teacher, epochs=2, seed=2), str(tmp_path / "two.zarr"), rank=1, world_size=2)
    assert r1["units"] == 1 and r1["complete"]
    assert_same_arrays(tmp_path / "one.zarr", tmp_path / "two.zarr")


def test_nan_teacher_output_named_and_nothing_flagged(tmp_path):
    x, teacher = data_and_teacher()
    x[11] = np.nan  # row 11: partition 1
    with pytest.raises(TeacherOutputError, match=r"epoch 0 for rows \[11\] \(\['vec011'\]\)"):
        run_stage(FeatureTask(x, teacher, epochs=2, seed=2), str(tmp_path / "nan.zarr"))
    store = labelstore.open(tmp_path / "nan.zarr", allow_incomplete=True)
    assert store.progress() == (1, 3)  # partition 0, finished before the bad row, stays done
