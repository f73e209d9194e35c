"""Replay: the exact views the teacher labelled, with their cached targets.

    loader = ReplayLoader(store, data, epoch=3, batch_size=128, shuffle=True, num_workers=2)
    for x, t in loader:     # x [B,3,H,W] uint8; t: dict of tensors (see ReplayLoader)
        x = loader.policy.to_input(Views(x, t.get("view_partner"), t.get("view_lam")), device)
        ...

Records are read window by window (a few batches at a time, only the chunks those samples
live in) on a background thread one window ahead; images are decoded and rendered by a torch
DataLoader (num_workers processes, or in-process with 0). Rendering uses the recorded
parameters, never fresh randomness, so any batch size, shuffle order or worker count gives
the views the teacher saw.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from labelstore.integrity import StoreMismatch

from .augment import Policy, Views
from .prefetch import prefetch

TARGET_KEYS = ("topk_values", "topk_indices", "gt", "gt_prob", "mc_values")


def check_data(store, data) -> None:
    """Refuse a dataset other than the one the store was built from (names what differs)."""
    fp = data.fingerprint()
    have = store.attrs.get("dataset", {})
    if have.get("num_samples") != fp.get("num_samples") or have.get("digest") != fp.get("digest"):
        raise StoreMismatch(
            f"{store.path}: built from another dataset: the store has {have.get('kind')} {have.get('root', '')} "
            f"with {have.get('num_samples')} samples (digest {str(have.get('digest'))[:12]}), given "
            f"{fp.get('kind')} with {fp.get('num_samples')} samples (digest {str(fp.get('digest'))[:12]})"
        )
    check_decoder(store, data)


def _libraries(decoder: dict) -> dict:
    return {k: str(v).split(" ")[0] for k, v in decoder.items()}


def check_decoder(store, data) -> None:
    """Refuse, by name, a source that decodes with other libraries than the teacher's (the decoded
    pixels are part of the views). Another version of the same library is accepted: the store's
    view digests (`labelstore verify`) check that its pixels are the same."""
    have = store.attrs.get("dataset", {}).get("decoder")
    describe = getattr(data, "describe", None)
    given = describe().get("decoder") if describe is not None else None
    if have is None and given is None:
        return
    if have is None or given is None or _libraries(have) != _libraries(given):
        raise StoreMismatch(f"{store.path}: the teacher's views were decoded with {have or 'no decoder (raw arrays)'}, "
                            f"this source decodes with {given or 'no decoder (raw arrays)'}: install the same "
                            "decoders (see docs/store-format.md, dataset.decoder) to replay these views")


def store_policy(store) -> Policy:
    return Policy.from_json(store.attrs["policy"])


def _rows(params: dict, j: int) -> dict:
    return {k: v[j] for k, v in params.items()}


def _params(rec: dict, policy: Policy) -> dict:
    return {k: rec[k] for k in policy.param_spec()}


def replay_views(store, data, epoch: int, indices, policy: Policy | None = None, device=None) -> Views:
    """uint8 views of `indices` at `epoch`, in order, exactly as the teacher got them.

    device: None renders with the numba kernels on the CPU; a torch device ("cuda", or "cpu" for
    the torch path on the CPU) uploads each decoded source once and renders there
    (pipeline/render_torch.py, the same bytes); the Views' tensors are then on that device."""
    policy = policy or store_policy(store)
    idx = np.asarray(indices, dtype=np.int64)
    params = _params(store.read(epoch, idx, include_rows=False), policy)
    partners = policy.partners(params, len(idx))
    pparams = _params(store.read(epoch, np.maximum(partners, 0), include_rows=False), policy)
    srcs = {int(i): data.load(int(i)) for i in set(idx.tolist()) | set(partners[partners >= 0].tolist())}
    if device is not None:
        from . import render_torch

        dev = torch.device(device)
        srcs = {i: torch.from_numpy(im).to(dev, non_blocking=True) for i, im in srcs.items()}
        return render_torch.render_batch(policy, [srcs[int(i)] for i in idx], params,
                                         [srcs[int(q)] if q >= 0 else None for q in partners], pparams, dev)
    return policy.render_batch([srcs[int(i)] for i in idx], params,
                               [srcs[int(q)] if q >= 0 else None for q in partners], pparams)


def replay_inputs(store, data, epoch: int, indices, policy: Policy | None = None) -> torch.Tensor:
    """float32 [n, 3, H, W]: the teacher's input for the views of `indices` at `epoch`."""
    policy = policy or store_policy(store)
    return policy.to_input(replay_views(store, data, epoch, indices, policy))


