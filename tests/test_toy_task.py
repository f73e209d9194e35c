"""A fourth task defined here, outside the package: teacher features for feature distillation.

It proves the task interface (labelstore.pipeline.stage) is enough: teach -> store -> read the
targets back -> a student step, resume, ranks sharing one store, and the shared error paths; and
that one `register` line (labelstore.trainers.tasks) makes `labelstore inspect` (statistics, text,
JSON, HTML report) serve it. Everything is real: a Zarr store on disk, the background writer, the
prefetch thread, the CLI's own inspect command.
"""

from __future__ import annotations

import json

import dask
import dask.array as da
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import labelstore
from labelstore import schema, writer
from labelstore.cli import main as cli
from labelstore.errors import StoreMismatch, TeacherOutputError
from labelstore.integrity import json_digest
from labelstore.pipeline import rng
from labelstore.pipeline.stage import Item, check_teacher_output, run_stage
from labelstore.report import per_epoch_figure, table, title_of
from labelstore.trainers.tasks import Entry, register
from labelstore.views import dask_client

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


def feature_stats(store, scheduler: str | None = None, warn=lambda m: None) -> tuple[dict, list[str]]:
    """`labelstore inspect` of a feature store, computed with Dask: per epoch the mean L2 norm of the
    stored features and the mean input scale s; a histogram of s over all epochs (10 bins on [0.5, 1.5])."""
    a = store.to_dask()
    f = a["features"].astype("float32")  # [E, N, F]
    s = a["aug/scale/s"]  # [E, N]
    todo = {"feature_norm": da.sqrt((f * f).sum(-1)).mean(1), "scale_mean": s.mean(1)}
    hist = da.histogram(s.ravel(), bins=10, range=(0.5, 1.5))
    with dask_client(scheduler):
        per, (counts, edges) = dask.compute(todo, hist)
    return ({"per_epoch": {k: [float(x) for x in v] for k, v in per.items()},
             "histograms": {"scale": {"edges": edges.tolist(), "counts": counts.tolist()}}},
            [f"{store.attrs['num_samples']} vectors, {F} features per view"])


def feature_report(store, stats: dict, info: dict, scheduler: str | None = None):
    """The report section: the scale histogram as a table, the per-epoch curves as a figure."""
    h = stats["histograms"]["scale"]
    rows = [[f"{lo:.1f}-{hi:.1f}", c] for lo, hi, c in zip(h["edges"][:-1], h["edges"][1:], h["counts"])]
    return (["<h2>input scales</h2>" + table(["scale", "views"], rows)],
            {"toy_per_epoch": per_epoch_figure(stats["per_epoch"], title_of(info), {"scale_mean": "mean s"},
                                               unbounded=("feature_norm",))})


# the one line that adds the task to the registry `labelstore inspect` (and teach/train/demo) dispatch through
register(FeatureTask.name, Entry(inspect=f"{__name__}:feature_stats", report=f"{__name__}:feature_report"))


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


def test_registered_task_through_inspect(tmp_path):
    """`labelstore inspect` of the toy store: the statistics equal numpy's on the stored arrays, in the
    JSON, the text table and the HTML report; the commands the task did not name refuse by name."""
    x, teacher = data_and_teacher()
    path = str(tmp_path / "t.zarr")
    run_stage(FeatureTask(x, teacher, epochs=2, seed=7), path)
    r = CliRunner().invoke(cli, ["inspect", path, "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.stdout)
    store = labelstore.open(path)
    for e in range(2):
        rec = store.read(e)
        norm = np.sqrt((rec["features"].astype(np.float32) ** 2).sum(-1)).mean()
        np.testing.assert_allclose(stats["per_epoch"]["feature_norm"][e], norm, rtol=1e-6)
        np.testing.assert_allclose(stats["per_epoch"]["scale_mean"][e], rec["scale/s"].mean(), rtol=1e-6)
    s = np.stack([store.read(e)["scale/s"] for e in range(2)])
    assert stats["histograms"]["scale"]["counts"] == np.histogram(s, bins=10, range=(0.5, 1.5))[0].tolist()

    report = tmp_path / "r.html"
    r = CliRunner().invoke(cli, ["inspect", path, "--quiet", "--report", str(report)])
    assert r.exit_code == 0, r.output
    assert f"{N} vectors, {F} features per view" in r.stdout and f"report written to {report}" in r.stdout
    assert f"{stats['per_epoch']['scale_mean'][1]:.4f}" in r.stdout  # the per-epoch table
    html = report.read_text()
    assert "task toy-features" in html and "<h2>input scales</h2>" in html and "alt='toy_per_epoch'" in html
    assert f"<td>{stats['per_epoch']['feature_norm'][0]:.4f}</td>" in html  # the per-epoch table

    r = CliRunner().invoke(cli, ["inspect", path, "--report", str(report), "--data", str(tmp_path)])
    assert r.exit_code == 2 and "--data: the gallery of replayed views is for classification stores" in r.stderr
    r = CliRunner().invoke(cli, ["verify", path, "--data", str(tmp_path)])
    assert r.exit_code == 2 and "verify does not know task 'toy-features'" in r.stderr
    r = CliRunner().invoke(cli, ["demo", "--task", FeatureTask.name, "--out", str(tmp_path / "demo")])
    assert r.exit_code == 2 and "--task toy-features: the task has no `labelstore demo`" in r.stderr
