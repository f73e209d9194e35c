"""`labelstore bench --scale`: every read path of a store of ImageNet-1k size, measured in one run; and
the one writer of synthetic ImageNet-size stores (write_store).

The store is written through the project's real teacher stage (`run_stage`, `ClassificationTask`,
the background writer, the real schema and codecs) with precomputed synthetic records in place of
decode, render and teacher (SyntheticImages, SyntheticTask below). What it holds, per (epoch,
sample), is shaped like a strong teacher on random-resized crops of ImageNet-1k:

- samples in class order (as an ImageFolder lists them), 732..1300 per class (ImageNet-1k's range);
  sample ids `nXXXXXXXX/nXXXXXXXX_<i>.JPEG`; source sizes mostly 500 x {375, 333, 500, 281}, else
  random in [150, 800];
- teacher logits over C classes (teacher_topk): z_c ~ N(0, 1); the ground truth gets + N(8, 4²);
  each class has 9 fixed confusable classes (random ids) with + U(1, 4) + N(0, 1). The top of the
  C - 10 background logits comes from their order statistics (exponential spacings), their
  partition sum from its normal approximation. p = softmax(z): top-1 = ground truth in ~80 % of
  views, top-1 p median ~0.6;
- view checks: of uniform random 32-bit view digests (a check of distinct views is incompressible);
- augmentation parameters: the crop-flip policy's own `sample` at 224 px on the source sizes,
  derived by readers (default) or stored as aug/* (store_params).

Then measured:

  read        shuffled batches through store.read (epoch cache, derived parameters filled in at
              load) and through the old per-batch chunk reads (zarr oindex of the chunks a batch
              touches, parameters derived per batch), records/s
  dataset     ReplayDataset (targets only) through a DataLoader with 0/2/4 workers, records/s,
              and each worker's unique memory (smaps: private pages outside the shared cache)
  open/info   labelstore.open in this process; `labelstore info --json` and
              `labelstore inspect --json` as subprocesses (wall and CPU seconds)
  xarray      store.to_xarray() open time
  bytes       stored bytes per view per array (LabelStore.bytes_per_view_table)
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import labelstore
from labelstore import reader
from labelstore.integrity import json_digest
from labelstore.pipeline.augment import make_policy
from labelstore.pipeline.replay import ReplayDataset
from labelstore.pipeline.stage import Item, run_stage
from labelstore.pipeline.teach import ClassificationTask, TeachConfig, check_config

IMAGENET_TRAIN = 1_281_167
NUM_CLASSES = 1000
CONFUSABLE = 9  # fixed confusable classes per class


def class_counts(num_samples: int, num_classes: int, g: np.random.Generator) -> np.ndarray:
    """int64 [C] images per class in [732, 1300], summing to num_samples (when that fits)."""
    c = g.integers(732, 1301, num_classes).astype(np.int64)
    c = np.maximum(1, np.round(c * num_samples / c.sum()).astype(np.int64))
    c[-1] += num_samples - c.sum()
    return c


def confusions(num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(int64 [C, 9] each class's confusable classes, float64 [C, 9] their logit boosts ~ U(1, 4))."""
    g, C = np.random.default_rng([seed, 0]), num_classes
    conf = np.stack([g.choice(np.delete(np.arange(C), c), CONFUSABLE, replace=False) for c in range(C)])
    return conf, g.uniform(1, 4, (C, CONFUSABLE))


