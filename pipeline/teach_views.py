"""The classification teacher stage's producer: decoded images -> rendered views, in batches.

Every batch of a unit's epoch is one task on the decode pool, self-contained:

  decode   its rows' images and its views' mixing partners (each image of a unit decoded once, by the
           first task that needs it: `Decoded`)
  draw     the policy's parameters of its rows (a pure function of seed, epoch, row and source shape,
           so drawn per batch they equal those drawn for the whole unit), partners that failed to
           decode unmixed (skip_bad), the partners' own parameters
  render   the numba kernels on that pool thread (GIL released), or, on a torch device, in turn on
           the producer thread (pipeline/render_torch.py, each source uploaded once per unit)
  digest   the views' crc32c (`digests`), on the thread that rendered them, while their bytes are in
           that core's cache (on 2 cores, digesting on the teacher's thread cost that thread 13–29 % more CPU)

The producer keeps 2 x workers batch tasks in flight over the batches of all units in order, at most
one unit ahead of the one it hands out, and yields the batches in order, then the epoch's and the
unit's items. In memory: the current unit's images and those of the next unit's batches in flight
(its tasks start when fewer than 2 x workers of the current unit's are left). No task waits for another that is not running: a
task that needs an image nobody decodes yet decodes it itself, and a decode waits for nothing.
Nothing is serial between units: the next unit's first batches decode while the teacher labels the
current unit's last ones.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .images import DecodeError, loader
from .recycle import Recycler
from .stage import Item


class Decoded:
    """The decoded images of one unit (its rows and its views' partners), {row: uint8 [H, W, 3] or
    None where skip_bad skipped an undecodable image}; get(row) decodes on the calling thread unless
    another thread has (or is), then waits for that one's result. An ImageFolder decodes into the
    recycler's memory (pipeline/recycle.py)."""

    def __init__(self, source, skip_bad: bool, recycler: Recycler):
        self.skip_bad = skip_bad
        self.load = loader(source, recycler.empty)
        self._lock = threading.Lock()
        self._images: dict[int, Future] = {}

    def get(self, row: int) -> np.ndarray | None:
        with self._lock:
            fut = self._images.get(row)
            mine = fut is None
            if mine:
                fut = self._images[row] = Future()
        if mine:
            try:
                fut.set_result(self.load(row))
            except DecodeError as e:
                if self.skip_bad:
                    fut.set_result(None)
                else:
                    fut.set_exception(e)
            except BaseException as e:  # noqa: BLE001 - handed to every thread that asks for this row
                fut.set_exception(e)
        return fut.result()


@dataclass
class Program:
    """What one batch renders: rows[sel] of a unit in one epoch.

    hw int64 [n, 2] source shapes (0 where skipped), ok bool [n] decoded, params (storage dtypes,
    [n, ...], mixing partners that failed to decode unmixed); keep: positions (in sel) of the views,
    partner [len(keep)] their partner rows (-1: none), partner_params their parameters or None."""

    sel: np.ndarray
    hw: np.ndarray
    ok: np.ndarray
    params: dict
    keep: np.ndarray
    partner: list
    partner_params: dict | None

    def sources(self, rows: np.ndarray, get) -> tuple:
        """render_batch's arguments with the sources from get(row)."""
        ids = rows[self.sel][self.keep].tolist()
        return ([get(r) for r in ids], {k: v[self.keep] for k, v in self.params.items()},
                [get(q) if q >= 0 else None for q in self.partner], self.partner_params)


def draw(policy, seed: int, num_samples: int, decoded: Decoded, rows: np.ndarray, sel: np.ndarray,
         epoch: int) -> Program:
    """Decode rows[sel] and their partners (if not yet) and draw their parameters for `epoch`."""
    ids = rows[sel]
    images = [decoded.get(int(r)) for r in ids.tolist()]
    ok = np.array([im is not None for im in images], dtype=bool)
    hw = np.array([im.shape[:2] if im is not None else (0, 0) for im in images], dtype=np.int64).reshape(-1, 2)
    params = policy.sample(seed, epoch, ids, hw, num_samples)
    partners = policy.partners(params, len(ids))
    # a bad partner stops the run unless skip_bad; replay.derived_params unmixes the same from `skipped`
    bad = {q for q in sorted(set(partners[partners >= 0].tolist())) if decoded.get(q) is None}
    params = policy.unmix(params, np.array([q in bad for q in partners.tolist()], dtype=bool))
    partners = policy.partners(params, len(ids))
    keep = np.flatnonzero(ok)
    uniq = np.unique(partners[partners >= 0])
    p_params = None
    if len(uniq):
        p_hw = np.array([decoded.get(q).shape[:2] for q in uniq.tolist()], dtype=np.int64).reshape(-1, 2)
        at = np.searchsorted(uniq, partners[keep])  # (no partner: row 0 of them, unused)
        p_params = {k: v[at] for k, v in policy.sample(seed, epoch, uniq, p_hw, num_samples).items()}
    return Program(sel, hw, ok, params, keep, partners[keep].tolist(), p_params)