def _numba_one_thread(worker_id: int) -> None:
    """DataLoader workers render one batch each on one core (the workers are the parallelism)."""
    import numba

    numba.set_num_threads(1)


def _same(v):
    return v


def targets(policy: Policy, rec: dict, prec: dict, partners: np.ndarray, b: slice = slice(None)) -> dict[str, torch.Tensor]:
    """Targets of rows `b` of a block of records `rec` (partner records `prec`, row-aligned).

    index [n] int64; topk_values [n,K] float32; topk_indices [n,K] int64; gt [n] int64; gt_prob [n]
    float32; mc_values [n,T,K] float32 (when recorded); mix_weight [n] float32 (the own sample's
    share of a mixed view, 1 if unmixed); partner [n] int64 and partner_gt [n] int64 (-1 if unmixed).
    """
    t = {"index": torch.from_numpy(rec["index"][b].astype(np.int64))}
    t["topk_values"] = torch.from_numpy(rec["topk_values"][b].astype(np.float32))
    t["topk_indices"] = torch.from_numpy(rec["topk_indices"][b].astype(np.int64))
    t["gt"] = torch.from_numpy(rec["gt"][b].astype(np.int64))
    t["gt_prob"] = torch.from_numpy(rec["gt_prob"][b].astype(np.float32))
    if "mc_values" in rec:
        t["mc_values"] = torch.from_numpy(rec["mc_values"][b].astype(np.float32))
    p = partners[b]
    params = _params(rec, policy)
    t["mix_weight"] = torch.from_numpy(policy.mix_weight_array({k: v[b] for k, v in params.items()}, len(p))
                                       .astype(np.float32))
    t["partner"] = torch.from_numpy(p)
    t["partner_gt"] = torch.from_numpy(np.where(p >= 0, prec["gt"][b].astype(np.int64), -1))
    return t


class ReplayDataset(torch.utils.data.Dataset):
    """Map-style dataset over one store epoch's recorded views (skipped samples left out).

        ds = ReplayDataset(store, data, epoch=0)
        sampler = DistributedSampler(ds, num_replicas=W, rank=r)
        loader = DataLoader(ds, batch_size=128, sampler=sampler, num_workers=4, pin_memory=True,
                            persistent_workers=True)
        for e in range(epochs):
            ds.set_epoch(e % store.epochs); sampler.set_epoch(e)
            for x, t in loader:            # x [B,3,H,W] uint8, t: dict as `targets`
                x = to_input(x, t.get("view_partner"), t.get("view_lam"), policy.mean, policy.std, dev)

    Item j = (view of row rows[j] uint8 [3,H,W], its targets: `targets` of that one row). The
    epoch's records are read whole (a few tens of bytes per view) in each process that renders, the
    first time it needs them after `set_epoch`; the epoch lives in shared memory, so persistent
    DataLoader workers follow `set_epoch` of the main process without being rebuilt.
    """

    def __init__(self, store, data, epoch: int = 0, indices=None, check: bool = True):
        import multiprocessing

        if check:
            check_data(store, data)
        self.store, self.data, self.policy = store, data, store_policy(store)
        skipped = store.group["skipped"][:]
        base = np.arange(store.num_samples) if indices is None else np.asarray(indices, dtype=np.int64)
        self.rows = base[~skipped[base]]
        self._epoch = multiprocessing.Value("i", int(epoch), lock=False)  # shared with DataLoader workers
        self._loaded: tuple[int, dict, dict, np.ndarray] | None = None
        self.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        if not 0 <= epoch < self.store.epochs:
            raise IndexError(f"{self.store.path}: epoch {epoch} out of range (store has {self.store.epochs} epochs)")
        self._epoch.value = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def _records(self) -> tuple[dict, dict, np.ndarray]:
        e = self.epoch
        if self._loaded is None or self._loaded[0] != e:
            rec = self.store.read(e, self.rows)
            partners = self.policy.partners(_params(rec, self.policy), len(self.rows))
            prec = self.store.read(e, np.maximum(partners, 0))
            self._loaded = (e, rec, prec, partners)
        return self._loaded[1:]

    def __getitem__(self, j: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rec, prec, partners = self._records()
        spec = self.policy.param_spec()
        q = int(partners[j])
        v = self.policy.render_batch([self.data.load(int(self.rows[j]))], {k: rec[k][j : j + 1] for k in spec},
                                     [self.data.load(q) if q >= 0 else None], {k: prec[k][j : j + 1] for k in spec})
        t = {k: x[0] for k, x in targets(self.policy, rec, prec, partners, slice(j, j + 1)).items()}
        if v.partner is not None:
            t["view_partner"], t["view_lam"] = v.partner[0], v.lam[0]
        return v.x[0], t

    def __getstate__(self):  # workers re-read the records of the shared epoch themselves
        return {**self.__dict__, "_loaded": None}


class _RenderDataset(torch.utils.data.Dataset):
    """Item = a batch [(sample id, its param row, partner id, partner row)] -> (x, partner, lam) uint8 views."""

    def __init__(self, data, policy: Policy):
        self.data, self.policy = data, policy

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, batch):
        rows = {k: np.stack([it[1][k] for it in batch]) for k in self.policy.param_spec()}
        prows = {k: np.stack([it[3][k] if it[3] is not None else np.zeros_like(it[1][k]) for it in batch])
                 for k in self.policy.param_spec()}
        v = self.policy.render_batch([self.data.load(it[0]) for it in batch], rows,
                                     [self.data.load(it[2]) if it[2] >= 0 else None for it in batch], prows)
        return v.x, v.partner, v.lam


