"""The teacher-stage driver: one loop that runs any task (classification, retrieval, VideoQA, yours).

A task says WHAT is labelled; `run_stage` does the rest, the same way for every task:

  open     writer.open_or_create(out, task.build, check):  a new store (built under the "creating"
           protocol), or the existing one after `check_resume` compared the task's `resume_keys`
  units    the pending work units (epoch group g, partition p) of this rank: p % world_size == rank
  produce  task.inputs(units, pool) on a background thread (decode + render, `depth` items ahead)
  label    task.label(item) on this thread (the teacher) -> the blocks to write and a view count;
           torch runs it with cores - decode_workers intra-op threads (at least 1: `teacher_threads`)
  write    writer.BackgroundWriter: blocks on a writer thread; a unit is flagged done after its
           item of kind "unit", so a killed run keeps every finished unit and resumes the rest
  finalize writer.finalize -> {"units", "seconds", "complete", **task.stats(count, seconds)}

The task interface (see docs/adding-a-task.md):

  name: str                      store attribute "task" and the progress label
  count_unit: str                what task.label counts ("view", "pair")
  attrs: dict                    the store attributes (JSON)
  resume_keys: tuple[str, ...]   attributes a resumed run must share, dotted for nested ones
  build(at) -> None              create the arrays at path `at` (writer.create) and fill per-row ones
  inputs(units, pool) -> Iterator[Item]    producer: a unit's items, its last of kind "unit"
  label(item) -> (writes, count) consumer: writes = [(array, first row, block, epoch or None)]
  work(units) -> int             total count of a run over `units` (progress bar)
  stats(count, seconds) -> dict  the task's run statistics
"""

from __future__ import annotations

import ctypes
import contextlib
import errno
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
import zarr

from labelstore import writer
from labelstore.errors import StoreError, StoreMismatch, TeacherOutputError

from .dist import rank_units
from .prefetch import prefetch

log = logging.getLogger(__name__)

Write = tuple[str, int, np.ndarray, "int | None"]  # (array name, first row, block, epoch or None)


@dataclass
class Item:
    """One piece of a work unit handed from the producer to the teacher.

    kind: "batch" (teacher inputs of some rows), "epoch" (an epoch of the unit is complete) or
    "unit" (the unit is complete: its done flag is set after this item's writes)."""

    kind: str
    unit: tuple[int, int]
    epoch: int | None
    rows: np.ndarray  # int64 [n]: the unit's rows
    data: Any = None


class Task(Protocol):
    name: str
    count_unit: str
    attrs: dict
    resume_keys: tuple[str, ...]

    def build(self, at: str) -> None: ...
    def inputs(self, units: list[tuple[int, int]], pool: ThreadPoolExecutor) -> Iterator[Item]: ...
    def label(self, item: Item) -> tuple[list[Write], int]: ...
    def work(self, units: list[tuple[int, int]]) -> int: ...
    def stats(self, count: int, seconds: float) -> dict: ...


# --------------------------------------------------------------------------------------
# Resume and teacher-output checks, shared by every task
# --------------------------------------------------------------------------------------


def _lookup(attrs: dict, key: str) -> Any:
    for part in key.split("."):
        attrs = attrs.get(part) if isinstance(attrs, dict) else None
    return attrs


_POLICY_OPTIONS = {"scale": "--crop-scale", "output_size": "--image-size", "frame_size": "--frame-size"}  # CLI options


def _first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """(dotted path, a's value, b's value) of the first place two JSON values differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            d = _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
            if d:
                return d
        return None
    if (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
            and any(isinstance(v, (dict, list)) for v in a + b)):  # a list of numbers is one value
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if a == b else (where, a, b)


def _policy_difference(have: Any, want: Any) -> str:
    """The first setting two policy JSONs differ in, named with its option: 'ops[0].config.scale is
    [0.08, 1.0] in the store, [0.5, 1.0] now (--crop-scale)'."""
    have = {k: v for k, v in (have or {}).items() if k != "digest"}
    want = {k: v for k, v in (want or {}).items() if k != "digest"}
    ops = [[op.get("type") for op in p.get("ops", [])] for p in (have, want)]
    if ops[0] != ops[1]:
        return f"the policy's ops are {ops[0]} in the store, {ops[1]} now (--policy)"
    d = _first_difference(have, want)
    if d is None:
        return "the policy differs from the store's"
    where, a, b = d
    option = _POLICY_OPTIONS.get(where.rsplit(".", 1)[-1])
    return f"policy {where} is {a!r} in the store, {b!r} now" + (f" ({option})" if option else "")


