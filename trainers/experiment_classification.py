"""`labelstore experiment classification`: students from one store, N seeds per arm, paired by seed.

Setup, made once per output directory and reused by every arm and seed (and by a rerun): the
demo's steps 1-3 (labelstore.trainers.demo.prepare, seed 0): the built-in shapes data (as image
files), a teacher trained in-process, and one store of its labels (16 epochs of crop-flip views,
top-5, 4 MC-dropout passes). Arms train the same
student architecture on the same replayed views; seed s fixes the student's initialisation and
data order in every arm, so the arms are paired by seed:

    none        hard labels only (no teacher)
    cache       FKD: soft_label_ce on the stored top-5 ("marginal" fill)
    online      the same loss, the teacher run live on every batch
    ferkd       FerKD label adaptation from the stored gt probability
    adl         ADL as in the paper: per-class sigmoid, Σ q^θ normaliser, plus the hard-label BCE

Metric: test accuracy of the final student. Statistics: labelstore.trainers.experiment.
"""

from __future__ import annotations

import json
import os

import torch

import labelstore
from labelstore.pipeline.images import ImageFolder

from .demo import eval_batches, prepare
from .distill import DistillConfig, train_student
from .fit import evaluate, seed_everything
from .models import build_model
from .spec import load_model

METRIC = "accuracy"
REFERENCE = "none"
ARMS = {
    "none": {"mode": "none"},
    "cache": {"mode": "cache", "loss": "fkd"},
    "online": {"mode": "online", "loss": "fkd"},
    "ferkd": {"mode": "cache", "loss": "ferkd"},
    "adl": {"mode": "cache", "loss": "adl", "adl_mode": "binary", "hard_weight": 1.0},
}

DEFAULT_ARMS = list(ARMS)


def teacher_line(meta: dict) -> str:
    return f"teacher ({meta['teacher_model']}) test accuracy: {meta['teacher_accuracy']:.3f}"


def setup(out: str, *, progress: bool = False, echo=print, **recipe) -> dict:
    """The demo's data, teacher and store (labelstore.trainers.demo.prepare, seed 0, `recipe` keyword
    overrides) under `out`, made once: an existing setup.json is reused."""
    meta_path = os.path.join(out, "setup.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            return json.load(f)
    os.makedirs(out, exist_ok=True)
    p = prepare(out, progress=progress, echo=echo, **recipe)
    store = p["store"]
    meta = {"train": str(p["train"].root), "test": str(p["test"].root), "teacher": p["checkpoint"],
            "teacher_model": p["teacher_name"], "teacher_accuracy": p["teacher_accuracy"], "store": p["store_path"],
            "image_size": int(store.attrs["policy"]["output_size"][0]), "epochs": store.epochs}
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def make_arms(meta: dict, names: list[str], student: str = "cnn-micro", progress: bool = False) -> dict:
    """arm name -> (seed -> {"accuracy", "seconds"}) over the setup `meta`."""
    train, test = ImageFolder(meta["train"]), ImageFolder(meta["test"])
    size = (meta["image_size"], meta["image_size"])
    evals = eval_batches(test, size)
    store = labelstore.open(meta["store"])

    def arm(name: str):
        spec = ARMS[name]

        def run(seed: int) -> dict:
            seed_everything(seed)
            model = build_model(student, len(train.classes))
            t_model = load_model(meta["teacher"]).eval() if spec["mode"] == "online" else None
            cfg = DistillConfig(**spec, epochs=meta["epochs"], batch_size=64, seed=seed)
            m = train_student(model, store, train, cfg, teacher=t_model, device="cpu", progress=progress)
            return {"accuracy": evaluate(model, evals, "cpu")["accuracy"], "seconds": m["seconds"]}

        return run

    unknown = sorted(set(names) - set(ARMS))
    if unknown:
        from labelstore.errors import ConfigError

        raise ConfigError(f"unknown arm(s) {unknown}: choose from {sorted(ARMS)}")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return {n: arm(n) for n in names}
