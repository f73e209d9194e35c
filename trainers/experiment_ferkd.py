"""`labelstore experiment ferkd`: a testbed built so FerKD's premise holds, N seeds per arm, paired by seed.

FerKD (Shen & Xing, ICCV 2023) drops the random crops its teacher finds hardest (gt probability
below `low`: "likely background") and the easiest, softens the hard ones, and pairs this with
SelfMix. That needs crops that really miss the object. The setup (made once per output directory):

  data     the built-in shapes generator with a small object on a larger textured canvas
           (make_shapes_dataset object_scale: radius 0.21-0.28 of the shorter side, boxes 18 % of
           the area on average; sources 56-72 px, views 32x32), image files on disk, the object
           boxes beside them;
  teacher  resnet-s (33x the student cnn-micro's FLOPs), 30 epochs in-process on mild crops
           (scale 0.5-1) with AdamW at lr 2e-3 (at train_classifier's default 5e-3 resnet-s stays
           at chance on this data), evaluated on whole images;
  stores   two real stores of its top-5 labels, crop boxes stored (--store-params): crop-flip views
           with crop scale 0.05-1 ("plain"), and the same with SelfMix added ("selfmix", FerKD's
           pairing: a second crop of the same image pasted with p = 0.5).

The band rule (band_rule, recorded in setup.json): with C classes a teacher that cannot
tell gives about 1/C to every class, so on 10 classes a background crop's gt probability is about
0.1, inside the softened band of the project's gt-probability cut (low = 0.05; on ImageNet's 1000
classes "cannot tell" is about 0.001, far below any such cut). The testbed drops as likely
background the views whose teacher favours no class:

    dropped_low  <=>  max_c p_teacher(c | view) < KAPPA / C        (KAPPA = 3: 0.3 on 10 classes)

and keeps FerKD's gt-probability bands for the rest (mid 0.5, high 0.95; no gt-probability low
cut). The top probability, not the gt probability, because on this teacher the crops that hold
none of the object have the gt probability of those holding a sliver of it (medians 0.11 both) but
a lower top probability; a view with gt probability < 0.05 and a confident top class holds part
of the object and is hard, not background (by_object() prints the quartiles). Per store, bands() puts each view in its band (losses.ferkd_bands) and measures how much of
the object its crop holds:

    held = area(crop box ∩ object box) / area(object box)          (object_fraction, source pixels)

so the table says whether the dropped-low band is background. Arms, the same student on the
same seeds (seed s fixes initialisation and data order in every arm):

    none            hard labels only, plain store's views (the no-teacher control)
    fkd             FKD soft-label CE on the plain store (the reference: FerKD's claim is over FKD)
    ferkd           FerKD label adaptation on the plain store (the testbed's band rule)
    ferkd+selfmix   FerKD on the selfmix store
    fkd+selfmix     FKD on the selfmix store (not a default arm: SelfMix without FerKD)
    ferkd-keep-easy ferkd without the dropped-high band (high = 1; not a default arm)
    ferkd-gt-low    ferkd with the project's gt-probability low cut instead (low 0.05, no
                    background cut: DistillConfig.ferkd; not a default arm)

Metric: test accuracy (whole images). Statistics: labelstore.trainers.experiment.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

import labelstore
from labelstore.pipeline.images import ImageFolder, object_boxes

from . import losses
from .demo import prepare
from .distill import DistillConfig, train_student
from .experiment import check_arms, read_setup, with_recipe, write_setup
from .fit import eval_batches, evaluate
from .loop import seed_everything
from .models import build_model

METRIC = "accuracy"
REFERENCE = "fkd"
ARMS = {
    "none": {"store": "plain", "mode": "none"},
    "fkd": {"store": "plain", "mode": "cache", "loss": "fkd"},
    "ferkd": {"store": "plain", "mode": "cache", "loss": "ferkd"},
    "ferkd+selfmix": {"store": "selfmix", "mode": "cache", "loss": "ferkd"},
    "fkd+selfmix": {"store": "selfmix", "mode": "cache", "loss": "fkd"},
    "ferkd-keep-easy": {"store": "plain", "mode": "cache", "loss": "ferkd", "rule": {"high": 1.0}},
    "ferkd-gt-low": {"store": "plain", "mode": "cache", "loss": "ferkd", "rule": {"low": 0.05, "background": 0.0}},
}
KAPPA = 3  # dropped_low: the teacher's top probability under KAPPA times chance (1 / C)
DEFAULT_ARMS = ["none", "fkd", "ferkd", "ferkd+selfmix"]

# setup(**recipe) defaults; --recipe overrides any of them
RECIPE = {"n_train": 2000, "n_test": 500, "min_size": 56, "max_size": 72, "object_scale": [0.21, 0.28],
          "image_size": 32, "teacher": "resnet-s", "teacher_epochs": 30, "teacher_lr": 0.002,
          "teacher_crop_scale": [0.5, 1.0],
          "epochs": 8, "crop_scale": [0.05, 1.0], "top_k": 5, "student": "cnn-micro"}


def _intersection(crops, objects) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(area of crop ∩ object, crop area, object area), int64 [N] each, of (y, x, h, w) boxes [N, 4]."""
    c, o = np.asarray(crops, np.int64).reshape(-1, 4), np.asarray(objects, np.int64).reshape(-1, 4)
    ih = np.minimum(c[:, 0] + c[:, 2], o[:, 0] + o[:, 2]) - np.maximum(c[:, 0], o[:, 0])
    iw = np.minimum(c[:, 1] + c[:, 3], o[:, 1] + o[:, 3]) - np.maximum(c[:, 1], o[:, 1])
    return np.clip(ih, 0, None) * np.clip(iw, 0, None), c[:, 2] * c[:, 3], o[:, 2] * o[:, 3]


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(len(a)), where=b > 0)


