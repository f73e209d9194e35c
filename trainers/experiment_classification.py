"""`labelstore experiment classification`: students from one store, N seeds per arm, paired by seed.

Setup, made once per output directory and reused by every arm and seed (and by a rerun):
the built-in shapes data (as image files), a teacher trained in-process (seed 0), and one store
of its labels (16 epochs of crop-flip views, top-5, 4 MC-dropout passes). Arms train the same
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
from labelstore.pipeline.augment import make_policy
from labelstore.pipeline.images import ImageFolder, make_shapes_dataset
from labelstore.pipeline.teach import TeachConfig, teach
from labelstore.pipeline.teacher import weights_hash

from .demo import augmented_batches, eval_batches
from .distill import DistillConfig, train_student
from .fit import evaluate, seed_everything, train_classifier
from .models import build_model, count_params
from .spec import load_model, save_checkpoint

ARMS = {
    "none": {"mode": "none"},
    "cache": {"mode": "cache", "loss": "fkd"},
    "online": {"mode": "online", "loss": "fkd"},
    "ferkd": {"mode": "cache", "loss": "ferkd"},
    "adl": {"mode": "cache", "loss": "adl", "adl_mode": "binary", "hard_weight": 1.0},
}


def setup(out: str, *, n_train: int = 2000, n_test: int = 500, image_size: int = 32, teacher: str = "cnn-tiny",
          teacher_epochs: int = 60, epochs: int = 16, progress: bool = False, echo=print) -> dict:
    """Data, teacher and store under `out` (made once; an existing setup.json is reused)."""
    meta_path = os.path.join(out, "setup.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            return json.load(f)
    os.makedirs(out, exist_ok=True)
    size = (image_size, image_size)
    train_dir, test_dir = make_shapes_dataset(os.path.join(out, "data"), n_train=n_train, n_test=n_test, seed=0)
    train, test = ImageFolder(train_dir), ImageFolder(test_dir)
    policy = make_policy("crop-flip", size, crop_scale=(0.25, 1.0))
    seed_everything(0)
    t_model = build_model(teacher, len(train.classes), dropout=0.2)
    train_classifier(t_model, augmented_batches(train, policy, 1, 64), teacher_epochs, device="cpu",
                     optimizer="adamw", progress=progress)
    ckpt = os.path.join(out, "teacher.pt")
    save_checkpoint(ckpt, t_model, teacher, {"num_classes": len(train.classes), "dropout": 0.2})
    teacher_acc = evaluate(t_model, eval_batches(test, size), "cpu")["accuracy"]
    echo(f"teacher {teacher}: test accuracy {teacher_acc:.3f} -> {ckpt}")
    store = os.path.join(out, "labels.zarr")
    info = {"name": ckpt, "weights_sha256": weights_hash(t_model), "params": count_params(t_model)}
    teach(store, train, t_model, policy, TeachConfig(epochs=epochs, top_k=5, mc_passes=4, batch_size=256,
                                                     shard_rows=512, chunk_rows=512),
          teacher_info=info, num_classes=len(train.classes), device="cpu", overwrite=True, progress=progress)
    meta = {"train": str(train_dir), "test": str(test_dir), "teacher": ckpt, "teacher_model": teacher,
            "teacher_accuracy": teacher_acc, "store": store, "image_size": image_size, "epochs": epochs}
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
