"""Training students on the replayed views of a store.

Three sources of targets, on identical views (the store's recorded parameters):
  "cache"  — the stored top-k soft labels (no teacher runs);
  "online" — the teacher run live on each batch (the side-by-side baseline): its top-k are taken
             live and go through the same loss, so the two differ only by the store's float16;
  "none"   — hard labels only (no teacher at all).

Soft losses (`loss=`), with q the teacher distribution over C classes:
  "fkd"   soft_label_ce: -sum_c q_c log softmax(s/T)_c, q rebuilt from top-k ("marginal" or
          "renorm" fill);
  "ferkd" FerKD label adaptation from the stored gt probability (drop / soften / keep);
  "adl"   adl_loss on the dense q: adl_mode "binary" (the paper: one sigmoid per class, the
          Σ q^θ normaliser) or "softmax";
  "feat-mse" FitNets: soft_label_ce on the student's logits + feature_mse(P(f_s), f_t);
  "simkd" SimKD: feature_mse(P(f_s), f_t) alone, the student predicting h_t(P(f_s));
  "srrl"  SRRL: CE(gt) on the student's logits + feature_mse + CE(q, softmax(h_t(P(f_s))));
          (f_t the store's teacher feature of the view, P the student's projector, h_t the
          teacher's classifier head from the store: trainers/feature_student.py)
plus `hard_weight` x the hard-label term: CE with the ground truth (mixed views: w·CE(gt) +
(1-w)·CE(partner gt)); with ADL's binary mode the per-class BCE against the same (mixed) one-hot
target, summed over classes, as the paper's detection loss is per class.

Semi-supervised (ADL's scheme, `unlabeled=(store, folder)`): every batch also holds views of an
unlabelled folder's store; `select_unlabeled` keeps those the teacher is confident about (top-1
probability >= select_threshold) with its top-1 class as their hard label, and drops the rest.
"""

from __future__ import annotations

import time
from itertools import zip_longest
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from labelstore.errors import ConfigError
from labelstore.pipeline.dist import epoch_share
from labelstore.pipeline.augment import Views
from labelstore.pipeline.replay import ReplayLoader

from . import losses
from .feature_student import FEATURE_LOSSES, FeatureStudent
from .fit import evaluate
from .loop import RECORD_KEYS, LoopConfig, StepResult, save, train


@dataclass
class DistillConfig:
    mode: str = "cache"  # cache | online | none
    loss: str = "fkd"  # fkd | ferkd | adl | feat-mse | simkd | srrl
    epochs: int = 0  # 0 = the store's epochs (student epoch e replays store epoch e mod E)
    batch_size: int = 128
    optimizer: str = "adamw"  # sgd | adamw (labelstore.trainers.loop.make_optimizer)
    lr: float | None = None  # None: the optimizer's default in labelstore.trainers.fit
    weight_decay: float | None = None
    temperature: float = 1.0
    fill: str = "marginal"
    hard_weight: float = 0.0
    adl_mode: str = "binary"  # binary | softmax (loss="adl")
    select_threshold: float = 0.9  # unlabelled views: teacher top-1 probability needed to join (semi-supervised)
    ferkd: dict = field(default_factory=lambda: {"low": 0.05, "high": 0.95, "epsilon": 0.1})
    num_workers: int = 0
    seed: int = 0


def _hard_loss(logits: torch.Tensor, t: dict, binary: bool = False) -> torch.Tensor:
    """The hard-label term against the (mixed) one-hot target, mean over labelled views (0 if none):

        y = w·onehot(gt) + (1-w)·onehot(partner_gt)        (the partner term only for mixed views)
        softmax: w·CE(x, gt) + (1-w)·CE(x, partner_gt)  =  -Σ_c y_c log softmax(x)_c
        binary:  Σ_c BCE(σ(x_c), y_c)                    (ADL's per-class sigmoid students)
    """
    gt, pg, w = t["gt"], t["partner_gt"], t["mix_weight"]
    if binary:
        C = logits.shape[1]
        y = F.one_hot(gt.clamp(min=0), C).float() * w[:, None]
        y = y + F.one_hot(pg.clamp(min=0), C).float() * ((1 - w) * (pg >= 0))[:, None]
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(1)
    else:
        loss = F.cross_entropy(logits, gt.clamp(min=0), reduction="none") * w
        loss = loss + F.cross_entropy(logits, pg.clamp(min=0), reduction="none") * (1 - w) * (pg >= 0)
    m = gt >= 0
    return loss[m].mean() if m.any() else logits.sum() * 0