class ReplayLoader:
    """Batches (x [B,3,H,W] uint8, targets) of one epoch's recorded views.

    The consumer makes the model input on its device:
    `to_input(x, t.get("view_partner"), t.get("view_lam"), policy.mean, policy.std, device)`
    (view_partner uint8 [B,3,H,W] and view_lam float32 [B] come only with a MixUp policy).

    The convenience loader for one process: records are read window by window, one window ahead on
    a thread. For a standard DataLoader (samplers, DistributedSampler, pin_memory, persistent
    workers) use ReplayDataset.

    Skipped samples (undecodable at teacher time) are left out. `indices` restricts the epoch to
    a subset. `window` = batches whose records are read together, one window ahead.
    """

    def __init__(self, store, data, epoch: int, batch_size: int = 128, shuffle: bool = True, seed: int = 0,
                 num_workers: int = 0, drop_last: bool = False, indices=None, window: int = 8,
                 check: bool = True):
        if check:
            check_data(store, data)
        self.store, self.data, self.epoch = store, data, epoch
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.num_workers, self.drop_last, self.window = num_workers, drop_last, window
        self.policy = store_policy(store)
        skipped = store.group["skipped"][:]
        base = np.arange(store.num_samples) if indices is None else np.asarray(indices, dtype=np.int64)
        self.indices = base[~skipped[base]]

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        g = np.random.default_rng([self.seed, self.epoch])
        return self.indices[g.permutation(len(self.indices))]

    def _windows(self) -> Iterator[tuple[np.ndarray, dict, dict]]:
        """(ids of a window, their records, the records of their partners): runs ahead on a thread."""
        order = self._order()
        n = len(self) * self.batch_size if self.drop_last else len(order)
        step = self.batch_size * self.window
        for w0 in range(0, n, step):
            ids = order[w0 : min(n, w0 + step)]
            rec = self.store.read(self.epoch, ids)
            partners = self.policy.partners(_params(rec, self.policy), len(ids))
            prec = self.store.read(self.epoch, np.maximum(partners, 0), include_rows=True)
            yield ids, rec, prec, partners

    def _items(self, windows) -> Iterator[list]:
        for ids, rec, prec, partners in windows:
            params, pparams = _params(rec, self.policy), _params(prec, self.policy)
            for b0 in range(0, len(ids), self.batch_size):
                yield [(int(ids[j]), _rows(params, j), int(partners[j]), _rows(pparams, j) if partners[j] >= 0 else None)
                       for j in range(b0, min(len(ids), b0 + self.batch_size))]

    def __iter__(self):
        windows = list()  # records of the windows in flight, consumed in order with the batches
        record_stream = prefetch(self._windows(), depth=2)

        def tee():
            for w in record_stream:
                windows.append(w)
                yield w

        loader = torch.utils.data.DataLoader(
            _RenderDataset(self.data, self.policy), sampler=self._items(tee()), batch_size=None,
            num_workers=self.num_workers, collate_fn=_same, worker_init_fn=_numba_one_thread,
            persistent_workers=False, prefetch_factor=4 if self.num_workers else None,
        )
        pos = 0  # position inside windows[0]
        for x, partner, lam in loader:
            ids, rec, prec, partners = windows[0]
            b = slice(pos, pos + len(x))
            t = targets(self.policy, rec, prec, partners, b)
            if partner is not None:
                t["view_partner"], t["view_lam"] = partner, lam
            yield x, t
            pos += len(x)
            if pos >= len(ids):
                windows.pop(0)
                pos = 0