def check_resume(have: dict, want: dict, keys: Sequence[str], path: str) -> None:
    """StoreMismatch naming the first of `keys` (dotted: "dataset.digest") where the store's
    attributes `have` differ from this run's `want` (for the policy: the setting and both values)."""
    for key in keys:
        a, b = _lookup(have, key), _lookup(want, key)
        if a == b:
            continue
        head, _, field = key.partition(".")
        if head == "policy":
            msg = _policy_difference(have.get("policy"), want.get("policy"))
        elif head == "teach_config":
            msg = f"{field} is {a!r} in the store, {b!r} now"
        elif field:
            msg = (f"{head} {field} differs (store {a!r}, now {b!r}): another {head} than the one the store "
                   "was started with")
        elif isinstance(b, dict):
            msg = f"the {key} differs from the store's"
        else:
            msg = f"{key} is {a!r} in the store, {b!r} now"
        raise StoreMismatch(f"{path}: cannot resume: {msg}")


def check_teacher_output(x: torch.Tensor, epoch: int, rows: np.ndarray, name: Callable[[int], str],
                         what: str = "output", columns: tuple[int, str] | None = None) -> None:
    """TeacherOutputError unless x [n, ...] (one record per row of `rows`) is finite and, when
    columns = (width, noun) is given, has `width` columns. The NaN/inf message names the epoch
    and up to 10 rows with name(row)."""
    if columns is not None and (x.ndim != 2 or x.shape[1] != columns[0]):
        raise TeacherOutputError(f"teacher returned {what} of shape {list(x.shape)} for {len(rows)} views, "
                                 f"the store expects [{len(rows)}, {columns[0]}] ({columns[0]} {columns[1]})")
    finite = torch.isfinite(x).reshape(len(x), -1).all(1).cpu().numpy()
    if not finite.all():
        bad = np.asarray(rows)[~finite][:10].tolist()
        raise TeacherOutputError(f"teacher {what} is NaN/inf at epoch {epoch} for rows {bad} ({[name(r) for r in bad]})")


# --------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------


def data_paths(attrs: Any) -> tuple[str, ...]:
    """Every local path the task reads (values of "root" / "path" anywhere in its attributes):
    what --overwrite must never delete."""
    if isinstance(attrs, dict):
        own = tuple(str(v) for k, v in attrs.items() if k in ("root", "path") and isinstance(v, str) and v)
        return own + tuple(p for v in attrs.values() for p in data_paths(v))
    if isinstance(attrs, list):
        return tuple(p for v in attrs for p in data_paths(v))
    return ()


def open_store(task: Task, out: str, *, resume: bool = False, overwrite: bool = False,
               join: bool = False) -> zarr.Group:
    """The task's store at `out`: created atomically, or opened after check_resume."""
    def check(group: zarr.Group) -> None:
        check_resume(group.attrs.asdict(), task.attrs, task.resume_keys, out)

    return writer.open_or_create(out, task.build, check, resume=resume, overwrite=overwrite, join=join,
                                 protect=data_paths(task.attrs))