def object_fraction(crops, objects) -> np.ndarray:
    """float64 [N]: the share of each object box that its crop holds, both (y, x, h, w) [N, 4] in
    source pixels: area(crop ∩ object) / area(object) (0 for an empty object box)."""
    inter, _, obj = _intersection(crops, objects)
    return _ratio(inter, obj)


def band_rule(num_classes: int) -> dict:
    """The testbed's band rule (losses.ferkd_bands arguments): dropped_low when the teacher's top
    probability is under KAPPA / C, no gt-probability low cut, FerKD's mid 0.5 and high 0.95."""
    return {"low": 0.0, "mid": 0.5, "high": DistillConfig().ferkd["high"], "background": KAPPA / num_classes}


def views(store, boxes: dict, thresholds: dict) -> dict[str, np.ndarray]:
    """Per view of `store` (all epochs, [V] each): "band" (losses.ferkd_bands with `thresholds`),
    "gt_prob", "top_prob" (the teacher's largest stored probability), "top_is_gt" (its class is gt),
    "held" (object_fraction of the crop box "rrc/box") and "crop_object" (area(crop ∩ object) /
    area(crop)). boxes: {sample id: object box} (object_boxes)."""
    obj = np.array([boxes[i] for i in store.ids], np.int64)  # [N, 4]
    cols = {k: [] for k in ("band", "gt_prob", "top_prob", "top_is_gt", "held", "crop_object")}
    for e in range(store.epochs):
        rec = store.read(e)
        gt = torch.from_numpy(rec["gt"].astype(np.int64))  # [N]
        p = torch.from_numpy(rec["gt_prob"].astype(np.float32))  # [N]
        top, arg = torch.from_numpy(rec["topk_values"].astype(np.float32)).max(dim=1)  # [N]
        top_class = np.take_along_axis(rec["topk_indices"], arg.numpy()[:, None], 1)[:, 0]
        cols["band"].append(losses.ferkd_bands(gt, p, top_prob=top, **thresholds).numpy())
        cols["gt_prob"].append(p.numpy())
        cols["top_prob"].append(top.numpy())
        cols["top_is_gt"].append(top_class == rec["gt"])
        inter, crop, area = _intersection(rec["rrc/box"], obj)
        cols["held"].append(_ratio(inter, area))
        cols["crop_object"].append(_ratio(inter, crop))
    return {k: np.concatenate(v) for k, v in cols.items()}


def bands(v: dict) -> dict:
    """Per FerKD band of views() `v`: {band: {"views", "share", "gt_prob", "top_prob", "held",
    "crop_object", "no_object", "quarter_object", "half_object"}} plus "all" (None for an empty band):
    the means of gt_prob, top_prob, held and crop_object, and the share of views holding none of the
    object, under a quarter of it, and at least half of it."""
    held = v["held"]
    columns = (("gt_prob", v["gt_prob"]), ("top_prob", v["top_prob"]), ("held", held), ("crop_object", v["crop_object"]),
               ("no_object", held == 0), ("quarter_object", held < 0.25), ("half_object", held >= 0.5))
    out = {}
    for b, name in [*enumerate(losses.BANDS), (None, "all")]:
        m = np.ones(len(held), bool) if b is None else v["band"] == b
        n = int(m.sum())
        out[name] = {"views": n, "share": n / len(held), **{k: float(x[m].mean()) if n else None for k, x in columns}}
    return out


HELD_GROUPS = ("no object", "under 1/4", "1/4 to 1/2", "1/2 or more")  # held == 0, (0, 1/4), [1/4, 1/2), >= 1/2


