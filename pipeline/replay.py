"""Replay: the exact views the teacher labelled, with their cached targets.

    loader = ReplayLoader(store, data, epoch=3, batch_size=128, shuffle=True, num_workers=2)
    for x, t in loader:     # x [B,3,H,W] uint8; t: dict of tensors (see ReplayLoader)
        x = loader.policy.to_input(Views.from_batch(x, t), device)
        ...

One path: ReplayLoader is a torch DataLoader over a ReplayDataset that hands out whole batches.
The records of the epoch are read once into the store's shared-memory epoch cache
(labelstore/epoch_cache.py: one copy per host, memory-mapped by the main process and every
worker) and indexed in memory per batch; images are decoded and rendered by the DataLoader
(num_workers processes, or in-process with 0). Rendering uses the recorded parameters, never
fresh randomness, so any batch size, shuffle order or worker count gives the views the teacher saw.
Epochs too large for memory: `window=w` reads in the shard-aware quasi-random order
(labelstore/order.py), which reads each shard once.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from labelstore.errors import StoreError
from labelstore.integrity import StoreMismatch
from labelstore.order import quasi_random_order
from labelstore.reader import register_param_source

from .augment import SAMPLE_VERSION, Policy, Views
from .features import feature_name, read_features
from .images import loader
from .recycle import Recycler

log = logging.getLogger(__name__)

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


def is_unlabeled(store) -> bool:
    """True for a store of an unlabelled image folder (`teach --unlabeled`): its dataset has no classes."""
    ds = store.attrs.get("dataset", {})
    return ds.get("kind") == "image_folder" and not ds.get("classes")


def open_data(store, spec):
    """The source `spec` opened as the store was built from it: an unlabelled image folder when the store
    is one (is_unlabeled), so no command needs to be told again."""
    from .images import open_source

    unlabeled = is_unlabeled(store)
    if unlabeled:
        log.info("%s: a store of an unlabelled folder: %s opened as unlabelled", store.path, spec)
    return open_source(spec, unlabeled=unlabeled)


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


def derived_params(store, epoch: int, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The augmentation parameters of views (epoch, indices) of a store that derives them (attribute
    aug_params = "derived", i.e. written without --store-params); all samples when indices is None.

        params = Policy.sample(seed, epoch, indices, source_hw[indices], num_samples)   (storage dtypes)
        partner := -1 where skipped[partner]                                              (Policy.unmix)

    exactly what the teacher stage drew, cast and rendered. LabelStore.read calls it (registered below).
    Raises StoreMismatch when the store was written under another SAMPLE_VERSION.
    """
    have = store.attrs.get("policy", {}).get("sample_version")
    if have != SAMPLE_VERSION:
        raise StoreMismatch(f"{store.path}: its augmentation parameters are derived under sample version {have}, this "
                            f"labelstore draws version {SAMPLE_VERSION}; rebuild the store (or write it with "
                            "--store-params)")
    policy = store_policy(store)
    N = store.num_samples
    idx = np.arange(N, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    hw = store.read_array("source_hw", indices=None if indices is None else idx)
    params = policy.sample(int(store.attrs["seed"]), int(epoch), idx, hw, N)
    partners = policy.partners(params, len(idx))
    mixed = partners >= 0
    if mixed.any():
        drop = np.zeros(len(idx), bool)
        drop[mixed] = store.read_array("skipped", indices=partners[mixed])
        params = policy.unmix(params, drop)
    return params


register_param_source(derived_params)


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
    float32; mc_values [n,T,K] float32 (when recorded); view_digest [n] int32 (when recorded: the
    stored 16-bit view check, integrity.view_check of the uint8 view, so a student can check
    `view_check(Views.from_batch(x, t).digests()) == t["view_digest"]`); mix_weight [n] float32 (the own
    sample's share of a mixed view, 1 if unmixed); partner [n] int64 and partner_gt [n] int64 (-1 if unmixed).
    """
    t = {"index": torch.from_numpy(rec["index"][b].astype(np.int64))}
    t["topk_values"] = torch.from_numpy(rec["topk_values"][b].astype(np.float32))
    t["topk_indices"] = torch.from_numpy(rec["topk_indices"][b].astype(np.int64))
    t["gt"] = torch.from_numpy(rec["gt"][b].astype(np.int64))
    t["gt_prob"] = torch.from_numpy(rec["gt_prob"][b].astype(np.float32))
    if "mc_values" in rec:
        t["mc_values"] = torch.from_numpy(rec["mc_values"][b].astype(np.float32))
    if "view_digest" in rec:
        t["view_digest"] = torch.from_numpy(rec["view_digest"][b].astype(np.int32))
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
                x = ds.policy.to_input(Views.from_batch(x, t), dev)

    Item j = (view of row rows[j] uint8 [3,H,W], its targets: `targets` of that one row); with
    data=None the item is the targets alone (a student whose inputs come from elsewhere).
    features=True (a store taught with --features): the targets also hold "features", float32 [n, D],
    the dequantised teacher features of the views (pipeline/features.py, read_features: the feature
    arrays are read on request, by shards, not through the epoch cache); StoreError without them.
    `batch(js)` makes a whole batch at once (what ReplayLoader uses; the DataLoader's batched
    fetch calls it too, through __getitems__). Records come from the store's shared-memory epoch
    cache (read once per epoch and host, then indexed in memory; `store.read` when the epoch does
    not fit in memory). The epoch number is shared memory too, so persistent DataLoader workers
    follow `set_epoch` of the main process without being rebuilt.
    """

    def __init__(self, store, data, epoch: int = 0, indices=None, check: bool = True, features: bool = False):
        import multiprocessing

        if check and data is not None:
            check_data(store, data)
        if features and feature_name(store) is None:
            raise StoreError(f"{store.path}: features asked for, but the store was taught without --features")
        self.store, self.data, self.policy, self.features = store, data, store_policy(store), features
        skipped = store.group["skipped"][:]
        base = np.arange(store.num_samples) if indices is None else np.asarray(indices, dtype=np.int64)
        self.rows = base[~skipped[base]]
        self._epoch = multiprocessing.Value("i", int(epoch), lock=False)  # shared with DataLoader workers
        self._recycler: tuple[int, Recycler] | None = None  # (pid, this process's recycler)
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

    def load(self) -> None:
        """Read the current epoch into the epoch cache now (else the first batch does), e.g. in the
        main process before workers start, so that they map it instead of reading it."""
        if self.store.fits_cache():
            self.store.epoch_cache.epoch(self.store, self.epoch)

    def records(self, js) -> tuple[dict, dict, np.ndarray]:
        """(records of rows[js], records of their partners (row-aligned), partner ids int64 [n])."""
        ids = self.rows[np.asarray(js, dtype=np.int64)]
        e, cache = self.epoch, self.store.fits_cache()
        rec = self.store.read(e, ids, cache=cache)
        partners = self.policy.partners(_params(rec, self.policy), len(ids))
        prec = self.store.read(e, np.maximum(partners, 0), cache=cache) if (partners >= 0).any() else rec
        return rec, prec, partners

    def batch(self, js):
        """Rows rows[js]: (x [n,3,H,W] uint8, targets dict of [n, ...] tensors), or the targets alone
        when data is None."""
        rec, prec, partners = self.records(js)
        t = self._targets(rec, prec, partners)
        if self.data is None:
            return t
        v = self._render(rec, prec, partners)
        if v.partner is not None:
            t["view_partner"], t["view_lam"] = v.partner, v.lam
        return v.x, t

    def views(self, js) -> Views:
        """The uint8 views of rows rows[js] (what a DataLoader worker of ReplayLoader makes)."""
        return self._render(*self.records(js))

    def targets(self, js) -> dict[str, torch.Tensor]:
        """The targets of rows rows[js] (what ReplayLoader's main process adds to each batch)."""
        return self._targets(*self.records(js))

    def _targets(self, rec: dict, prec: dict, partners: np.ndarray) -> dict[str, torch.Tensor]:
        t = targets(self.policy, rec, prec, partners)
        if self.features:
            t["features"] = torch.from_numpy(read_features(self.store, self.epoch, rec["index"]))
        return t

    def sources(self, js) -> tuple:
        """Rows rows[js] to render elsewhere (ReplayLoader's render_device): render_batch's arguments
        (sources: uint8 [H, W, 3] tensors, params {key: [n, ...]}, the partners' sources, None where a
        view is unmixed, and their params); render_sources(policy, that, device) renders them."""
        return self._sources(*self.records(js), torch.from_numpy)

    def _sources(self, rec: dict, prec: dict, partners: np.ndarray, wrap=lambda a: a) -> tuple:
        """Decoded in recycled memory (pipeline/recycle.py): a fresh 500x375 image costs 137 page
        faults; each process (a DataLoader worker) has its own recycler."""
        load = loader(self.data, self._empty())
        return ([wrap(load(int(i))) for i in rec["index"]], _params(rec, self.policy),
                [wrap(load(int(q))) if q >= 0 else None for q in partners], _params(prec, self.policy))

    def _empty(self):
        if self._recycler is None or self._recycler[0] != os.getpid():
            self._recycler = (os.getpid(), Recycler())
        return self._recycler[1].empty

    def _render(self, rec: dict, prec: dict, partners: np.ndarray) -> Views:
        return self.policy.render_batch(*self._sources(rec, prec, partners), empty=self._empty())

    def __getstate__(self) -> dict:  # to a DataLoader worker (spawn): without the recycler
        return {**self.__dict__, "_recycler": None}

    def __getitems__(self, js) -> list:
        b = self.batch(js)
        if self.data is None:
            return [{k: v[i] for k, v in b.items()} for i in range(len(js))]
        x, t = b
        return [(x[i], {k: v[i] for k, v in t.items()}) for i in range(len(js))]

    def __getitem__(self, j: int):
        return self.__getitems__([j])[0]


def render_sources(policy: Policy, sources: tuple, device) -> Views:
    """The Views of ReplayDataset.sources(js) rendered on `device` (pipeline/render_torch.py, the
    bytes of Policy.render_batch): each source uploaded once, the views made there."""
    from . import render_torch

    images, rows, partners, prows = sources
    up = [im.to(device, non_blocking=True) for im in images]
    pup = [None if im is None else im.to(device, non_blocking=True) for im in partners]
    return render_torch.render_batch(policy, up, rows, pup, prows, device)


class _BatchViews(torch.utils.data.Dataset):
    """Item = a batch of positions into a ReplayDataset -> (x, partner, lam) uint8 views of that
    batch, or with sources=True what rendering them takes (ReplayDataset.sources)."""

    def __init__(self, ds: ReplayDataset, sources: bool = False):
        self.ds, self.as_sources = ds, sources

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, js):
        if self.as_sources:
            return self.ds.sources(js)
        v = self.ds.views(js)
        return v.x, v.partner, v.lam


class ReplayLoader:
    """Batches (x [B,3,H,W] uint8, targets) of one epoch's recorded views.

    The consumer makes the model input on its device:
    `loader.policy.to_input(Views.from_batch(x, t), device)` (the store's mean/std)
    (view_partner uint8 [B,3,H,W] and view_lam float32 [B] come only with a MixUp policy).

    A thin wrapper over ReplayDataset(store, data, epoch, indices): a torch DataLoader whose sampler
    yields whole batches of a sample order; its num_workers processes render the views
    (ReplayDataset.views) and this process adds the targets (ReplayDataset.targets), so only
    images cross between processes. The epoch's records are read once into the shared-memory
    epoch cache by this process before the workers start, and indexed in memory by all of them. Skipped samples (undecodable at teacher
    time) are left out. `indices` restricts the epoch to a subset. features=True: the targets also
    hold "features" float32 [B, D] (ReplayDataset). render_device (e.g. "cuda"): the workers only
    decode; this process uploads each batch's sources and renders the views there, the same bytes
    (render_sources), and x (and view_partner, view_lam) come on that device.

    Order: shuffle=False: row order; shuffle=True, window=0: a uniform permutation of (seed,
    epoch); shuffle=True, window=w > 0: the quasi-random order of labelstore/order.py (shards
    shuffled, rows shuffled within windows of w shards) for epochs too large for memory, which
    reads each shard once (w <= labelstore.reader.WINDOW_SHARDS).
    """

    def __init__(self, store, data, epoch: int, batch_size: int = 128, shuffle: bool = True, seed: int = 0,
                 num_workers: int = 0, drop_last: bool = False, indices=None, window: int = 0,
                 check: bool = True, features: bool = False, render_device=None):
        self.dataset = ReplayDataset(store, data, epoch=epoch, indices=indices, check=check, features=features)
        self.render_device = None if render_device is None else torch.device(render_device)
        self.store, self.data, self.epoch = store, data, epoch
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.num_workers, self.drop_last, self.window = num_workers, drop_last, window
        self.policy = self.dataset.policy
        self.indices = self.dataset.rows

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> np.ndarray:
        """Positions into self.indices in the order the batches take them."""
        n = len(self.indices)
        if not self.shuffle:
            return np.arange(n)
        if self.window:
            a = self.store.group["topk_values"]
            return quasi_random_order(self.indices, int((a.shards or a.chunks)[1]), self.seed, self.epoch, self.window)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def __iter__(self):
        order = self.order()
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        batches = [order[b : min(stop, b + self.batch_size)] for b in range(0, stop, self.batch_size)]
        if not self.window:
            self.dataset.load()  # one read of the epoch, here, mapped by the workers
        loader = torch.utils.data.DataLoader(
            _BatchViews(self.dataset, self.render_device is not None), sampler=batches, batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_same, worker_init_fn=_numba_one_thread, persistent_workers=False,
            prefetch_factor=4 if self.num_workers else None,
        )
        for js, item in zip(batches, loader):
            if self.render_device is not None:
                v = render_sources(self.policy, item, self.render_device)
                item = (v.x, v.partner, v.lam)
            x, partner, lam = item
            t = self.dataset.targets(js)
            if partner is not None:
                t["view_partner"], t["view_lam"] = partner, lam
            yield x, t


class EpochMemo:
    """Per-epoch values of a batch replay dataset (the VideoQA and retrieval ones: a batch plan, frame
    indices, an epoch's store array), made once per (what, epoch) in each process:
    get(what, epoch, make) = make() the first time; a new epoch of `what` replaces its last one, so
    one epoch of each is kept."""

    def __init__(self) -> None:
        self._values: dict = {}  # (what, epoch) -> value

    def get(self, what: str, epoch: int, make):
        if (what, epoch) not in self._values:
            self._values = {k: v for k, v in self._values.items() if k[0] != what}
            self._values[what, epoch] = make()
        return self._values[what, epoch]


class _EpochKeys(torch.utils.data.Sampler):
    """Keys (epoch, b), b < dataset.num_batches(epoch), of the epoch last set (in the main process)."""

    def __init__(self, dataset):
        self.dataset, self.epoch = dataset, 0

    def __len__(self) -> int:
        return self.dataset.num_batches(self.epoch)

    def __iter__(self):
        return iter([(self.epoch, b) for b in range(len(self))])


def epoch_batches(dataset, num_workers: int = 0):
    """batches(epoch) over a dataset whose item (epoch, b) is batch b of that student epoch (the
    VideoQA and retrieval replay datasets): a DataLoader whose num_workers persistent processes
    decode and render the batches (in this process with 0), in order, so the batches are the same
    for any worker count. The workers are spawned, not forked (the dataset is pickled to them):
    video decoders (PyAV) hang in a forked child. The loader draws its worker seeds from a
    generator of its own, so the training's global torch RNG (dropout) is untouched by the number
    of workers and epochs. dataset.prepare(epoch), when present, runs in this process before the
    epoch's batches are made (e.g. to read the epoch's records into the shared epoch cache)."""
    keys = _EpochKeys(dataset)
    loader = torch.utils.data.DataLoader(dataset, sampler=keys, batch_size=None, num_workers=num_workers,
                                         collate_fn=_same, worker_init_fn=_numba_one_thread if num_workers else None,
                                         persistent_workers=num_workers > 0,
                                         multiprocessing_context="spawn" if num_workers else None,
                                         generator=torch.Generator())  # its worker seeds: not from torch's global RNG

    def batches(epoch: int):
        keys.epoch = epoch
        prepare = getattr(dataset, "prepare", None)
        if prepare is not None:
            prepare(epoch)
        return loader

    return batches