def teacher_topk(gt: np.ndarray, g: np.random.Generator, conf: np.ndarray, boost: np.ndarray, k: int) -> tuple:
    """(top-k probabilities float32 [n, k] descending, their class ids int64 [n, k], p[gt] float32 [n]) of
    the synthetic teacher of the module docstring for ground truths gt [n]."""
    C, n, nconf = len(conf), len(gt), conf.shape[1]
    special = g.standard_normal((n, 1 + nconf))
    special[:, 0] += 8.0 + 4.0 * g.standard_normal(n)
    special[:, 1:] += boost[gt]
    M, nbg = C - 1 - nconf, k + 1  # background classes; the top nbg of them can enter the top-k
    u = 1.0 - np.cumsum(g.standard_exponential((n, nbg)), 1) / (M + 1)
    background = torch.special.ndtri(torch.from_numpy(u)).numpy()
    bg_sum = M * np.exp(0.5) + np.sqrt(M * (np.e**2 - np.e)) * g.standard_normal(n)  # sum of exp(N(0,1)) over M
    ids = np.concatenate([gt[:, None], conf[gt], g.integers(0, C, (n, nbg))], 1)
    for j in range(1 + nconf, ids.shape[1]):  # background ids distinct from the others of the row
        for _ in range(ids.shape[1]):
            clash = (ids[:, :j] == ids[:, j : j + 1]).any(1)
            if not clash.any():
                break
            ids[clash, j] = (ids[clash, j] + 1) % C
    z = np.concatenate([special, background], 1)
    m = np.maximum(z.max(1, keepdims=True), 0.0)
    Z = np.exp(special - m).sum(1) + bg_sum * np.exp(-m[:, 0])
    p = np.exp(z - m) / Z[:, None]
    order = np.argsort(-p, 1, kind="stable")[:, :k]
    return (np.take_along_axis(p, order, 1).astype(np.float32), np.take_along_axis(ids, order, 1),
            p[:, 0].astype(np.float32))


class SyntheticImages:
    """An ImageSource of N synthetic ImageNet-like samples (module docstring): ids, labels, sizes;
    nothing to decode."""

    kind = "synthetic-imagenet"

    def __init__(self, n: int, num_classes: int = NUM_CLASSES, seed: int = 0):
        g = np.random.default_rng(seed)
        counts = class_counts(n, num_classes, g)
        self.labels = np.repeat(np.arange(num_classes), counts).astype(np.int64)  # class folders, files sorted
        wnid = np.sort(g.choice(np.arange(1_440_764, 15_075_141), num_classes, replace=False))
        self.classes = [f"n{w:08d}" for w in wnid]
        self.ids = [f"{self.classes[c]}/{self.classes[c]}_{i}.JPEG"
                    for c, m in enumerate(counts) for i in np.sort(g.choice(60_000, m, replace=False)).tolist()]
        common = g.random(n) < 0.8
        self.hw = np.stack([np.where(common, g.choice([375, 333, 500, 281], n), g.integers(150, 801, n)),
                            np.where(common, 500, g.integers(150, 801, n))], 1).astype(np.int64)  # [N, 2]
        self.seed = seed

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int):
        raise NotImplementedError("synthetic benchmark images are never decoded")

    def src_shape(self, i: int) -> tuple[int, int]:
        return tuple(self.hw[i])

    def fingerprint(self) -> dict:
        return {"kind": self.kind, "num_samples": len(self), "num_classes": len(self.classes),
                "digest": json_digest({"kind": self.kind, "n": len(self), "seed": self.seed})}

    def describe(self) -> dict:
        return {"root": f"synthetic:{len(self)}"}