def _any_done(group: zarr.Group) -> bool:
    try:
        return bool(np.asarray(group[writer.PROGRESS][...]).any())
    except Exception:  # noqa: BLE001 - unreadable: keep the store
        return True


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
_held = [0]  # stages running in this process
_held_lock = threading.Lock()


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[None]:
    """While the stage runs, memory freed in the process stays in it for the next allocation (glibc:
    mallopt M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 2^31 - 1; elsewhere nothing changes); afterwards both
    get glibc's default values back and malloc_trim(0) returns what is free to the system.

    By default glibc maps blocks over its mmap threshold (at most 32 MiB) from the system and
    unmaps them on free, so every page is faulted in again (167 page faults and 0.4 ms of CPU per
    224-px view on a 2-core VM when the classification stage allocated its arrays afresh,
    docs/benchmarks.md). The classification stage's large arrays are now recycled
    (pipeline/recycle.py: glibc still gives back the empty heaps of its per-thread arenas), with
    and without this setting at equal CPU per view; the other tasks' stages allocate afresh."""
    try:
        libc = ctypes.CDLL(None)
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        yield
        return
    with _held_lock:
        _held[0] += 1
        if _held[0] == 1:
            mallopt(_M_MMAP_MAX, 0)
            mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        with _held_lock:
            _held[0] -= 1
            if _held[0] == 0:
                mallopt(_M_MMAP_MAX, 65536)  # glibc's defaults
                mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
                trim(0)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. under `taskset`)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def teacher_threads(decode_workers: int) -> Iterator[int]:
    """While the stage runs, torch's intra-op threads = max(1, cores - decode_workers) (cores: those
    this process may run on) when idle OpenMP threads spin in this process, then the previous count
    again; where they sleep (labelstore._OMP_PASSIVE), torch keeps its count.

    Torch's OpenMP threads spin after each parallel region when torch was imported before
    labelstore (so OMP_WAIT_POLICY=PASSIVE from `import labelstore` came too late) and the variable
    was not set: at one thread per core beside the decoders that took 0.27 ms of CPU per 224-px view
    (25 % of the stage's CPU) on 2 cores with a near-free teacher, so the cores are split between
    the decode/render workers and the teacher instead. Sleeping threads cost nothing while the
    decoders run, and a CPU teacher then has every core when they wait: on 2 cores with 2 decode
    workers, a resnet-m teacher at 32 px labelled 759-772 views/s with 2 threads and 408-422 with
    the split's 1 (docs/benchmarks.md). A GPU teacher needs no CPU threads."""
    from labelstore import _OMP_PASSIVE

    before = torch.get_num_threads()
    n = before if _OMP_PASSIVE else max(1, usable_cores() - decode_workers)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def run_stage(task: Task, out: str, *, resume: bool = False, overwrite: bool = False, rank: int = 0,
              world_size: int = 1, max_units: int | None = None, decode_workers: int = 2,
              progress: bool = False, depth: int = 4) -> dict:
    """Fill the store at `out` with `task`'s labels (see the module docstring); returns run statistics.

    max_units stops after that many of this rank's pending units (an interrupted run; resume=True
    finishes it). world_size > 1: ranks share one store, each labelling its partitions.
    """
    opened: list[zarr.Group] = []
    try:
        return _run_stage(task, out, opened, resume=resume, overwrite=overwrite, rank=rank, world_size=world_size,
                          max_units=max_units, decode_workers=decode_workers, progress=progress, depth=depth)
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        raise StoreError(store_write_error(out, e, created=bool(opened))) from e


# errno of a write the user can fix: a full disk, a quota, a read-only file system, no permission
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def store_write_error(out: str, e: OSError, created: bool) -> str:
    """The one line for a failed write: the path, the reason, and how to go on."""
    where = f" ({e.filename})" if e.filename else ""
    if created:
        then = ("every work unit finished so far is kept: fix that (free space, make it writable) and rerun "
                "with --resume to finish the rest")
    else:
        then = "the store could not be opened for writing: rerun once it can be written"
    return f"{out}: cannot write the store{where}: {e.strerror or e}; {then}"


def _run_stage(task: Task, out: str, opened: list, *, resume: bool, overwrite: bool, rank: int, world_size: int,
               max_units: int | None, decode_workers: int, progress: bool, depth: int) -> dict:
    from labelstore import location
    from labelstore.progress import progress_bar

    fresh = overwrite or not location.group_exists(out)
    group = open_store(task, out, resume=resume, overwrite=overwrite, join=world_size > 1)
    opened.append(group)
    if group.attrs.get("state") == "complete":  # --resume of a finished store: nothing to do, nothing written
        return {**task.stats(0, 0.0), "units": 0, "seconds": 0.0, "complete": True, "already_complete": True}
    units = rank_units(writer.pending_units(group), rank, world_size)[:max_units]
    bar = progress_bar(total=task.work(units), unit=task.count_unit, disable=not progress, desc=f"teach-{task.name}",
                       smoothing=0.1)
    log.info("%s: rank %d of %d writes %d work units (%d %ss)", out, rank, world_size, len(units), task.work(units),
             task.count_unit)
    t0, count = time.perf_counter(), 0
    try:
        with (keep_freed_memory(), teacher_threads(decode_workers), ThreadPoolExecutor(decode_workers) as pool,
              writer.BackgroundWriter(group) as bg):
            for item in prefetch(task.inputs(units, pool), depth=depth):
                writes, n = task.label(item)
                for name, start, block, epoch in writes:
                    bg.write(name, start, block, epoch=epoch)
                if item.kind == "unit":
                    bg.done(item.unit)
                count += n
                bar.update(n)
    except BaseException:
        # a store this run created that holds no finished unit is removed: a later run starts afresh
        # (rather than resuming against settings that never produced a label)
        if fresh and world_size == 1 and not _any_done(group):
            location.remove(out)
        raise
    bar.close()
    seconds = time.perf_counter() - t0
    complete = writer.finalize(group)
    log.info("%s: %d %ss in %.1fs, %s", out, count, task.count_unit, seconds, "complete" if complete else "incomplete")
    return {**task.stats(count, seconds), "units": len(units), "seconds": seconds, "complete": complete}
