"""`labelstore experiment adl`: ADL on a dense task where its premise holds, N seeds per arm, paired by seed.

ADL (arXiv:1901.00366) is built for one-stage detectors: one sigmoid per (anchor, class), more than 99 %
easy negatives, a focal hard loss. This testbed is the smallest task of that kind (trainers/dense_cells.py):
64 x 64 images of 8 x 8 cells x 10 classes, about 3.5 positives among 640 outputs per image, scored by
mAP over (cell, class) on held-out images.

Setup, made once per output directory and reused by every arm and seed (and by a rerun):
  data     out/data/{train,test,pool}: generated PNG files + labels.json; the pool has no labels used by
           any student: 40 % images with objects, 30 % empty, 30 % distractors only
  teacher  a CellNet of width 16 on the full 64 x 64 images, trained in-process on the labelled train
           images (focal loss, flips), out/teacher.pt
  stores   the teacher stage (labelstore.pipeline.stage.run_stage with dense_cells.CellTask) writes the
           teacher's per-cell sigmoid outputs of the train and pool images: out/train.zarr, out/pool.zarr

Arms: the same student (a CellNet of width 8 on the images averaged down to 32 x 32; every output starts
at p = 0.01) with the same focal hard loss (γ 2, α 0.25); seed s fixes its initialisation and batch order
in every arm. Only the distillation term (read back from the store) changes:

    focal          the focal loss alone: the control of every arm below on the labelled images
    bce            + Σ D / N                  D: α-balanced BCE to the teacher's q (α 0.5), N = max(Σ q^1.8, 1)
    fdl            + Σ (1 - p_t)^2 · D / N     the paper's focal distillation loss (p_t of the hard label)
    adl            + Σ ADW · D / N            ADL, the official kernel's form (losses.adl_loss)
    focal-semi     the focal loss on the train images plus the pool images the teacher finds an object
                   in (some q >= 0.5), with the teacher's q >= 0.5 as their hard labels: the control of
    adl-semi       focal-semi + the ADL term on the same images (ADL's semi-supervised scheme)
    adl-semi-all   adl-semi without the filter: every pool image (empty and distractor-only too, all-negative
                   pseudo labels), against
    focal-semi-all focal-semi without the filter: the same images and labels, no distillation term

Metric: test mAP over (cell, class) (dense_cells.cell_map). Statistics: labelstore.trainers.experiment.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch

import labelstore
from labelstore.pipeline.stage import run_stage

from . import losses
from .dense_cells import CellNet, CellsFolder, CellTask, cell_map, make_cells_folder, to_input
from .experiment import check_arms, disk_bytes, read_setup, with_recipe, write_setup
from .loop import seed_everything

METRIC = "mAP"
REFERENCE = "focal"
ARMS = {
    "focal": {"distill": None},
    "bce": {"distill": "bce"},
    "fdl": {"distill": "fdl"},
    "adl": {"distill": "adl"},
    "focal-semi": {"distill": None, "pool": "selected"},
    "adl-semi": {"distill": "adl", "pool": "selected"},
    "adl-semi-all": {"distill": "adl", "pool": "all"},
    "focal-semi-all": {"distill": None, "pool": "all"},
}
DEFAULT_ARMS = list(ARMS)

RECIPE = {"n_train": 600, "n_test": 300, "n_pool": 600, "teacher_width": 16, "teacher_epochs": 30,
          "student_width": 8, "student_epochs": 15, "student_size": 32, "batch_size": 32, "lr": 3e-3,
          "pseudo_threshold": 0.5}
POOL_KINDS = {"objects": 0.4, "empty": 0.3, "distractors": 0.3}


def teacher_line(meta: dict) -> str:
    pool = meta["pool_selected"]
    return (f"teacher (CellNet width {meta['recipe']['teacher_width']}, 64 px) test mAP {meta['teacher_map']:.3f}; "
            f"student width {meta['recipe']['student_width']} at {meta['recipe']['student_size']} px; "
            f"{meta['positive_fraction'] * 100:.2f} % positives; pool kept by the filter: "
            + ", ".join(f"{k} {v['kept']}/{v['images']}" for k, v in pool.items())
            + f"; store {meta['store_bytes_per_image']:.0f} bytes/image")


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, q: torch.Tensor | None, distill: str | None,
           epochs: int, batch_size: int, lr: float, seed: int, flips: bool = False) -> None:
    """Adam with a cosine schedule; per batch focal(x, y) + the distillation term (none, "bce", "fdl",
    "adl") against q. flips: random horizontal / vertical flips of image and targets (the teacher's)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            xb, yb = x[idx], y[idx]
            qb = None if q is None else q[idx]
            if flips:
                for img_dim, grid_dim in ((3, 2), (2, 1)):
                    if torch.rand((), generator=g) < 0.5:
                        xb, yb = xb.flip(img_dim), yb.flip(grid_dim)
            logits = model(xb)  # [b, G, G, C]
            loss = losses.sigmoid_focal_loss(logits, yb)
            if distill == "bce":
                loss = loss + losses.bce_distillation(logits, qb)
            elif distill == "fdl":
                loss = loss + losses.focal_distillation_loss(logits, qb, yb)
            elif distill == "adl":
                loss = loss + losses.adl_loss(logits, qb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def _predict(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.cat([model(b).sigmoid() for b in x.split(256)]).numpy()


def setup(out: str, *, progress: bool = False, echo=print, **recipe) -> dict:
    """Data, teacher and the two stores under `out` (see the module docstring); `recipe` overrides RECIPE.
    Made once: an existing out/setup.json is reused."""
    meta = read_setup(out)
    if meta is not None:
        return meta
    r = with_recipe(RECIPE, recipe)
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.time()
    train = CellsFolder(make_cells_folder(os.path.join(out, "data", "train"), r["n_train"], seed=0))
    test = CellsFolder(make_cells_folder(os.path.join(out, "data", "test"), r["n_test"], seed=1))
    pool = CellsFolder(make_cells_folder(os.path.join(out, "data", "pool"), r["n_pool"], seed=2, kinds=POOL_KINDS))
    echo(f"data: {len(train)} train, {len(test)} test, {len(pool)} pool images in {out}/data ({time.time() - t0:.1f}s)")

    t0 = time.process_time()
    seed_everything(0)
    full = train.images().shape[1]
    teacher = CellNet(r["teacher_width"], downs=3, extra=2)
    _train(teacher, to_input(train.images(), full), torch.from_numpy(train.targets()), None, None,
           r["teacher_epochs"], r["batch_size"], 2e-3, seed=0, flips=True)
    teacher_map = cell_map(_predict(teacher, to_input(test.images(), full)), test.targets())
    ckpt = os.path.join(out, "teacher.pt")
    torch.save({"width": r["teacher_width"], "state_dict": teacher.state_dict()}, ckpt)
    echo(f"teacher: test mAP {teacher_map:.3f} ({time.process_time() - t0:.0f} CPU-s) -> {ckpt}")

    stores = {}
    for name, data in (("train", train), ("pool", pool)):
        path = os.path.join(out, f"{name}.zarr")
        stats = run_stage(CellTask(data, teacher, input_size=full), path, overwrite=True, progress=progress)
        stores[name] = path
        echo(f"teacher stage: {stats['images']} {name} images -> {path}")
    q_pool = labelstore.open(stores["pool"]).read_array("cell_probs", epoch=0).astype(np.float32)
    _, keep = losses.adl_select_images(torch.from_numpy(q_pool), r["pseudo_threshold"])
    kinds = np.asarray(pool.meta["kinds"])
    selected = {k: {"images": int((kinds == k).sum()), "kept": int(keep.numpy()[kinds == k].sum())}
                for k in POOL_KINDS}
    meta = {"recipe": r, "train": str(train.root), "test": str(test.root), "pool": str(pool.root),
            "teacher": ckpt, "teacher_map": teacher_map, "train_store": stores["train"], "pool_store": stores["pool"],
            "pool_selected": selected, "positive_fraction": float(train.targets().mean()),
            "store_bytes_per_image": disk_bytes(stores["train"]) / len(train)}
    write_setup(out, meta)
    return meta


def make_arms(meta: dict, names: list[str], progress: bool = False) -> dict:
    """arm name -> (seed -> {"mAP", "cpu_seconds", "train_images"}) over the setup `meta`."""
    check_arms(names, ARMS)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    r = meta["recipe"]
    train, test, pool = CellsFolder(meta["train"]), CellsFolder(meta["test"]), CellsFolder(meta["pool"])
    size = r["student_size"]
    x_train, y_train = to_input(train.images(), size), torch.from_numpy(train.targets())
    q_train = torch.from_numpy(labelstore.open(meta["train_store"]).read_array("cell_probs", epoch=0).astype(np.float32))
    x_test, y_test = to_input(test.images(), size), test.targets()
    if any(ARMS[n].get("pool") for n in names):
        x_pool = to_input(pool.images(), size)
        q_pool = torch.from_numpy(labelstore.open(meta["pool_store"]).read_array("cell_probs", epoch=0).astype(np.float32))
        pseudo, keep = losses.adl_select_images(q_pool, r["pseudo_threshold"])

    def arm(name: str):
        spec = ARMS[name]

        def run(seed: int) -> dict:
            x, y, q = x_train, y_train, q_train
            if spec.get("pool"):
                m = keep if spec["pool"] == "selected" else torch.ones_like(keep)
                x, y, q = torch.cat([x, x_pool[m]]), torch.cat([y, pseudo[m]]), torch.cat([q, q_pool[m]])
            t0 = time.process_time()
            seed_everything(seed)
            model = CellNet(r["student_width"], downs=2)
            _train(model, x, y, q, spec["distill"], r["student_epochs"], r["batch_size"], r["lr"], seed)
            return {"mAP": cell_map(_predict(model, x_test), y_test), "cpu_seconds": time.process_time() - t0,
                    "train_images": len(x)}

        return run

    return {n: arm(n) for n in names}
