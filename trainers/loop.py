"""The one training loop: every student and built-in teacher trains through `train`.

A task drives it with its batches and its loss:

    cfg = LoopConfig(epochs=4, lr=1e-3, grad_clip=1.0)
    result = train(model, batches, step, cfg, lengths=[len(plan) for plan in plans])

    batches(epoch) -> iterable of batches (a DataLoader over the task's replay dataset, say)
    step(model, batch) -> StepResult(loss, n, sums, rows)

The loop owns what is the same for every task: the optimiser (`make_optimizer`), the schedule
(`lr_factor`, set before every step), DistributedDataParallel inside a torch.distributed group
for a task that shards its data per rank (torchrun; gloo on CPU, nccl on CUDA, pipeline/dist.py), autocast + GradScaler on CUDA when asked,
gradient clipping, the progress bar, per-epoch metrics, the non-finite-loss check, and `save`
(weights + metrics.json, rank 0). Seeding stays with the caller (`seed_everything` before the
model is built), so the model's initialisation and the loop's dropout draw from one stream.

Schedule: with steps_per_epoch n_e known for every epoch (`lengths`), the LR of step i of epoch e is

    lr * lr_factor(p, warmup),   p = (n_0 + ... + n_{e-1} + i) / total,   total = sum_e n_e
                                 (total capped at max_steps)

(linear warmup from 0.1 over the first `warmup` fraction, then cosine to 0); without lengths
p = e / epochs and there is no warmup (the LR changes at epoch boundaries only).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from labelstore.errors import ConfigError
from labelstore.pipeline.teacher import autocast_context, autocast_dtype, weights_hash

RECORD_KEYS = ("epoch", "loss", "n", "steps", "seconds", "lr")  # what `train` records per epoch besides the step's sums
DEFAULT_LR = {"sgd": 0.1, "adamw": 5e-3}
DEFAULT_WD = {"sgd": 5e-4, "adamw": 5e-2}


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (CPU + all CUDA devices). deterministic=True also
    makes cuDNN pick deterministic kernels (slower)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def lr_factor(progress: float, warmup: float = 0.15, final: float = 0.0) -> float:
    """The schedule, in [0, 1], of training progress p in [0, 1]:
    linear warmup 0.1 + 0.9 p / warmup over the first `warmup` fraction, then
    final + (1 - final) (1 + cos(pi q)) / 2 with q = (p - warmup) / (1 - warmup)."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return 0.1 + 0.9 * progress / warmup
    p = (progress - warmup) / max(1.0 - warmup, 1e-8)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * p))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation parameters (all 1-d params)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, optimizer: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum 0.9) or AdamW (betas 0.9, 0.99); no weight decay on 1-d parameters."""
    groups = _param_groups(model, weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))
    raise ConfigError(f"unknown optimizer {optimizer!r}; use 'sgd' or 'adamw'")


@dataclass
class LoopConfig:
    """Optimiser, schedule and progress settings of one training run."""

    epochs: int = 1
    optimizer: str = "adamw"  # sgd | adamw (make_optimizer)
    lr: float | None = None  # None: DEFAULT_LR[optimizer]
    weight_decay: float | None = None  # None: DEFAULT_WD[optimizer]
    warmup: float = 0.15  # fraction of the steps with linear warmup (lr_factor)
    grad_clip: float | None = None  # max gradient norm
    amp: bool = False  # autocast (bf16, or fp16 with a GradScaler) on CUDA
    max_steps: int | None = None  # stop after this many steps (benchmarks)
    progress: bool = False  # a progress bar per epoch
    desc: str = "train"  # the progress bar's label

    def resolved(self) -> tuple[float, float]:
        """(lr, weight_decay) with the optimiser's defaults filled in."""
        if self.optimizer not in DEFAULT_LR:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; use 'sgd' or 'adamw'")
        lr = DEFAULT_LR[self.optimizer] if self.lr is None else self.lr
        wd = DEFAULT_WD[self.optimizer] if self.weight_decay is None else self.weight_decay
        return lr, wd


class StepResult(NamedTuple):
    """What a task's step returns for one batch."""

    loss: torch.Tensor  # scalar, minimised
    n: int | torch.Tensor  # weight of this loss in the epoch's mean loss (views, valid rows, 1 per step)
    sums: dict[str, Any] = {}  # numbers summed over the epoch (counters, per-part losses)
    rows: Any = None  # the store rows of the batch (recorded per rank under DDP)


Step = Callable[[nn.Module, Any], StepResult]


def _world() -> tuple[int, int]:
    world = dist.get_world_size() if dist.is_initialized() else 1
    return world, dist.get_rank() if world > 1 else 0


