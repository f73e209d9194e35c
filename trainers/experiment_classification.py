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
    ferkd       FerKD label adaptation from the stored gt probability (low 0.05, mid 0.5, high 0.95)
    ferkd-keep  the same without dropping (low 0, high 1): only the softened band [0, 0.5) remains
    ferkd-drop  the same without the softened band (mid = low): only the drops remain
    adl         ADL (losses.adl_loss, the official kernel's form): per-class sigmoid, Σ q^θ normaliser,
                plus the hard-label BCE (no BCE-only control here: `labelstore experiment adl` measures ADL)
    adl-semi    adl plus ADL's semi-supervised scheme: an unlabelled folder (2000 more generated images,
                no class folders) labelled by the same teacher stage; its views with teacher top-1
                probability >= 0.9 join each batch with that class as their label
    feat-mse    FitNets from the store's teacher features: FKD's soft_label_ce + the MSE of the student's
                projected penultimate feature to the teacher's
    simkd       SimKD: that MSE alone; the student predicts through the teacher's classifier head
    srrl        SRRL: CE with the labels + that MSE + CE of the teacher head on the projected feature
                against the stored teacher output

The feature arms read a second store of the same views (out/features.zarr, features_setup, made when
a feature arm first runs): the
labelled store's recipe and seed taught again with --features penultimate, so its labels, views
and every other array equal the labelled store's and only the feature arrays are added.