class SyntheticTask(ClassificationTask):
    """ClassificationTask with precomputed records: inputs() yields each unit's epochs as one batch of
    synthetic digests (no decode, no render) with the policy's own parameters, targets() returns the
    synthetic teacher's records (teacher_topk)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conf, self.boost = confusions(self.num_classes, self.cfg.seed)

    def inputs(self, units, pool):
        cfg, N = self.cfg, len(self.source)
        S, V = cfg.shard_rows, cfg.group_size
        for g, p in units:
            rows = np.arange(p * S, min(N, (p + 1) * S))
            hw = self.source.hw[rows]
            for e in range(g * V, min(cfg.epochs, (g + 1) * V)):
                params = self.policy.sample(cfg.seed, e, rows, hw, N)
                r = np.random.default_rng([cfg.seed, e, p])
                yield Item("batch", (g, p), e, rows, (np.arange(len(rows)), None,
                                                      r.integers(0, 2**32, len(rows), dtype=np.uint64).astype(np.uint32)))
                yield Item("epoch", (g, p), e, rows, params)
            yield Item("unit", (g, p), None, rows, (hw, np.zeros(len(rows), bool)))

    def targets(self, x, epoch: int, ids: np.ndarray) -> dict[str, np.ndarray]:
        r = np.random.default_rng([self.cfg.seed, 1 + epoch, int(ids[0])])
        vals, idx, gp = teacher_topk(self.gt[ids], r, self.conf, self.boost, self.cfg.top_k)
        return {"topk_values": vals, "topk_indices": idx, "gt_prob": gp}


def write_store(path: str, n: int = IMAGENET_TRAIN, epochs: int = 4, seed: int = 0,
                shard_rows: int = TeachConfig.shard_rows, chunk_rows: int = TeachConfig.chunk_rows,
                store_params: bool = False) -> dict:
    """The synthetic store at `path` (replaced) through run_stage (see the module docstring), in the
    teacher stage's default layout unless told; parameters derived unless store_params. Its run
    statistics."""
    src = SyntheticImages(n, seed=seed)
    policy = make_policy("crop-flip", (224, 224))
    cfg = TeachConfig(epochs=epochs, seed=seed, top_k=5, batch_size=shard_rows, shard_rows=shard_rows,
                      chunk_rows=chunk_rows, store_params=store_params)
    check_config(cfg, NUM_CLASSES)
    task = SyntheticTask(src, policy, cfg, {"name": "synthetic", "weights_sha256": "0" * 64}, NUM_CLASSES,
                         device="cpu")
    return run_stage(task, path, overwrite=True, decode_workers=1)


# ---------------------------------------------------------------------------------------------
# memory of a process, from /proc


def unique_memory(pid: int, shared_prefix: str | None = None) -> dict[str, int]:
    """Bytes of process `pid` from /proc/<pid>/smaps: uss = private pages (clean + dirty) of every mapping
    except files under `shared_prefix` (the epoch cache); pss = proportional set size of all mappings;
    cache_rss = resident pages of the mappings under `shared_prefix` (shared with the other processes)."""
    uss = pss = cache = 0
    in_cache = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if not head.endswith(":"):  # a mapping's header line: address perms offset dev inode [path]
                parts = line.split(None, 5)
                in_cache = bool(shared_prefix) and len(parts) == 6 and parts[5].strip().startswith(shared_prefix)
                continue
            if head in ("Private_Clean:", "Private_Dirty:") and not in_cache:
                uss += int(line.split()[1]) * 1024
            elif head == "Pss:":
                pss += int(line.split()[1]) * 1024
            elif head == "Rss:" and in_cache:
                cache += int(line.split()[1]) * 1024
    return {"uss": uss, "pss": pss, "cache_rss": cache}


class _Probe(torch.utils.data.Dataset):
    """Item = (a batch of positions of a label-only ReplayDataset, measure?) -> (its targets, this process's
    memory when measure, else None)."""

    def __init__(self, ds: ReplayDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, item):
        js, measure = item
        t = self.ds.batch(js)
        return t, ({"pid": os.getpid(), **unique_memory(os.getpid(), self.ds.store.epoch_cache.path)}
                   if measure else None)


def _same(x):
    return x


class _Batches(torch.utils.data.Sampler):
    """The batches of the pass in progress (set between passes of persistent workers)."""

    def __init__(self):
        self.items: list = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def dataset_pass(store, epoch: int, workers: int, batch_size: int = 1024, max_batches: int | None = None,
                 seed: int = 0) -> dict:
    """A label-only ReplayDataset (data=None) over a shuffled epoch, in batches of `batch_size`:

      main_records_per_s  ReplayDataset.targets in this process (ReplayLoader's label path: its
                          workers only render)
      records_per_s       the targets made in `workers` DataLoader workers (persistent) and sent
                          to this process (0: in this process), timed after the first batch
      worker_uss_max      the largest unique memory of a worker after the pass (smaps, private pages
                          outside the epoch cache), measured in a second short pass
    """
    ds = ReplayDataset(store, None, epoch=epoch)
    t0 = time.perf_counter()
    ds.load()
    load_s = time.perf_counter() - t0
    order = np.random.default_rng([seed, epoch]).permutation(len(ds))
    batches = [order[b : b + batch_size] for b in range(0, len(order), batch_size)][:max_batches]
    t0 = time.perf_counter()
    for js in batches:
        ds.targets(js)
    main_rate = sum(len(js) for js in batches) / (time.perf_counter() - t0)
    sampler = _Batches()
    loader = torch.utils.data.DataLoader(_Probe(ds), sampler=sampler, batch_size=None, num_workers=workers,
                                         collate_fn=_same, prefetch_factor=4 if workers else None,
                                         persistent_workers=bool(workers))
    sampler.items = [(js, False) for js in batches]
    n = check = 0
    it = iter(loader)
    first, _ = next(it)  # the workers have started
    t0 = time.perf_counter()
    for t, _ in it:
        n += len(t["index"])
        check += int(t["index"].sum())
    secs = time.perf_counter() - t0
    check += int(first["index"].sum())
    sampler.items = [(js, True) for js in batches[: 4 * max(workers, 1)]]  # each worker reports its memory
    mem = {m["pid"]: m for _, m in loader}
    main = unique_memory(os.getpid(), store.epoch_cache.path)
    worker_mem = [m for pid, m in mem.items() if pid != os.getpid()]
    return {"workers": workers, "records": n + len(first["index"]), "records_per_s": n / max(secs, 1e-9),
            "main_records_per_s": main_rate, "epoch_load_s": load_s, "index_sum": check, "main": main,
            "worker_pids": len(worker_mem), "worker_uss_max": max((m["uss"] for m in worker_mem), default=0),
            "worker_cache_rss_max": max((m["cache_rss"] for m in worker_mem), default=0)}


# ---------------------------------------------------------------------------------------------


def _timed_cli(*args: str) -> dict:
    """Wall and CPU seconds of `labelstore ARGS` in a subprocess, and its parsed JSON output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "labelstore", *args], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "out": json.loads(p.stdout)}