def train(model: nn.Module, batches: Callable[[int], Iterable], step: Step, cfg: LoopConfig, *,
          lengths: Sequence[int] | None = None, device: str | torch.device = "cpu",
          evaluate: Callable[[], dict] | None = None, on_epoch: Callable[[dict], None] | None = None,
          ddp: bool = False) -> dict:
    """Train `model` (in place, on `device`) for cfg.epochs epochs of batches(epoch); returns

        {"history": [per epoch {"epoch", "loss", "n", "steps", "seconds", "lr", **sums, eval_*}],
         "steps", "seconds", "lr", "weight_decay"}  (+ "ddp" in a group of W > 1 processes)

    epoch loss = sum(loss * n) / sum(n) over its steps (over all ranks under DDP; NaN when n = 0;
    FloatingPointError when it is not finite). lengths[e]: steps of epoch e (the schedule's
    total). evaluate(): metrics of the model, prefixed eval_, after the last epoch (every epoch
    with cfg.progress), on rank 0. on_epoch(record): after each epoch.
    ddp=True (the task's batches are this rank's share of the data): inside a torch.distributed
    group of W > 1 processes the model is wrapped in DistributedDataParallel (the step gets the
    wrapper; gradients averaged over ranks), BatchNorm buffers come from rank 0 at the end, and
    "ddp" records per epoch the views of each rank and the distinct rows seen (StepResult.rows),
    and each rank's final weights hash. The model is left in eval mode.
    """
    from tqdm import tqdm

    from labelstore.progress import LogLines, is_terminal

    if cfg.epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {cfg.epochs}")
    lr, wd = cfg.resolved()
    dev = torch.device(device)
    world, rank = _world() if ddp else (1, 0)
    model.to(dev)
    wrapped = model
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = make_optimizer(model, cfg.optimizer, lr, wd)
    use_amp = cfg.amp and autocast_dtype(dev) is not None
    scaler = torch.amp.GradScaler(dev.type, enabled=use_amp and autocast_dtype(dev) == torch.float16)
    total = sum(lengths) if lengths is not None else None
    if total is not None and cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    history, ddp_epochs = [], []
    steps, done = 0, 0  # steps taken; steps of the schedule before this epoch
    t_start = time.perf_counter()
    for e in range(cfg.epochs):
        if cfg.max_steps is not None and steps >= cfg.max_steps:
            break
        model.train()
        t0 = time.perf_counter()
        tot = torch.zeros((), dtype=torch.float64, device=dev)
        n = torch.zeros((), dtype=torch.float64, device=dev)
        sums: dict[str, Any] = {}
        seen, k, cur = [], 0, lr
        it = batches(e)
        bar_args = dict(total=None if lengths is None else lengths[e], disable=not cfg.progress or rank > 0,
                        desc=f"{cfg.desc} epoch {e + 1}/{cfg.epochs}", unit="batch")
        bar = (tqdm(it, leave=False, dynamic_ncols=True, **bar_args) if is_terminal()  # a bar per epoch
               else LogLines(it, step=1.0, **bar_args))  # elsewhere (a log): one line per epoch, at its end
        for batch in bar:
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
            if total is not None:
                cur = lr * lr_factor((done + k) / max(total, 1), cfg.warmup)
            else:
                cur = lr * lr_factor(e / cfg.epochs, 0.0)
            for g in opt.param_groups:
                g["lr"] = cur
            with autocast_context(dev, enabled=use_amp):
                r = step(wrapped, batch)
            opt.zero_grad(set_to_none=True)
            scaler.scale(r.loss).backward()
            if cfg.grad_clip is not None:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            steps, k = steps + 1, k + 1
            with torch.no_grad():
                tot += r.loss.detach().double() * r.n
                n += r.n
            for key, v in r.sums.items():  # tensors stay on the device: no host sync per step
                sums[key] = sums.get(key, 0) + (v.detach() if isinstance(v, torch.Tensor) else v)
            if world > 1 and r.rows is not None:
                seen.append(np.asarray(r.rows.cpu() if isinstance(r.rows, torch.Tensor) else r.rows))
            if cfg.progress and rank == 0 and (k % 5 == 1 or (lengths is not None and k == lengths[e])):
                bar.set_postfix(loss=f"{tot.item() / max(n.item(), 1):.4f}", lr=f"{cur:.3g}")
        bar.close()
        done += lengths[e] if lengths is not None else k
        tot_f, n_f = float(tot), float(n)
        if world > 1:  # the loss over all ranks' views; which rows each rank saw
            red = torch.tensor([tot_f, n_f], dtype=torch.float64)
            dist.all_reduce(red)
            tot_f, n_f = red.tolist()
            shares = [None] * world
            dist.all_gather_object(shares, np.concatenate(seen).tolist() if seen else [])
            ddp_epochs.append({"views_per_rank": [len(s) for s in shares],
                               "distinct_rows": len(set().union(*map(set, shares)))})
        sums = {key: v.item() if isinstance(v, torch.Tensor) else v for key, v in sums.items()}
        rec = {"epoch": e, "loss": tot_f / n_f if n_f else float("nan"), "n": n_f, "steps": k,
               "seconds": time.perf_counter() - t0, "lr": cur, **sums}
        if n_f and not math.isfinite(rec["loss"]):
            raise FloatingPointError(f"the training loss became {rec['loss']} in epoch {e} (lr {lr}); try a lower lr")
        if evaluate is not None and rank == 0 and (e == cfg.epochs - 1 or cfg.progress):
            rec.update({f"eval_{key}": v for key, v in evaluate().items()})
        history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
    out = {"history": history, "steps": steps, "seconds": time.perf_counter() - t_start, "lr": lr, "weight_decay": wd}
    if world > 1:
        for b in model.buffers():  # BatchNorm statistics from rank 0, as DDP does before each forward
            dist.broadcast(b, 0)
        hashes = [None] * world
        dist.all_gather_object(hashes, weights_hash(model))
        out["ddp"] = {"world_size": world, "per_epoch": ddp_epochs, "weights_sha256_per_rank": hashes}
    model.eval()
    return out


def save(out_dir: str | None, model: nn.Module, metrics: dict, name: str = "student.pt") -> None:
    """Rank 0 writes out_dir/name (the state dict) and out_dir/metrics.json; no-op without out_dir."""
    if not out_dir or _world()[1] != 0:
        return
    os.makedirs(out_dir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out_dir, name))
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