def select_unlabeled(x: torch.Tensor, t: dict, probs: torch.Tensor | None, threshold: float, num_classes: int,
                     fill: str = "marginal") -> tuple[torch.Tensor, dict, torch.Tensor | None, dict]:
    """ADL's unlabelled-data selection on one batch (adl_select_unlabeled on the teacher's q [B, C]):

        labelled view (gt >= 0):                       kept as it is
        unlabelled, max_c q_c >= threshold:            kept, gt := argmax_c q_c (a whole-view label:
                                                       mix_weight 1, no partner label)
        unlabelled otherwise:                          dropped from the batch

    q: the live teacher's probabilities (online) or the dense label rebuilt from the stored top-k
    (its max is the stored top-1). Returns the kept (x, t, probs) and counters.
    """
    q = probs if probs is not None else losses.dense_soft_labels(t["topk_values"], t["topk_indices"], num_classes, fill)
    labels, keep = losses.adl_select_unlabeled(q, t["gt"], threshold)
    pseudo = t["gt"] < 0
    t = {**t, "gt": labels, "mix_weight": torch.where(pseudo, torch.ones_like(t["mix_weight"]), t["mix_weight"]),
         "partner_gt": torch.where(pseudo, torch.full_like(t["partner_gt"], -1), t["partner_gt"])}
    info = {"unlabeled_views": int(pseudo.sum()), "unlabeled_selected": int((pseudo & keep).sum())}
    t = {k: v[keep] for k, v in t.items()}
    return x[keep], t, (probs[keep] if probs is not None else None), info


def _cat_batches(a: tuple, b: tuple | None) -> tuple:
    """Two (x, targets) batches as one (the keys both have); b may be None (its loader ran out)."""
    if b is None:
        return a
    (xa, ta), (xb, tb) = a, b
    return torch.cat([xa, xb]), {k: torch.cat([ta[k], tb[k]]) for k in ta.keys() & tb.keys()}


def student_loss(logits: torch.Tensor, t: dict, cfg: DistillConfig, num_classes: int,
                 teacher_probs: torch.Tensor | None = None, projected: torch.Tensor | None = None,
                 head: torch.nn.Linear | None = None) -> tuple[torch.Tensor, dict]:
    """The student's objective for one batch; returns (loss, counters).

    Feature losses: projected [B, D_t] = P(f_s), head = the teacher's classifier (FeatureStudent);
    t["features"] [B, D_t] the store's teacher features; for simkd, logits = head(projected).
    """
    info: dict = {}
    if cfg.mode == "none":
        return _hard_loss(logits, t), info
    if cfg.loss in FEATURE_LOSSES:
        if projected is None or "features" not in t or (head is None and cfg.loss != "feat-mse"):
            raise ConfigError(f"loss {cfg.loss!r} needs the student's projected features, the store's teacher "
                              "features and (simkd, srrl) the teacher head: a FeatureStudent on a store taught with "
                              "--features")
    if teacher_probs is not None:  # online teacher: the same targets the store holds, computed live
        vals, idx = teacher_probs.topk(t["topk_values"].shape[1], dim=1)
    else:
        vals, idx = t["topk_values"], t["topk_indices"]
    if cfg.loss == "fkd":
        loss = losses.soft_label_ce(logits, vals, idx, fill=cfg.fill, temperature=cfg.temperature)
    elif cfg.loss == "adl":
        q = losses.dense_soft_labels(vals, idx, num_classes, fill=cfg.fill)
        loss = losses.adl_loss(logits, q, mode=cfg.adl_mode)
    elif cfg.loss == "feat-mse":
        loss = (losses.soft_label_ce(logits, vals, idx, fill=cfg.fill, temperature=cfg.temperature)
                + losses.feature_mse(projected, t["features"]))
    elif cfg.loss == "simkd":
        loss, _ = losses.simkd_loss(projected, t["features"], head)
    elif cfg.loss == "srrl":
        q = losses.dense_soft_labels(vals, idx, num_classes, fill=cfg.fill)
        loss = _hard_loss(logits, t) + losses.srrl_loss(projected, t["features"], head, q,
                                                        temperature=cfg.temperature)
    elif cfg.loss == "ferkd":
        gt_prob = t["gt_prob"] if teacher_probs is None else teacher_probs.gather(1, t["gt"].clamp(min=0)[:, None])[:, 0]
        q, keep, info = losses.ferkd_targets(vals, idx, t["gt"], gt_prob, num_classes, fill=cfg.fill, **cfg.ferkd)
        loss = losses.soft_target_ce(logits, q, cfg.temperature)[keep].mean() if keep.any() else logits.sum() * 0
    else:
        raise ConfigError(f"unknown loss {cfg.loss!r}: choose fkd, ferkd, adl, {', '.join(FEATURE_LOSSES)}")
    if cfg.hard_weight:
        binary = cfg.loss == "adl" and cfg.adl_mode == "binary"
        loss = loss + cfg.hard_weight * _hard_loss(logits, t, binary)
    return loss, info