def read_rates(store, epoch: int, batch_size: int = 1024, batches: int = 64, old_batches: int = 2,
               seed: int = 1) -> dict:
    """Shuffled batches: store.read (epoch cache; the first read loads the epoch, derived parameters
    included) vs the old path (per-batch chunk reads, reader._take on every array, and the derived
    parameters of the batch's views); that both give the same records, and that the cached derived
    parameters equal labelstore.pipeline.replay.derived_params of the same views."""
    from labelstore.pipeline.replay import derived_params

    g = np.random.default_rng(seed)
    N = store.num_samples
    t0 = time.perf_counter()
    first = store.read(epoch, g.permutation(N)[:batch_size])
    load_s = time.perf_counter() - t0
    idx = [g.permutation(N)[:batch_size] for _ in range(batches)]
    t0 = time.perf_counter()
    for b in idx:
        rec = store.read(epoch, b)
    new = batches * batch_size / (time.perf_counter() - t0)
    old_store = labelstore.open(store.path)
    t0 = time.perf_counter()
    c0 = time.process_time()
    same = True
    for b in idx[:old_batches]:
        got = {n.removeprefix("aug/"): reader._take(a, b, epoch) for n, a in old_store.epoch_arrays().items()}
        if old_store.params_derived:
            got.update(derived_params(old_store, epoch, b))
        same &= all(np.array_equal(got[k], v, equal_nan=True) for k, v in store.read(epoch, b).items() if k in got)
    old_wall = time.perf_counter() - t0
    old_cpu = time.process_time() - c0
    derived = {}
    if store.params_derived:  # what the cache load spends on deriving the epoch's parameters
        t0, c0 = time.perf_counter(), time.process_time()
        whole = derived_params(labelstore.open(store.path), epoch)
        derived = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                   "equal": all(np.array_equal(rec[k], whole[k][idx[-1]]) for k in whole)}
    return {"batch_size": batch_size, "epoch_load_s": load_s, "new_records_per_s": new,
            "old_records_per_s": old_batches * batch_size / old_wall,
            "old_records_per_cpu_s": old_batches * batch_size / max(old_cpu, 1e-9),
            "same_records": bool(same), "keys": sorted(rec), "first_keys": sorted(first), "derive_epoch": derived}


