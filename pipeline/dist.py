"""Several processes on one job (torchrun / torch.distributed): who am I, which device, the group.

torchrun starts each process with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set;
`dist_env` reads them (explicit --rank / --world-size flags win), `process_group` joins the
processes (gloo on CPU, nccl on CUDA) when they were started that way.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist

from labelstore.errors import ConfigError


def dist_env(rank: int | None = None, world_size: int | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank): the given values, else RANK / WORLD_SIZE / LOCAL_RANK, else (0, 1, 0)."""
    env = os.environ
    r = int(env.get("RANK", 0)) if rank is None else int(rank)
    w = int(env.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
    local = int(env.get("LOCAL_RANK", 0)) if rank is None and "LOCAL_RANK" in env else 0
    if w < 1 or not 0 <= r < w:
        raise ConfigError(f"rank {r} / world size {w}: need 0 <= rank < world size")
    return r, w, local


def local_device(local_rank: int, device: str | None = None) -> str | None:
    """The device of this process: `device` when given, cuda:LOCAL_RANK when CUDA is present, else None
    (labelstore.pipeline.teacher.pick_device's default, the CPU)."""
    if device is not None:
        return device
    return f"cuda:{local_rank}" if torch.cuda.is_available() else None


def launched_together(world_size: int) -> bool:
    """True when the processes can form a torch.distributed group (torchrun set MASTER_ADDR/PORT)."""
    return world_size > 1 and "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ


@contextlib.contextmanager
def process_group(world_size: int, local_rank: int = 0) -> Iterator[bool]:
    """Join the torch.distributed group of a torchrun job for the body (yields whether joined):
    nccl when CUDA is present (this process on cuda:LOCAL_RANK), gloo otherwise."""
    if not launched_together(world_size) or dist.is_initialized():
        yield dist.is_initialized()
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield True
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def epoch_share(rows: np.ndarray, epoch_seed: list[int], rank: int, world_size: int) -> np.ndarray:
    """This rank's rows of one epoch: every rank draws the same permutation of `rows` from
    `epoch_seed`, pads it by wrapping to a multiple of world_size (as DistributedSampler does),
    and takes every world_size-th row from position `rank`. Shares are disjoint when
    len(rows) % world_size == 0, cover `rows`, and have equal lengths (equal DDP steps)."""
    order = rows[np.random.default_rng(epoch_seed).permutation(len(rows))]
    n = -(-len(order) // world_size) * world_size
    if len(order):
        order = np.resize(order, n)  # wraps around
    return order[rank::world_size]


def rank_units(units: list[tuple[int, int]], rank: int, world_size: int) -> list[tuple[int, int]]:
    """This rank's work units (epoch group g, partition p) of a store shared by world_size ranks:
    those with p % world_size == rank (a partition's rows are decoded by one rank only)."""
    return [u for u in units if u[1] % world_size == rank]


def create_on_rank0(out: str, rank: int, world_size: int, local_rank: int, create) -> tuple[bool, bool]:
    """Rank 0 runs `create()`; every rank returns once the store exists, with the (resume, overwrite)
    flags that join it. Under torchrun the ranks meet at a barrier; started by hand, ranks > 0 wait
    for the store's state to leave "creating" (so pass --overwrite with torchrun, or to a fresh path)."""
    from labelstore.writer import wait_for_store

    with process_group(world_size, local_rank) as together:
        if rank == 0:
            create()
        if together:
            barrier()
        elif rank > 0:
            wait_for_store(out)
    return True, False