def train_student(student: torch.nn.Module, store, data, cfg: DistillConfig, *, eval_batches=None,
                  teacher: torch.nn.Module | None = None, unlabeled: tuple | None = None,
                  device: str | torch.device = "cpu", out_dir: str | None = None, progress: bool = True) -> dict:
    """Train `student` from the store's replayed views; returns metrics (also written to out_dir).

    unlabeled: (store, data) of an unlabelled folder (semi-supervised, select_unlabeled): each step
    also draws ceil(N_u / steps per epoch) of its views, so both sets are seen once per epoch.

    The loop is labelstore.trainers.loop.train (optimiser cfg.optimizer, its warmup-cosine
    schedule over all steps). Inside a torch.distributed group of W > 1 processes every rank draws
    the same permutation of each epoch's (non-skipped) rows and trains on its share
    (labelstore.pipeline.dist.epoch_share); losses are averaged over ranks, rank 0 alone evaluates
    and writes out_dir, and metrics["ddp"] records per epoch the views of each rank and the
    distinct rows seen, and each rank's final weights hash.
    """
    if cfg.mode == "online" and teacher is None:
        raise ConfigError("mode 'online' needs a teacher (--online-teacher)")
    feature_loss = cfg.mode != "none" and cfg.loss in FEATURE_LOSSES
    if feature_loss and (cfg.mode != "cache" or not isinstance(student, FeatureStudent)):
        raise ConfigError(f"loss {cfg.loss!r} trains a FeatureStudent (trainers/feature_student.py) from the "
                          f"store's teacher features: --mode cache (got {cfg.mode!r})")
    if cfg.epochs < 0 or cfg.batch_size < 1 or not 0 <= cfg.seed < 2**63:
        raise ConfigError(f"epochs (--epochs) must be >= 0, batch_size (--batch-size) >= 1 and seed (--seed) in "
                          f"[0, 2**63); got {cfg.epochs}, {cfg.batch_size}, {cfg.seed}")
    if unlabeled is not None:
        _check_unlabeled(store, unlabeled[0], cfg)
    dev = torch.device(device)
    if teacher is not None:
        teacher = teacher.to(dev).eval()
    epochs = cfg.epochs or store.epochs
    C = store.num_classes
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    if world == 1:
        loaders = [ReplayLoader(store, data, epoch=e % store.epochs, batch_size=cfg.batch_size, shuffle=True,
                                seed=cfg.seed + e, num_workers=cfg.num_workers, features=feature_loss)
                   for e in range(epochs)]
    else:
        rows = np.flatnonzero(~store.read_array("skipped").astype(bool))
        loaders = [ReplayLoader(store, data, epoch=e % store.epochs, batch_size=cfg.batch_size, shuffle=False,
                                num_workers=cfg.num_workers, indices=epoch_share(rows, [cfg.seed, e], rank, world),
                                features=feature_loss)
                   for e in range(epochs)]
    u_loaders = [None] * epochs
    if unlabeled is not None:
        if world > 1:
            raise ConfigError("unlabelled data (semi-supervised) trains in one process")
        store_u, data_u = unlabeled
        u_loaders = [ReplayLoader(store_u, data_u, epoch=e % store_u.epochs, shuffle=True, seed=cfg.seed + 7919 + e,
                                  batch_size=-(-store_u.num_samples // len(ld)), num_workers=cfg.num_workers)
                     for e, ld in enumerate(loaders)]
    teacher_seconds = 0.0

    def batches(e: int):
        loader, u_loader = loaders[e], u_loaders[e]
        for batch, u_batch in zip_longest(loader, u_loader or ()):
            yield _cat_batches(*(_to_device(b, ld, dev) if b is not None else None
                                 for b, ld in ((batch, loader), (u_batch, u_loader)))), u_loader is not None

    def step(model, item) -> StepResult:
        nonlocal teacher_seconds
        (x, t), semi = item
        probs = None
        if cfg.mode == "online":
            t1 = time.perf_counter()
            with torch.no_grad():
                probs = teacher(x).float().softmax(1)
            teacher_seconds += time.perf_counter() - t1
        rows = t["index"] if world > 1 else None
        sel = {}
        if semi:
            x, t, probs, sel = select_unlabeled(x, t, probs, cfg.select_threshold, C, cfg.fill)
        if feature_loss:
            logits, projected = model(x, with_features=True)
            loss, info = student_loss(logits, t, cfg, C, projected=projected, head=student.teacher_head)
        else:
            loss, info = student_loss(model(x), t, cfg, C, probs)
        return StepResult(loss, len(x), {k: int(v) for k, v in {**info, **sel}.items()}, rows)

    loop = LoopConfig(epochs=epochs, optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                      progress=progress, desc=cfg.mode)
    res = train(student, batches, step, loop, lengths=[len(ld) for ld in loaders], device=dev, ddp=True,
                evaluate=None if eval_batches is None else (lambda: evaluate(student, eval_batches(), dev)))
    counts: dict = {}
    history = []
    for rec in res["history"]:
        rec = dict(rec)
        for k in list(rec):  # the step's counters, summed over all epochs
            if k not in RECORD_KEYS and not k.startswith("eval_"):
                counts[k] = counts.get(k, 0) + rec.pop(k)
        rec["views"] = int(rec.pop("n"))
        history.append(rec)
    metrics = {"config": asdict(cfg), "history": history, "seconds": res["seconds"],
               "teacher_seconds": teacher_seconds, "label_counts": counts,
               "final": history[-1] if history else {}}
    if "ddp" in res:
        metrics["ddp"] = res["ddp"]
    save(out_dir, student, metrics)
    return metrics


def _to_device(batch: tuple, loader, dev) -> tuple[torch.Tensor, dict]:
    """A replayed (uint8 views, targets) batch as (normalised float32 x, targets) on the device."""
    x, t = batch
    t = dict(t)
    x = loader.policy.to_input(Views(x, t.pop("view_partner", None), t.pop("view_lam", None)), dev)
    return x, {k: v.to(dev, non_blocking=True) for k, v in t.items()}


def _check_unlabeled(store, store_u, cfg: DistillConfig) -> None:
    """ConfigError unless the unlabelled store can join the labelled one's batches."""
    if cfg.mode == "none" or cfg.loss not in ("fkd", "adl"):
        raise ConfigError(f"unlabelled data needs teacher targets and loss fkd or adl (mode {cfg.mode!r}, "
                          f"loss {cfg.loss!r})")
    for key in ("num_classes", "top_k", "mc_passes"):
        if store_u.attrs.get(key) != store.attrs.get(key):
            raise ConfigError(f"unlabelled store {store_u.path}: {key} {store_u.attrs.get(key)} differs from the "
                              f"labelled store's {store.attrs.get(key)}")
    if store_u.attrs["policy"]["output_size"] != store.attrs["policy"]["output_size"]:
        raise ConfigError(f"unlabelled store {store_u.path}: view size differs from the labelled store's")