@dataclass
class _Unit:
    key: tuple[int, int]
    rows: np.ndarray  # int64 [n]
    decoded: Decoded
    hw: np.ndarray  # int64 [n, 2]
    ok: np.ndarray  # bool [n]
    params: list = field(default_factory=list)  # the current epoch's batch parameters, in order
    uploaded: dict = field(default_factory=dict)  # {row: uint8 [H, W, 3] tensor on the render device}


def views(source, policy, cfg, units, num_samples: int, pool: ThreadPoolExecutor, recycler: Recycler,
          device: torch.device | None = None):
    """Producer (runs on a background thread): per unit and epoch, Item("batch") with (positions in the
    unit's rows, uint8 Views of them or None when all were skipped, their crc32c digests uint32 [n] or
    None without cfg.digests), then Item("epoch") with the epoch's
    parameters [n, ...], then per unit Item("unit") with (hw [n, 2], skipped [n]). Rendered on
    `device` by pipeline/render_torch.py when given, else by the numba kernels on the pool, into
    the recycler's memory, as the images are decoded."""
    from . import render_torch

    S, V, N, B = cfg.shard_rows, cfg.group_size, num_samples, cfg.batch_size

    def steps():  # (unit, epoch, sel): a batch; sel None: the epoch's end; epoch None: the unit's end
        for g, p in units:
            rows = np.arange(p * S, min(N, (p + 1) * S))
            u = _Unit((g, p), rows, Decoded(source, cfg.skip_bad, recycler), np.zeros((len(rows), 2), np.int64),
                      np.zeros(len(rows), bool))
            for e in range(g * V, min(cfg.epochs, (g + 1) * V)):
                for j0 in range(0, len(rows), B):
                    yield u, e, np.arange(j0, min(len(rows), j0 + B))
                yield u, e, None
            yield u, None, None

    def digests(x) -> np.ndarray | None:
        return x.digests() if cfg.digests and x is not None else None

    def batch(u: _Unit, e: int, sel: np.ndarray):
        prog = draw(policy, cfg.seed, N, u.decoded, u.rows, sel, e)
        if device is not None or not len(prog.keep):
            return prog, None, None
        x = policy.render_batch(*prog.sources(u.rows, u.decoded.get), parallel=False, empty=recycler.empty)
        return prog, x, digests(x)

    def upload(u: _Unit, row: int) -> torch.Tensor:
        if row not in u.uploaded:
            u.uploaded[row] = torch.from_numpy(u.decoded.get(row)).to(device, non_blocking=True)
        return u.uploaded[row]

    window = 2 * cfg.decode_workers
    todo, pending, live = steps(), collections.deque(), collections.deque()  # live: units with steps in pending
    nxt = next(todo, None)
    try:
        while nxt is not None or pending:
            while nxt is not None and sum(f is not None for *_, f in pending) < window and (
                    live and nxt[0] is live[-1] or len(live) < 2):
                u, e, sel = nxt
                if not live or live[-1] is not u:
                    live.append(u)
                pending.append((u, e, sel, pool.submit(batch, u, e, sel) if sel is not None else None))
                nxt = next(todo, None)
            u, e, sel, fut = pending.popleft()
            if sel is not None:
                prog, x, dig = fut.result()
                u.hw[sel], u.ok[sel] = prog.hw, prog.ok
                u.params.append(prog.params)
                if device is not None and len(prog.keep):
                    x = render_torch.render_batch(policy, *prog.sources(u.rows, lambda r: upload(u, r)))
                    dig = digests(x)
                yield Item("batch", u.key, e, u.rows, (sel[prog.keep], x, dig))
            elif e is not None:
                params = {k: np.concatenate([p[k] for p in u.params]) for k in u.params[0]}
                u.params = []
                yield Item("epoch", u.key, e, u.rows, params)
            else:
                live.popleft()  # this unit's images go with it
                yield Item("unit", u.key, None, u.rows, (u.hw, ~u.ok))
    finally:  # stopped early (an error, a closed generator): drop the tasks not started
        for *_, fut in pending:
            if fut is not None:
                fut.cancel()
