"""`labelstore bench --features`: feature stores (teach --features), measured side by side in one run.

For D = 512 and D = 2048 (a ResNet-50-style teacher: the built-in cnn-tiny backbone, then a 1x1 conv to
D channels, BatchNorm, ReLU, global average pool, Linear(D, 10); trained for `teacher_epochs` epochs
on the built-in shapes data, so its features are those of a teacher that has learned the task):

  1. bytes per view of the feature arrays (features/values, and features/scale for int8) of a store
     written by the real teacher stage (teach with features="penultimate"), both codecs, and of the
     whole store;
  2. reconstruction error of each codec on those views: the stored features against the teacher's
     float32 features recomputed on the replayed views (relative L2 error and cosine, per view);
  3. write rate: ~64 MB of encoded real features (the recomputed ones, tiled to whole shards of 8,192
     rows) written by the store's writer (blosc, crc32c, manifest records: BackgroundWriter, one shard
     per work unit; the store created before the clock starts) against plain file writes of the same
     encoded bytes (one file per shard), both ending with an fsync of every file written, alternating,
     best of `rounds`; MB/s of encoded feature bytes, and CPU-seconds per GB.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn

import labelstore
from labelstore import writer
from labelstore.pipeline import features
from labelstore.pipeline.augment import make_policy
from labelstore.pipeline.classification_store import feature_arrays
from labelstore.pipeline.images import ImageFolder, make_shapes_dataset
from labelstore.pipeline.replay import replay_inputs
from labelstore.pipeline.teach import TeachConfig, teach
from labelstore.pipeline.teacher import weights_hash

from .fit import augmented_batches, train_classifier
from .models import cnn_tiny


class WideTeacher(nn.Module):
    """cnn-tiny's backbone, a 1x1 conv to `dim` channels + BN + ReLU, average pool, Linear(dim, C)
    (the shape of ResNet-50's last stage: its penultimate feature is an averaged post-ReLU map)."""

    def __init__(self, dim: int, num_classes: int = 10):
        super().__init__()
        self.backbone = cnn_tiny(num_classes).body  # [B, 64, H/4, W/4]
        self.expand = nn.Sequential(nn.Conv2d(64, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(0.0), nn.Linear(dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.backbone(x)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _fsync_tree(root: str) -> None:
    for d, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def write_rates(f: np.ndarray, codec: str, tmp: str, nbytes: float = 64e6, shard_rows: int = 8192,
                chunk_rows: int = 2048, rounds: int = 3) -> dict:
    """Figure 3 for one codec: the store's writer against plain writes of the same encoded bytes (about
    `nbytes` of them: whole shards of real features f [n, D], tiled). The store is created before the
    clock starts (a one-off per store); timed: every shard written (one work unit each, its manifest
    record and flag) and the fsync of every file."""
    per_row = f.shape[1] * (1 if codec == "int8" else 2) + (4 if codec == "int8" else 0)
    rows = max(1, round(nbytes / per_row / shard_rows)) * shard_rows
    enc = features.encode(torch.from_numpy(np.tile(f, (-(-rows // len(f)), 1))[:rows]), codec)
    size = sum(v.nbytes for v in enc.values())
    specs = feature_arrays(1, rows, f.shape[1], codec)
    path, plain = os.path.join(tmp, "w.zarr"), os.path.join(tmp, "plain")

    def fresh_store():
        shutil.rmtree(path, ignore_errors=True)

        def build(at):
            writer.create(at, specs, {"epochs": 1}, chunk_rows=chunk_rows, shard_rows=shard_rows, epoch_groups=1)

        return writer.open_or_create(path, build, lambda g: None)

    def store_write(group):
        with writer.BackgroundWriter(group) as w:
            for p, r0 in enumerate(range(0, rows, shard_rows)):
                for name, data in enc.items():
                    w.write(name, r0, data[r0 : r0 + shard_rows], 0)
                w.done((0, p))
        _fsync_tree(path)

    def plain_write(_):
        for r0 in range(0, rows, shard_rows):
            for name, data in enc.items():
                with open(os.path.join(plain, f"{name.replace('/', '_')}.{r0}"), "wb") as fh:
                    fh.write(np.ascontiguousarray(data[r0 : r0 + shard_rows]).tobytes())
                    fh.flush()
                    os.fsync(fh.fileno())

    def fresh_plain():
        shutil.rmtree(plain, ignore_errors=True)
        os.makedirs(plain)

    best = {"store": (np.inf, 0.0), "plain": (np.inf, 0.0)}
    for _ in range(rounds):
        for name, fresh, fn in (("store", fresh_store, store_write), ("plain", fresh_plain, plain_write)):
            target = fresh()
            t = _timed(lambda: fn(target))
            best[name] = min(best[name], t)
    stored = sum(os.path.getsize(os.path.join(d, x)) for d, _, xs in os.walk(os.path.join(path, "features")) for x in xs)
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(plain, ignore_errors=True)
    mb = size / 1e6
    return {"rows": rows, "encoded_bytes": size, "stored_bytes": stored,
            "store_mb_per_s": mb / best["store"][0], "plain_mb_per_s": mb / best["plain"][0],
            "store_over_plain": best["plain"][0] / best["store"][0],
            "store_cpu_s_per_gb": best["store"][1] / (size / 1e9), "plain_cpu_s_per_gb": best["plain"][1] / (size / 1e9)}


def bench_dim(dim: int, data, tmp: str, *, epochs: int, teacher_epochs: int, nbytes: float, rounds: int, echo) -> dict:
    torch.manual_seed(dim)
    model = WideTeacher(dim)
    policy = make_policy("crop-flip", (32, 32))
    out: dict = {"dim": dim}
    if teacher_epochs:
        fit = train_classifier(model, augmented_batches(data, policy, 0, 64), teacher_epochs, progress=False,
                               device="cpu", optimizer="adamw")
        out["teacher_train_accuracy"] = fit["accuracy"]  # per epoch, on its augmented training views
        echo(f"D={dim} teacher: training accuracy per epoch {[round(a, 3) for a in fit['accuracy']]} (10 classes)")
    model.eval()
    info = {"name": f"wide-{dim}", "weights_sha256": weights_hash(model)}
    n = len(data)
    for codec in features.CODECS:
        path = os.path.join(tmp, f"f{dim}-{codec}.zarr")
        cfg = TeachConfig(epochs=epochs, top_k=5, batch_size=128, shard_rows=1024, chunk_rows=1024, decode_workers=2,
                          features="penultimate", feature_codec=codec)
        teach(path, data, model, policy, cfg, teacher_info=info, num_classes=10, overwrite=True, progress=False,
              device="cpu")
        store = labelstore.open(path)
        sizes, views = store.nbytes_on_disk(), epochs * n
        feat = sum(b for k, b in sizes.items() if k in (features.VALUES, features.SCALE)) / views
        idx = np.arange(n)
        with torch.inference_mode():
            f = model.features(replay_inputs(store, data, 0, idx)).numpy()
        err, cos = features.reconstruction_error(f, features.read_features(store, 0, idx))
        out[codec] = {"feature_bytes_per_view": feat, "store_bytes_per_view": sum(sizes.values()) / views,
                      "raw_bytes_per_view": dim * (1 if codec == "int8" else 2) + (4 if codec == "int8" else 0),
                      "rel_l2_mean": float(err.mean()), "rel_l2_max": float(err.max()),
                      "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                      "write": write_rates(f, codec, tmp, nbytes=nbytes, rounds=rounds)}
        r = out[codec]
        echo(f"D={dim} {codec:>7}: {r['feature_bytes_per_view']:8.1f} B/view features ({r['raw_bytes_per_view']} raw), "
             f"rel. L2 error mean {r['rel_l2_mean']:.2e} max {r['rel_l2_max']:.2e}, cosine min {r['cosine_min']:.6f}; "
             f"write {r['write']['store_mb_per_s']:.0f} MB/s store vs {r['write']['plain_mb_per_s']:.0f} MB/s plain "
             f"(x{r['write']['store_over_plain']:.2f}), {r['write']['store_cpu_s_per_gb']:.2f} CPU-s/GB")
        shutil.rmtree(path, ignore_errors=True)
    return out


def run_feature_bench(n_images: int = 512, dims=(512, 2048), epochs: int = 2, teacher_epochs: int = 15,
                      nbytes: float = 64e6, rounds: int = 3, echo=print) -> dict:
    """The figures of the module docstring; returns them as a dict (also printed through echo)."""
    tmp = tempfile.mkdtemp(prefix="labelstore-bench-features-")
    try:
        train, _ = make_shapes_dataset(os.path.join(tmp, "data"), n_train=n_images, n_test=1, seed=0)
        data = ImageFolder(train)
        res = {"images": n_images, "epochs": epochs, "teacher_epochs": teacher_epochs, "write_bytes": nbytes,
               "dims": [bench_dim(d, data, tmp, epochs=epochs, teacher_epochs=teacher_epochs, nbytes=nbytes,
                                  rounds=rounds, echo=echo) for d in dims]}
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
