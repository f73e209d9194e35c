"""`labelstore demo`: the whole story on the built-in shapes data, in a few CPU minutes.

1. write the generated dataset as real PNG/JPEG files;
2. train the teacher in-process;
3. run the teacher stage once (several epochs of views, top-5, MC-dropout passes);
4. train the same student three ways on the same replayed views — from the cache, with the
   teacher run online, without a teacher — and print one table;
5. `inspect` the store with Dask and write the HTML report (report.html, with the gallery of replayed views).
"""

from __future__ import annotations

import json
import os
import time

import torch

import labelstore
from labelstore.cli import store_info
from labelstore.pipeline.augment import make_policy
from labelstore.pipeline.images import ImageFolder, make_shapes_dataset
from labelstore.pipeline.teach import TeachConfig, teach
from labelstore.pipeline.teacher import weights_hash

from .distill import DistillConfig, train_student
from .fit import augmented_batches, eval_batches, evaluate, train_classifier
from .loop import seed_everything
from .models import build_model, count_flops, count_params
from .spec import save_checkpoint
from .tasks import inspect_store, write_report


def prepare(out: str, *, n_train: int = 2000, n_test: int = 500, image_size: int = 32, teacher: str = "cnn-tiny",
            teacher_epochs: int = 60, epochs: int = 16, top_k: int = 5, mc_passes: int = 4,
            crop_scale: tuple[float, float] = (0.25, 1.0), seed: int = 0, progress: bool = True, echo=print,
            shapes: dict | None = None, teacher_crop_scale: tuple[float, float] | None = None,
            store_params: bool = False, teacher_lr: float | None = None) -> dict:
    """Steps 1-3 of the demo under `out`: the dataset files, the teacher trained in-process (checkpoint
    out/teacher.pt) and its store out/labels.zarr. Also the setup of `labelstore experiment`.

    shapes: more make_shapes_dataset arguments (min_size, max_size, object_scale); teacher_crop_scale:
    the teacher's training crops (default crop_scale, the store's); store_params: the store keeps its
    augmentation parameters (TeachConfig.store_params); teacher_lr: the teacher's AdamW learning rate
    (None: train_classifier's default, 5e-3)."""
    size = (image_size, image_size)
    timings = {}
    t = time.perf_counter()
    train_dir, test_dir = make_shapes_dataset(os.path.join(out, "data"), n_train=n_train, n_test=n_test, seed=seed,
                                              **(shapes or {}))
    train, test = ImageFolder(train_dir), ImageFolder(test_dir)
    timings["data"] = time.perf_counter() - t
    echo(f"[1/5] dataset: {len(train)} train / {len(test)} test images in {train_dir.parent} ({timings['data']:.1f}s)")

    policy = make_policy("crop-flip", size, crop_scale=crop_scale)
    t_policy = policy if teacher_crop_scale is None else make_policy("crop-flip", size, crop_scale=teacher_crop_scale)
    evals = eval_batches(test, size)
    seed_everything(seed)
    t_model = build_model(teacher, len(train.classes), dropout=0.2)
    t = time.perf_counter()
    train_classifier(t_model, augmented_batches(train, t_policy, seed + 1, 64), teacher_epochs, lr=teacher_lr,
                     device="cpu", optimizer="adamw", progress=progress)
    timings["teacher_train"] = time.perf_counter() - t
    teacher_acc = evaluate(t_model, evals, "cpu")["accuracy"]
    ckpt = os.path.join(out, "teacher.pt")
    save_checkpoint(ckpt, t_model, teacher, {"num_classes": len(train.classes), "dropout": 0.2})
    echo(f"[2/5] teacher {teacher}: test accuracy {teacher_acc:.3f} ({timings['teacher_train']:.1f}s) -> {ckpt}")

    store_path = os.path.join(out, "labels.zarr")
    cfg = TeachConfig(epochs=epochs, seed=seed, top_k=top_k, mc_passes=mc_passes, batch_size=256,
                      shard_rows=512, chunk_rows=512, store_params=store_params)
    info = {"name": ckpt, "weights_sha256": weights_hash(t_model), "params": count_params(t_model)}
    stats = teach(store_path, train, t_model, policy, cfg, teacher_info=info, num_classes=len(train.classes),
                  device="cpu", overwrite=True, progress=progress)
    timings["teach"] = stats["seconds"]
    store = labelstore.open(store_path)
    echo(f"[3/5] teacher stage: {stats['views']} views in {stats['seconds']:.1f}s ({stats['views_per_s']:.0f} views/s), "
         f"{store.bytes_per_view():.1f} bytes per view -> {store_path}")
    return {"train": train, "test": test, "evals": evals, "teacher_name": teacher, "teacher_model": t_model,
            "teacher_accuracy": teacher_acc,
            "checkpoint": ckpt, "store_path": store_path, "store": store, "stats": stats, "timings": timings}


