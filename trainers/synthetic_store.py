"""A synthetic ImageNet-size classification store written through the real writer (no decode, no teacher).

    python -m labelstore.trainers.synthetic_store OUT.zarr [--samples 1281167] [--epochs 2] [--store-params]

prints `LabelStore.bytes_per_view_table` of the store. What it writes, per (epoch, sample), is shaped like
a strong teacher on random-resized crops of ImageNet-1k (method stated in docs/benchmarks.md):

- samples in class order (as an ImageFolder lists them), 732..1300 per class (ImageNet-1k's range);
  sample ids `nXXXXXXXX/nXXXXXXXX_<i>.JPEG`; source sizes mostly 500 x {375, 333, 500}, else random
  in [150, 800];
- teacher logits over C classes: z_c ~ N(0, 1); the ground truth gets + N(8, 4²); each class has 9
  fixed confusable classes (random ids) with + U(1, 4) + N(0, 1). The top of the C - 10 background
  logits comes from their order statistics (exponential spacings), their partition sum from its
  normal approximation. p = softmax(z): top-1 = ground truth in ~80 % of views, top-1 p median ~0.6;
- view_digest: uniform 16-bit values (a view check of distinct views is incompressible);
- aug/* (with store_params): Policy.sample of the crop-flip policy at 224 px on the source sizes.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import labelstore
from labelstore import schema, writer
from labelstore.integrity import json_digest
from labelstore.pipeline.augment import make_policy

NUM_CLASSES = 1000
IMAGENET_TRAIN = 1_281_167


def class_counts(num_samples: int, num_classes: int, g: np.random.Generator) -> np.ndarray:
    """int64 [C] images per class in [732, 1300], summing to num_samples (when that fits)."""
    c = g.integers(732, 1301, num_classes).astype(np.int64)
    c = np.maximum(1, np.round(c * num_samples / c.sum()).astype(np.int64))
    c[-1] += num_samples - c.sum()
    return c


def teacher_topk(gt: np.ndarray, epoch: int, num_classes: int, k: int, seed: int) -> tuple:
    """(top-k probabilities float32 [N, k] descending, their class ids int64 [N, k], p[gt] float32 [N])."""
    g, gc = np.random.default_rng([seed, 1 + epoch]), np.random.default_rng([seed, 0])
    C, n, nconf = num_classes, len(gt), 9
    conf = np.stack([gc.choice(np.delete(np.arange(C), c), nconf, replace=False) for c in range(C)])  # [C, 9]
    boost = gc.uniform(1, 4, (C, nconf))
    special = g.standard_normal((n, 1 + nconf))
    special[:, 0] += 8.0 + 4.0 * g.standard_normal(n)
    special[:, 1:] += boost[gt]
    M, nbg = C - 1 - nconf, k + 1  # background classes; the top nbg of them can enter the top-k
    u = 1.0 - np.cumsum(g.standard_exponential((n, nbg)), 1) / (M + 1)
    background = torch.special.ndtri(torch.from_numpy(u)).numpy()
    bg_sum = M * np.exp(0.5) + np.sqrt(M * (np.e**2 - np.e)) * g.standard_normal(n)  # sum of exp(N(0,1)) over M
    ids = np.concatenate([gt[:, None], conf[gt], g.integers(0, C, (n, nbg))], 1)
    for j in range(1 + nconf, ids.shape[1]):  # background ids distinct from the others of the row
        for _ in range(ids.shape[1]):
            clash = (ids[:, :j] == ids[:, j : j + 1]).any(1)
            if not clash.any():
                break
            ids[clash, j] = (ids[clash, j] + 1) % C
    z = np.concatenate([special, background], 1)
    m = np.maximum(z.max(1, keepdims=True), 0.0)
    Z = np.exp(special - m).sum(1) + bg_sum * np.exp(-m[:, 0])
    p = np.exp(z - m) / Z[:, None]
    order = np.argsort(-p, 1, kind="stable")[:, :k]
    return (np.take_along_axis(p, order, 1).astype(np.float32), np.take_along_axis(ids, order, 1),
            p[:, 0].astype(np.float32))


def write_synthetic_imagenet(path: str, num_samples: int = IMAGENET_TRAIN, epochs: int = 2, top_k: int = 5,
                             num_classes: int = NUM_CLASSES, store_params: bool = False, digests: bool = True,
                             seed: int = 0, chunk_rows: int = 2048, shard_rows: int = 8192) -> str:
    """Write the store described in the module docstring at `path` (replaced); returns the path."""
    g = np.random.default_rng(seed)
    counts = class_counts(num_samples, num_classes, g)
    gt = np.repeat(np.arange(num_classes), counts)
    wnid = np.sort(g.choice(np.arange(1_440_764, 15_075_141), num_classes, replace=False))
    names = np.concatenate([[f"n{wnid[c]:08d}/n{wnid[c]:08d}_{i}.JPEG" for i in np.sort(g.choice(60_000, n, replace=False))]
                            for c, n in enumerate(counts)])
    common = g.random(num_samples) < 0.8
    hw = np.stack([np.where(common, g.choice([375, 333, 500, 281], num_samples), g.integers(150, 801, num_samples)),
                   np.where(common, 500, g.integers(150, 801, num_samples))], 1).astype(np.uint16)
    policy = make_policy("crop-flip", (224, 224))
    pol = policy.to_json()
    specs = schema.classification_arrays(num_samples=num_samples, epochs=epochs, num_classes=num_classes, top_k=top_k,
                                         mc_passes=0, aug_spec=policy.param_spec() if store_params else {},
                                         digests=digests)
    attrs = {"task": schema.CLASSIFICATION, "teacher": {"name": "synthetic"}, "seed": seed, "epochs": epochs,
             "dataset": {"kind": "synthetic-imagenet", "num_samples": num_samples},
             "policy": {**pol, "digest": json_digest(pol)}, "num_samples": num_samples, "num_classes": num_classes,
             "classes": [f"n{w:08d}" for w in wnid], "top_k": top_k, "mc_passes": 0,
             "aug_params": schema.PARAMS_STORED if store_params else schema.PARAMS_DERIVED}
    group = writer.create(path, specs, attrs, chunk_rows=chunk_rows, shard_rows=shard_rows, epoch_groups=1)
    writer.write_block(group, "sample_id", 0, names)
    writer.write_block(group, "gt", 0, gt.astype(group["gt"].dtype))
    writer.write_block(group, "source_hw", 0, hw)
    writer.write_block(group, "skipped", 0, np.zeros(num_samples, bool))
    for e in range(epochs):
        vals, ids, gp = teacher_topk(gt, e, num_classes, top_k, seed)
        writer.write_block(group, "topk_values", 0, vals.astype(np.float16), e)
        writer.write_block(group, "topk_indices", 0, ids.astype(group["topk_indices"].dtype), e)
        writer.write_block(group, "gt_prob", 0, gp.astype(np.float16), e)
        if digests:
            writer.write_block(group, "view_digest", 0, g.integers(0, 1 << 16, num_samples).astype(np.uint16), e)
        if store_params:
            for key, v in policy.sample(seed, e, np.arange(num_samples), hw, num_samples).items():
                writer.write_block(group, f"aug/{key}", 0, v, e)
    for unit in writer.pending_units(group):
        writer.mark_done(group, unit)
    writer.finalize(group)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--samples", type=int, default=IMAGENET_TRAIN)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--store-params", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    store = labelstore.open(write_synthetic_imagenet(a.out, a.samples, a.epochs, store_params=a.store_params))
    table = store.bytes_per_view_table()
    if a.json:
        print(json.dumps({"views": store.epochs * store.num_samples, "bytes_per_view": store.bytes_per_view(),
                          "arrays": table}))
        return
    for r in table:
        print(f"{r['name']:<16}{r['bytes']:>12}{r['bytes_per_view']:>8.2f}{'' if r['per_epoch'] else '  (per sample)'}")
    print(f"all-in (every object, metadata included): {store.bytes_per_view():.2f} bytes per view, "
          f"E={store.epochs}, N={store.num_samples}")


if __name__ == "__main__":
    main()