def by_object(v: dict) -> dict:
    """What the teacher gives views() `v` by how much of the object they hold (HELD_GROUPS):
    {group: {"views", "gt_prob", "top_prob" (each [p25, median, p75]), "top_is_gt" (share),
    "bands" (share per BANDS)}} (None values for an empty group)."""
    h = v["held"]
    group = np.where(h == 0, 0, np.where(h < 0.25, 1, np.where(h < 0.5, 2, 3)))  # [V]
    out = {}
    for g, name in enumerate(HELD_GROUPS):
        m = group == g
        n = int(m.sum())
        quartiles = (lambda x: [float(y) for y in np.percentile(x[m], [25, 50, 75])]) if n else (lambda x: None)
        out[name] = {"views": n, "gt_prob": quartiles(v["gt_prob"]), "top_prob": quartiles(v["top_prob"]),
                     "top_is_gt": float(v["top_is_gt"][m].mean()) if n else None,
                     "bands": [float((v["band"][m] == b).mean()) if n else None for b in range(len(losses.BANDS))]}
    return out


def format_by_object(stats: dict, title: str) -> str:
    """The by_object() table: quartiles of gt_prob and top_prob and each band's share per group."""
    lines = [title, f"{'object held':<13}{'views':>7}{'gt_prob p25/50/75':>20}{'top_prob p25/50/75':>21}"
                    f"{'top is gt %':>13}" + "".join(f"{b + ' %':>16}" for b in losses.BANDS)]
    for name, s in stats.items():
        if not s["views"]:
            lines.append(f"{name:<13}{0:>7}")
            continue
        q = lambda x: "/".join(f"{y:.2f}" for y in x)  # noqa: E731
        lines.append(f"{name:<13}{s['views']:>7}{q(s['gt_prob']):>20}{q(s['top_prob']):>21}{100 * s['top_is_gt']:>13.1f}"
                     + "".join(f"{100 * x:>16.1f}" for x in s["bands"]))
    return "\n".join(lines)


def format_bands(stats: dict, title: str) -> str:
    """The band table of one store (bands())."""
    lines = [title, f"{'band':<14}{'views':>7}{'share %':>9}{'gt_prob':>9}{'top_prob':>10}{'object held %':>15}"
                    f"{'crop is object %':>18}{'no object %':>13}{'< quarter %':>13}{'>= half %':>11}"]
    for name, s in stats.items():
        if not s["views"]:
            lines.append(f"{name:<14}{0:>7}{0:>9.1f}{'-':>9}{'-':>10}{'-':>15}{'-':>18}{'-':>13}{'-':>13}{'-':>11}")
            continue
        lines.append(f"{name:<14}{s['views']:>7}{100 * s['share']:>9.1f}{s['gt_prob']:>9.3f}{s['top_prob']:>10.3f}"
                     f"{100 * s['held']:>15.1f}{100 * s['crop_object']:>18.1f}{100 * s['no_object']:>13.1f}"
                     f"{100 * s['quarter_object']:>13.1f}{100 * s['half_object']:>11.1f}")
    return "\n".join(lines)


def store_views(meta: dict) -> dict:
    """{store name: views()} of the setup's stores, from the stored crop boxes and the object boxes."""
    boxes = object_boxes(meta["train"])
    return {k: views(labelstore.open(v["path"]), boxes, meta["thresholds"]) for k, v in meta["stores"].items()}


def store_bands(meta: dict) -> dict:
    """{store name: bands()} of the setup's stores."""
    return {k: bands(v) for k, v in store_views(meta).items()}


def teacher_line(meta: dict) -> str:
    """The teacher's accuracy, the data's object size, the band rule, the band table of each store and
    the plain store's views by how much of the object they hold."""
    t = meta["thresholds"]
    low = [f"top_prob < {t['background']:g}"] if t.get("background") else []
    low += [f"gt_prob < {t['low']:g}"] if t["low"] > 0 else []
    head = (f"teacher ({meta['teacher_model']}) test accuracy: {meta['teacher_accuracy']:.3f}; object box "
            f"{100 * meta['object_area']:.1f} % of the image on average; crop scale {meta['crop_scale']}; "
            f"FerKD bands: dropped_low {' or '.join(low) or 'none'}, mid {t.get('mid', (t['low'] + t['high']) / 2):g}, "
            f"high {t['high']:g}")
    v = store_views(meta)
    tables = [format_bands(bands(x), f"object in the crop, per FerKD band ({k} store, {meta['stores'][k]['views']} "
                                     f"views):") for k, x in v.items()]
    tables.append(format_by_object(by_object(v["plain"]), "the teacher on the plain store's views, by how much of "
                                                          "the object the crop holds:"))
    return "\n".join([head, *tables])


