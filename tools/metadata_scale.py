"""Cost of a store's metadata at ImageNet size: `open`, `info`, resume's `pending_units`.

    python tools/metadata_scale.py OUT_DIR [--samples 1281167] [--epochs 4 300] [--epoch-groups G]

Builds, for each epoch count, a classification store of the real schema (1000 classes, top-5,
crop-flip) through the real writer (`writer.open_or_create` -> `writer.create`, `seal`), then
completes every work unit as the teacher stage does (`writer.mark_done`: the unit's manifest
record, then its progress flag) and `writer.finalize`. The data objects themselves are written
as empty files (the metadata paths never read them: `info --check-objects` checks they exist), so the store has
the real number of objects, records and metadata, without hours of teacher time.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import labelstore
from labelstore import manifest, writer
from labelstore.cli import store_info
from labelstore.pipeline.classification_store import classification_arrays


def build(path: str, n: int, epochs: int, groups: int = 1, shard_rows: int = 8192,
          chunk_rows: int = 2048) -> tuple[int, float]:
    """(data objects, seconds of pending_units on the store before its last unit: what a resume reads)."""
    aug = {"rrc/box": ("uint16", (4,)), "flip/flag": ("bool", ())}
    specs = classification_arrays(num_samples=n, epochs=epochs, num_classes=1000, top_k=5, mc_passes=0, aug_spec=aug)
    attrs = {"task": "classification", "epochs": epochs, "num_samples": n, "num_classes": 1000, "top_k": 5,
             "mc_passes": 0, "seed": 0, "classes": [f"n{i:08d}" for i in range(1000)]}
    v = -(-epochs // groups)
    group = writer.open_or_create(path, lambda at: writer.create(at, specs, attrs, chunk_rows=chunk_rows,
                                                                 shard_rows=shard_rows, epoch_groups=groups,
                                                                 epochs_per_group=v),
                                  lambda g: None, overwrite=True)
    parts = -(-n // shard_rows)
    objects, t_pending = 0, 0.0
    for g in range(groups):
        for p in range(parts):
            notes = {}
            for spec in specs:
                if spec.name in ("sample_id", "gt") or (not spec.per_epoch and g):
                    continue
                tail = "/0" * (len(spec.shape) - (2 if spec.per_epoch else 1))
                keys = [f"{spec.name}/c/{e}/{p}{tail}" for e in range(g * v, min(epochs, (g + 1) * v))] \
                    if spec.per_epoch else [f"{spec.name}/c/{p}{tail}"]
                for k in keys:
                    f = os.path.join(path, k)
                    os.makedirs(os.path.dirname(f), exist_ok=True)
                    open(f, "wb").close()
                    notes[k] = [1000, 0]
            objects += len(notes)
            if (g, p) == (groups - 1, parts - 1):  # a resume of the store before its last unit
                t_pending = timed(lambda: writer.pending_units(labelstore.open(path, allow_incomplete=True).group))
            group.store._notes = notes  # what the unit's writes would have noted
            writer.mark_done(group, (g, p))
    assert writer.finalize(group)
    return objects, t_pending


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
    ap.add_argument("--epoch-groups", type=int, default=1, help="Work units per partition (--views-per-decode E/G).")
    a = ap.parse_args()
    for e in a.epochs:
        path = os.path.join(a.out, f"meta-{e}-{a.epoch_groups}.zarr")
        t0 = time.perf_counter()
        objects, t_resume = build(path, a.samples, e, min(a.epoch_groups, e))
        built = time.perf_counter() - t0
        t_open = timed(lambda: labelstore.open(path))
        t_info = timed(lambda: store_info(labelstore.open(path)))
        t_checked = timed(lambda: store_info(labelstore.open(path), check_objects=True))
        g = labelstore.open(path).group
        t_records = timed(lambda: manifest.unit_records(g), repeat=1)
        arrays = labelstore.open(path).arrays
        t_listing = timed(lambda: [arr.nbytes_stored() for arr in arrays.values()], repeat=1)  # sizes by listing
        print(f"N={a.samples} E={e}: {objects} data objects, {np.prod(g['progress'].shape)} units (built in "
              f"{built:.0f}s); open {t_open:.3f}s, info {t_info:.3f}s, info --check-objects {t_checked:.3f}s, open+pending_units before the last unit "
              f"{t_resume:.3f}s, "
              f"all unit records {t_records:.3f}s; sizes by listing every object (as before) {t_listing:.3f}s")


if __name__ == "__main__":
    main()