def quasi_random_rate(path: str, epoch: int, batch_size: int = 1024, batches: int = 256, window: int = 8) -> dict:
    """store.read without the epoch cache (an epoch "too large for memory") in the quasi-random order of
    `window` shards: records/s, and shard reads per shard touched (1 = each shard read once)."""
    from labelstore.order import quasi_random_order

    store = labelstore.open(path)
    a = store.group["topk_values"]
    chunk = (a.shards or a.chunks)[1]
    order = quasi_random_order(np.arange(store.num_samples), chunk, 0, epoch, window)[: batches * batch_size]
    reads = 0
    t0 = time.perf_counter()
    for b in range(0, len(order), batch_size):
        before = set(store._blocks.get(("topk_values", epoch), {}))
        store.read(epoch, order[b : b + batch_size], cache=False)
        reads += len(set(np.unique(order[b : b + batch_size] // chunk).tolist()) - before)
    secs = time.perf_counter() - t0
    return {"window": window, "records": len(order), "records_per_s": len(order) / secs,
            "shard_reads_per_shard": reads / len(np.unique(order // chunk))}


def run_scale(n: int = IMAGENET_TRAIN, epochs: int = 4, echo=print, workers=(0, 2, 4), path: str | None = None,
              max_batches: int | None = None) -> dict:
    """Write the store (or reuse the complete one at `path`), measure every path; returns the figures."""
    from .bench import machine

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = path or os.path.join(tmp, "scale.zarr")
        r = {"machine": machine(), "load_average": os.getloadavg(), "num_samples": n, "epochs": epochs}
        if path and os.path.exists(os.path.join(path, "zarr.json")) and labelstore.open(path, allow_incomplete=True).complete:
            r["write"] = {"reused": path}
        else:
            t0 = time.perf_counter()
            r["write"] = {**write_store(out, n, epochs), "wall_s": time.perf_counter() - t0}
        echo(f"machine: {r['machine']}; store {out}: N={n:,} E={epochs}")
        t0 = time.perf_counter()
        store = labelstore.open(out)
        r["open_s"] = time.perf_counter() - t0
        n, epochs = store.num_samples, store.epochs  # a reused store's own sizes
        r["num_samples"], r["epochs"] = n, epochs
        t0 = time.perf_counter()
        ds = store.to_xarray()
        r["to_xarray_first_s"] = time.perf_counter() - t0  # with the first import of xarray / dask / pandas
        t0 = time.perf_counter()
        ds = labelstore.open(out).to_xarray()
        r["to_xarray_s"] = time.perf_counter() - t0
        r["to_xarray_vars"] = sorted(ds.data_vars)
        import xarray as xr

        t0 = time.perf_counter()
        tree = xr.open_datatree(out, engine="zarr")
        r["open_datatree_s"] = time.perf_counter() - t0
        r["open_datatree_vars"] = sorted(f"{node.path.strip('/')}/{v}".lstrip("/") for node in tree.subtree
                                         for v in node.data_vars)
        views = store.epochs * store.num_samples
        r["aug_params"] = store.attrs.get("aug_params")
        r["view_check_dtype"] = str(store.group["view_digest"].dtype) if "view_digest" in store.group else None
        r["bytes_per_view_table"] = store.bytes_per_view_table()
        r["bytes_per_view"] = {t["name"]: t["bytes_per_view"] for t in r["bytes_per_view_table"]}
        r["bytes_per_view_all_in"] = store.bytes_per_view()
        r["read"] = read_rates(store, 0)
        r["quasi_random"] = quasi_random_rate(out, min(2, epochs - 1))
        r["dataset"] = [dataset_pass(labelstore.open(out), min(1, epochs - 1), w, max_batches=max_batches) for w in workers]
        r["epoch_cache_bytes"] = store.epoch_cache.nbytes(store)
        info = _timed_cli("info", out, "--json")
        r["info"] = {"wall_s": info["wall_s"], "cpu_s": info["cpu_s"], "bytes_per_view": info["out"]["bytes_per_view"]}
        from labelstore.pipeline.classification_inspect import classification_details, classification_stats

        fresh = labelstore.open(out)
        t0, c0 = time.perf_counter(), time.process_time()
        classification_stats(fresh)
        classification_details(fresh)
        r["inspect_pass"] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        ins = _timed_cli("inspect", out, "--json", "--quiet")
        r["inspect"] = {"wall_s": ins["wall_s"], "cpu_s": ins["cpu_s"], "views": views,
                        "views_per_s": views / ins["wall_s"],
                        "topk_mass": ins["out"]["per_epoch"]["topk_mass"]}
        r["load_average_end"] = os.getloadavg()
        echo(format_scale(r))
    return r


GOALS = {"read": 2e6, "worker_mib": 50, "open_s": 1.0, "info_s": 2.0, "inspect_views_per_s": 1e6, "xarray_s": 2.0,
         "bytes_per_view": 16.0}


def format_scale(r: dict, target_epochs: int = 300) -> str:
    """One table of the figures against their goals, with the linear extrapolation to `target_epochs`."""
    E, N = r["epochs"], r["num_samples"]
    k = target_epochs / E
    rd = r["read"]
    lines = [f"{'figure':<58}{'measured':>16}  {'goal':>12}",
             f"{'store.read, shuffled batches of ' + str(rd['batch_size']) + ' (epoch cache), records/s':<58}"
             f"{rd['new_records_per_s']:>16,.0f}  {'>= 2,000,000':>12}",
             f"{'  old path: per-batch chunk reads, records/s (CPU-s)':<58}{rd['old_records_per_s']:>16,.0f}  "
             f"({rd['old_records_per_cpu_s']:,.0f} per CPU-s)",
             f"{'  epoch load into the cache (derived parameters included), s':<58}{rd['epoch_load_s']:>16.2f}"
             + (f"  (deriving alone: {rd['derive_epoch']['wall_s']:.2f} s wall, {rd['derive_epoch']['cpu_s']:.2f} CPU-s)"
                if rd["derive_epoch"] else ""),
             f"{'store.read, no cache, quasi-random (window ' + str(r['quasi_random']['window']) + ' shards), records/s':<58}"
             f"{r['quasi_random']['records_per_s']:>16,.0f}  (reads per shard: {r['quasi_random']['shard_reads_per_shard']:.2f})"]
    lines.append(f"{'ReplayDataset.targets in one process (ReplayLoader label path), records/s':<58}"
                 f"{max(d['main_records_per_s'] for d in r['dataset']):>16,.0f}  {'>= 2,000,000':>12}")
    for d in r["dataset"]:
        lines.append(f"{'ReplayDataset (targets) + DataLoader, ' + str(d['workers']) + ' workers, records/s':<58}"
                     f"{d['records_per_s']:>16,.0f}")
        if d["workers"]:
            lines.append(f"{'  unique memory per worker (smaps USS outside the cache), MiB':<58}"
                         f"{d['worker_uss_max'] / 2**20:>16.1f}  {'<= 50':>12}")
    lines += [f"{'  epoch cache (shared, once per host), MiB':<58}{r['epoch_cache_bytes'] / 2**20:>16.1f}",
              f"{'labelstore.open, s':<58}{r['open_s']:>16.2f}  {'<= 1':>12}",
              f"{'labelstore info --json (subprocess), s':<58}{r['info']['wall_s']:>16.2f}  {'<= 2':>12}",
              f"{'labelstore inspect --json (subprocess), views/s':<58}{r['inspect']['views_per_s']:>16,.0f}  "
              f"{'>= 1,000,000':>12}",
              f"{'  inspect wall / CPU s; extrapolated to ' + str(target_epochs) + ' epochs (x' + f'{k:.0f}' + ')':<58}"
              f"{r['inspect']['wall_s']:>7.1f} /{r['inspect']['cpu_s']:>6.1f}  -> {r['inspect']['wall_s'] * k / 60:.0f} min",
              f"{'  the statistics pass alone (in process): wall / CPU s':<58}"
              f"{r['inspect_pass']['wall_s']:>7.1f} /{r['inspect_pass']['cpu_s']:>6.1f}  "
              f"= {E * N / r['inspect_pass']['cpu_s']:,.0f} views per CPU-s",
              f"{'store.to_xarray(), s (first call, with importing xarray)':<58}{r['to_xarray_s']:>16.2f}  {'<= 2':>12}"
              f"  ({r['to_xarray_first_s']:.2f})",
              f"{'xarray.open_datatree(path, engine=zarr), s':<58}{r['open_datatree_s']:>16.2f}",
              f"{'bytes per view, all-in':<58}{r['bytes_per_view_all_in']:>16.2f}  {'<= 16':>12}"]
    for t in r["bytes_per_view_table"]:
        lines.append(f"{'  ' + t['name'] + ('' if t['per_epoch'] else ' (per sample, / E)'):<58}{t['bytes_per_view']:>16.2f}")
    lines.append(f"(N = {N:,}, E = {E}; augmentation parameters {r['aug_params']}; view check {r['view_check_dtype']}; "
                 f"load average {r['load_average'][0]:.1f} at the start, {r['load_average_end'][0]:.1f} at the end; "
                 f"300-epoch figures are linear extrapolations, not measured)")
    return "\n".join(lines)
