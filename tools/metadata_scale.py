"""Cost of a store's metadata at ImageNet size: `open`, `info`, resume's `pending_units`.

    python tools/metadata_scale.py OUT_DIR [--samples 1281167] [--epochs 4 300]

Builds, for each epoch count, a classification store of the real schema (1000 classes, top-5,
crop-flip) through the real writer (`writer.open_or_create` -> `writer.create`, `seal`), then
completes every work unit as the teacher stage does (`writer.mark_done`: the unit's manifest
record, then its progress flag) and `writer.finalize`. The data objects themselves are written
as empty files (the metadata paths never read them: `info` checks they exist), so the store has
the real number of objects, records and metadata, without hours of teacher time.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import labelstore
from labelstore import manifest, schema, writer
from labelstore.cli import store_info


def build(path: str, n: int, epochs: int, shard_rows: int = 8192, chunk_rows: int = 2048) -> int:
    aug = {"rrc/box": ("uint16", (4,)), "flip/flag": ("bool", ())}
    specs = schema.classification_arrays(num_samples=n, epochs=epochs, num_classes=1000, top_k=5, mc_passes=0,
                                         aug_spec=aug)
    attrs = {"task": "classification", "epochs": epochs, "num_samples": n, "num_classes": 1000, "top_k": 5,
             "mc_passes": 0, "seed": 0, "classes": [f"n{i:08d}" for i in range(1000)]}
    group = writer.open_or_create(path, lambda at: writer.create(at, specs, attrs, chunk_rows=chunk_rows,
                                                                 shard_rows=shard_rows, epoch_groups=1),
                                  lambda g: None, overwrite=True)
    parts = -(-n // shard_rows)
    objects = 0
    for p in range(parts):
        notes = {}
        for spec in specs:
            if spec.name in ("sample_id", "gt"):
                continue
            tail = "/0" * (len(spec.shape) - (2 if spec.per_epoch else 1))
            keys = [f"{spec.name}/c/{e}/{p}{tail}" for e in range(epochs)] if spec.per_epoch \
                else [f"{spec.name}/c/{p}{tail}"]
            for k in keys:
                f = os.path.join(path, k)
                os.makedirs(os.path.dirname(f), exist_ok=True)
                open(f, "wb").close()
                notes[k] = [1000, 0]
        objects += len(notes)
        group.store._notes = notes  # what the unit's writes would have noted
        writer.mark_done(group, (0, p))
    assert writer.finalize(group)
    return objects


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--samples", type=int, default=1_281_167)
    ap.add_argument("--epochs", type=int, nargs="+", default=[4, 300])
    a = ap.parse_args()
    for e in a.epochs:
        path = os.path.join(a.out, f"meta-{e}.zarr")
        t0 = time.perf_counter()
        objects = build(path, a.samples, e)
        built = time.perf_counter() - t0
        t_open = timed(lambda: labelstore.open(path))
        t_info = timed(lambda: store_info(labelstore.open(path)))
        t_pending = timed(lambda: writer.pending_units(labelstore.open(path, allow_incomplete=True).group))
        g = labelstore.open(path).group
        t_records = timed(lambda: manifest.unit_records(g), repeat=1)
        print(f"N={a.samples} E={e}: {objects} data objects, {np.prod(g['progress'].shape)} units (built in "
              f"{built:.0f}s); open {t_open:.3f}s, info {t_info:.3f}s, open+pending_units {t_pending:.3f}s, "
              f"all unit records {t_records:.3f}s")


if __name__ == "__main__":
    main()