def setup(out: str, *, progress: bool = False, echo=print, **recipe) -> dict:
    """Data, teacher and the two stores under `out` (RECIPE, `recipe` overriding); made once: an
    existing setup.json is reused. Echoes teacher_line (the band tables)."""
    meta = read_setup(out)
    if meta is not None:
        return meta
    r = with_recipe(RECIPE, recipe)
    os.makedirs(out, exist_ok=True)
    p = prepare(out, n_train=r["n_train"], n_test=r["n_test"], image_size=r["image_size"], teacher=r["teacher"],
                teacher_epochs=r["teacher_epochs"], epochs=r["epochs"], top_k=r["top_k"], mc_passes=0,
                crop_scale=tuple(r["crop_scale"]), progress=progress, echo=echo, store_params=True,
                shapes={"min_size": r["min_size"], "max_size": r["max_size"], "object_scale": r["object_scale"]},
                teacher_crop_scale=tuple(r["teacher_crop_scale"]), teacher_lr=r["teacher_lr"])
    plain = p["store"]
    selfmix_path = os.path.join(out, "selfmix.zarr")
    selfmix = _selfmix_store(selfmix_path, plain, p["train"], p["teacher_model"], tuple(r["crop_scale"]), progress)
    boxes = object_boxes(p["train"].root)
    hw = plain.read_array("source_hw")  # [N, 2]
    obj = np.array([boxes[i] for i in plain.ids], np.int64)
    thresholds = band_rule(plain.num_classes)
    meta = {"recipe": r, "train": str(p["train"].root), "test": str(p["test"].root), "teacher": p["checkpoint"],
            "teacher_model": r["teacher"], "teacher_accuracy": p["teacher_accuracy"], "student": r["student"],
            "crop_scale": list(r["crop_scale"]), "thresholds": thresholds, "epochs": plain.epochs,
            "image_size": r["image_size"], "object_area": float(np.mean(obj[:, 2] * obj[:, 3] / (hw[:, 0] * hw[:, 1]))),
            "stores": {"plain": {"path": p["store_path"], "views": plain.epochs * plain.num_samples},
                       "selfmix": {"path": selfmix_path, "views": selfmix.epochs * selfmix.num_samples}}}
    write_setup(out, meta)
    echo(teacher_line(meta))
    return meta


def _selfmix_store(path: str, plain, train, teacher, crop_scale: tuple[float, float], progress: bool):
    """The plain store's recipe (teacher, seed, epochs, top-k, stored params) with SelfMix added."""
    from labelstore.pipeline.augment import make_policy
    from labelstore.pipeline.replay import store_policy
    from labelstore.pipeline.teach import TeachConfig, teach

    a = plain.attrs
    pol = store_policy(plain)
    policy = make_policy("selfmix", pol.output_size, pol.mean, pol.std, crop_scale=crop_scale)
    teach(path, train, teacher, policy, TeachConfig(**a["teach_config"]), teacher_info=a["teacher"],
          num_classes=plain.num_classes, device="cpu", overwrite=True, progress=progress)
    return labelstore.open(path)


def make_arms(meta: dict, names: list[str], progress: bool = False) -> dict:
    """arm name -> (seed -> {"accuracy", "seconds", "cpu_seconds", "label_counts"}) over the setup."""
    check_arms(names, ARMS)
    train, test = ImageFolder(meta["train"]), ImageFolder(meta["test"])
    evals = eval_batches(test, (meta["image_size"], meta["image_size"]))
    stores = {k: labelstore.open(v["path"]) for k, v in meta["stores"].items()}

    def arm(name: str):
        spec = ARMS[name]
        rule = {}  # FerKD arms: the setup's band rule, the arm's "rule" overriding
        if spec.get("loss") == "ferkd":
            rule = {"ferkd": {**meta["thresholds"], "epsilon": DistillConfig().ferkd["epsilon"], **spec.get("rule", {})}}

        def run(seed: int) -> dict:
            cpu = time.process_time()
            seed_everything(seed)
            model = build_model(meta["student"], len(train.classes))
            cfg = DistillConfig(**{k: v for k, v in spec.items() if k not in ("store", "rule")},
                                **rule, epochs=meta["epochs"], batch_size=64, seed=seed)
            m = train_student(model, stores[spec["store"]], train, cfg, device="cpu", progress=progress)
            return {"accuracy": evaluate(model, evals, "cpu")["accuracy"], "seconds": m["seconds"],
                    "cpu_seconds": time.process_time() - cpu, "label_counts": m["label_counts"]}

        return run

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return {n: arm(n) for n in names}