Metric: test accuracy of the final student. Statistics: labelstore.trainers.experiment.
"""

from __future__ import annotations

import os
import sys

import torch

import labelstore
from labelstore.pipeline.images import ImageFolder

from .demo import prepare
from .distill import DistillConfig, train_student
from .experiment import check_arms, read_setup, write_setup
from .feature_student import FEATURE_LOSSES, feature_student
from .fit import eval_batches, evaluate
from .loop import seed_everything
from .models import build_model
from .spec import load_model

METRIC = "accuracy"
REFERENCE = "none"
ARMS = {
    "none": {"mode": "none"},
    "cache": {"mode": "cache", "loss": "fkd"},
    "online": {"mode": "online", "loss": "fkd"},
    "ferkd": {"mode": "cache", "loss": "ferkd"},
    "ferkd-keep": {"mode": "cache", "loss": "ferkd", "ferkd": {"low": 0.0, "high": 1.0, "mid": 0.5, "epsilon": 0.1}},
    "ferkd-drop": {"mode": "cache", "loss": "ferkd", "ferkd": {"low": 0.05, "high": 0.95, "mid": 0.05, "epsilon": 0.1}},
    "adl": {"mode": "cache", "loss": "adl", "adl_mode": "binary", "hard_weight": 1.0},
    "adl-semi": {"mode": "cache", "loss": "adl", "adl_mode": "binary", "hard_weight": 1.0, "semi": True},
    "feat-mse": {"mode": "cache", "loss": "feat-mse"},
    "simkd": {"mode": "cache", "loss": "simkd"},
    "srrl": {"mode": "cache", "loss": "srrl"},
}

DEFAULT_ARMS = list(ARMS)


def teacher_line(meta: dict) -> str:
    return f"teacher ({meta['teacher_model']}) test accuracy: {meta['teacher_accuracy']:.3f}"


def setup(out: str, *, progress: bool = False, echo=print, n_unlabeled: int = 2000, **recipe) -> dict:
    """The demo's data, teacher and store (labelstore.trainers.demo.prepare, seed 0, `recipe` keyword
    overrides) under `out`, plus the unlabelled folder and its store (unlabeled_setup); made once:
    an existing setup.json is reused (and completed if it predates the unlabelled part)."""
    meta = read_setup(out)
    if meta is None:
        os.makedirs(out, exist_ok=True)
        p = prepare(out, progress=progress, echo=echo, **recipe)
        store = p["store"]
        meta = {"train": str(p["train"].root), "test": str(p["test"].root), "teacher": p["checkpoint"],
                "teacher_model": p["teacher_name"], "teacher_accuracy": p["teacher_accuracy"], "store": p["store_path"],
                "image_size": int(store.attrs["policy"]["output_size"][0]), "epochs": store.epochs}
    if "unlabeled_store" not in meta:
        meta.update(unlabeled_setup(out, meta, n_unlabeled, progress=progress, echo=echo))
    write_setup(out, meta)
    return meta


def features_setup(out: str, meta: dict, progress: bool = False, echo=print) -> dict:
    """out/features.zarr: the labelled store's data, teacher, policy, recipe and seed taught again with
    features "penultimate" (float16): the same views and labels, plus the teacher's feature per view
    and its classifier head (the feature arms' store)."""
    from labelstore.pipeline.replay import store_policy
    from labelstore.pipeline.teach import TeachConfig, teach
    from labelstore.pipeline.teacher import weights_hash

    store = labelstore.open(meta["store"])
    a = store.attrs
    teacher = load_model(meta["teacher"]).eval()
    cfg = TeachConfig(**{**a["teach_config"], "features": "penultimate"})
    info = {**a["teacher"], "weights_sha256": weights_hash(teacher)}
    path = os.path.join(out, "features.zarr")
    stats = teach(path, ImageFolder(meta["train"]), teacher, store_policy(store), cfg, teacher_info=info,
                  num_classes=store.num_classes, device="cpu", overwrite=True, progress=progress)
    echo(f"features: teacher stage with --features penultimate, {stats['views']} views in {stats['seconds']:.1f}s "
         f"-> {path}")
    return {"feature_store": path}


def unlabeled_setup(out: str, meta: dict, n: int, progress: bool = False, echo=print) -> dict:
    """An unlabelled folder out/data/unlabeled (n more shapes images of another generator seed, flat: no
    class folders) and its store out/unlabeled.zarr: the labelled store's policy and recipe, seed + 1."""
    import shutil

    from labelstore.pipeline.images import make_shapes_dataset
    from labelstore.pipeline.replay import store_policy
    from labelstore.pipeline.teach import TeachConfig, teach
    from labelstore.pipeline.teacher import weights_hash

    folder = os.path.join(out, "data", "unlabeled")
    if not os.path.isdir(folder):
        gen = os.path.join(out, "data", ".unlabeled-gen")
        shutil.rmtree(gen, ignore_errors=True)
        src, _ = make_shapes_dataset(gen, n_train=n, n_test=1, seed=1)
        os.makedirs(folder + ".tmp", exist_ok=True)
        for path in sorted(src.rglob("*")):  # file names are global indices: unique without their class folder
            if path.is_file():
                os.replace(path, os.path.join(folder + ".tmp", path.name))
        os.replace(folder + ".tmp", folder)
        shutil.rmtree(gen)
    data = ImageFolder(folder, unlabeled=True)
    store = labelstore.open(meta["store"])
    a = store.attrs
    teacher = load_model(meta["teacher"]).eval()
    cfg = TeachConfig(**{**a["teach_config"], "seed": a["seed"] + 1})
    info = {"name": meta["teacher"], "weights_sha256": weights_hash(teacher)}
    path = os.path.join(out, "unlabeled.zarr")
    stats = teach(path, data, teacher, store_policy(store), cfg, teacher_info=info, num_classes=store.num_classes,
                  device="cpu", overwrite=True, progress=progress)
    echo(f"unlabelled: {len(data)} images in {folder}, teacher stage {stats['views']} views in {stats['seconds']:.1f}s "
         f"-> {path}")
    return {"unlabeled": folder, "unlabeled_store": path}


def make_arms(meta: dict, names: list[str], student: str = "cnn-micro", progress: bool = False) -> dict:
    """arm name -> (seed -> {"accuracy", "seconds"}) over the setup `meta`."""
    train, test = ImageFolder(meta["train"]), ImageFolder(meta["test"])
    size = (meta["image_size"], meta["image_size"])
    evals = eval_batches(test, size)
    store = labelstore.open(meta["store"])
    f_store = None
    if any(ARMS[n].get("loss") in FEATURE_LOSSES for n in names if n in ARMS):  # made on first use, then kept
        if "feature_store" not in meta:
            out = os.path.dirname(meta["store"])
            meta.update(features_setup(out, meta, progress=progress, echo=lambda m: print(m, file=sys.stderr)))
            write_setup(out, meta)
        f_store = labelstore.open(meta["feature_store"])

    def arm(name: str):
        spec = ARMS[name]

        def run(seed: int) -> dict:
            seed_everything(seed)
            model = build_model(student, len(train.classes))
            s = store
            if spec.get("loss") in FEATURE_LOSSES:  # the student + its projector (+ the teacher head)
                s, model = f_store, feature_student(model, f_store, spec["loss"])
            t_model = load_model(meta["teacher"]).eval() if spec["mode"] == "online" else None
            unlabeled = None
            if spec.get("semi"):
                unlabeled = (labelstore.open(meta["unlabeled_store"]), ImageFolder(meta["unlabeled"], unlabeled=True))
            cfg = DistillConfig(**{k: v for k, v in spec.items() if k != "semi"}, epochs=meta["epochs"], batch_size=64,
                                seed=seed)
            m = train_student(model, s, train, cfg, teacher=t_model, unlabeled=unlabeled, device="cpu",
                              progress=progress)
            return {"accuracy": evaluate(model, evals, "cpu")["accuracy"], "seconds": m["seconds"],
                    "label_counts": m["label_counts"]}

        return run

    check_arms(names, ARMS)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return {n: arm(n) for n in names}