def run_demo(out: str, *, n_train: int = 2000, n_test: int = 500, image_size: int = 32, teacher: str = "cnn-tiny",
             student: str = "cnn-micro", teacher_epochs: int = 60, epochs: int = 16, top_k: int = 5,
             mc_passes: int = 4, crop_scale: tuple[float, float] = (0.25, 1.0), seed: int = 0, progress: bool = True,
             echo=print) -> dict:
    """Run the demo into directory `out`; returns the results (also written to out/results.json)."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    os.makedirs(out, exist_ok=True)
    size = (image_size, image_size)
    t_all = time.perf_counter()
    p = prepare(out, n_train=n_train, n_test=n_test, image_size=image_size, teacher=teacher,
                teacher_epochs=teacher_epochs, epochs=epochs, top_k=top_k, mc_passes=mc_passes,
                crop_scale=crop_scale, seed=seed, progress=progress, echo=echo)
    train, evals, t_model, store, stats, timings = (p["train"], p["evals"], p["teacher_model"], p["store"],
                                                     p["stats"], p["timings"])
    teacher_acc, store_path = p["teacher_accuracy"], p["store_path"]

    rows = []
    flops_t, flops_s = count_flops(t_model, (3, *size)), count_flops(build_model(student, 10), (3, *size))
    for mode in ("cache", "online", "none"):
        seed_everything(seed)
        s_model = build_model(student, len(train.classes))
        dcfg = DistillConfig(mode=mode, epochs=epochs, batch_size=64, seed=seed)
        m = train_student(s_model, store, train, dcfg, eval_batches=lambda: evals,
                          teacher=t_model if mode == "online" else None, device="cpu",
                          out_dir=os.path.join(out, f"student-{mode}"), progress=progress)
        acc = evaluate(s_model, evals, "cpu")["accuracy"]
        rows.append({"student": f"{student} ({mode})", "mode": mode, "accuracy": acc, "seconds": m["seconds"],
                     "teacher_seconds": m["teacher_seconds"],
                     "teacher_views": sum(h["views"] for h in m["history"]) if mode == "online" else 0})
        echo(f"[4/5] student {mode}: test accuracy {acc:.3f} ({m['seconds']:.1f}s)")
    online = next(r for r in rows if r["mode"] == "online")
    for r in rows:
        if r["mode"] == "cache":
            r["teacher_views_avoided"] = online["teacher_views"]
            r["teacher_seconds_avoided"] = online["teacher_seconds"]

    istats = inspect_store(store)[0]
    plot = os.path.join(out, "report.html")  # `labelstore inspect STORE --report PLOT --data TRAIN_DIR`
    write_report(plot, store, istats, store_info(store), data=str(train.root))
    results = {
        "teacher": {"model": teacher, "accuracy": teacher_acc, "flops": flops_t, "train_seconds": timings["teacher_train"]},
        "student": {"model": student, "flops": flops_s}, "rows": rows,
        "store": {"path": store_path, "bytes": int(sum(store.nbytes_on_disk().values())),
                  "bytes_per_view": store.bytes_per_view(), "views": stats["views"], "teach_seconds": stats["seconds"]},
        "inspect": istats["per_epoch"], "report": plot, "seconds": time.perf_counter() - t_all,
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    echo("[5/5] inspect:")
    echo(format_inspect(istats))
    echo(format_table(results))
    return results


def format_inspect(stats: dict) -> str:
    per = stats["per_epoch"]
    keys = list(per)
    lines = ["epoch  " + "  ".join(f"{k:>14}" for k in keys)]
    for e in range(len(per[keys[0]])):
        lines.append(f"{e:>5}  " + "  ".join(f"{per[k][e]:>14.4f}" for k in keys))
    return "\n".join(lines)


def format_table(r: dict) -> str:
    s = r["store"]
    lines = [
        f"teacher {r['teacher']['model']} ({r['teacher']['flops'] / 1e6:.1f} MFLOPs/view): test accuracy "
        f"{100 * r['teacher']['accuracy']:.1f}%;  student {r['student']['model']} ({r['student']['flops'] / 1e6:.1f} MFLOPs/view)",
        f"{'student':<22}{'test acc %':>11}{'wall s':>9}{'teacher fwd avoided':>21}",
    ]
    for row in r["rows"]:
        avoided = (f"{row['teacher_views_avoided']} views / {row['teacher_seconds_avoided']:.1f}s"
                   if "teacher_views_avoided" in row else "-")
        lines.append(f"{row['student']:<22}{100 * row['accuracy']:>11.1f}{row['seconds']:>9.1f}{avoided:>21}")
    lines.append(f"store: {s['views']} views, {s['bytes'] / 1024:.0f} KiB on disk, {s['bytes_per_view']:.1f} bytes/view, "
                 f"teacher stage {s['teach_seconds']:.1f}s;  total {r['seconds']:.0f}s")
    return "\n".join(lines)
