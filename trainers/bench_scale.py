"""`labelstore bench --scale`: every read path of a store of ImageNet-1k size, measured in one run.

The store is written through the project's real teacher stage (`run_stage`, `ClassificationTask`,
the background writer, the real schema and codecs) with precomputed synthetic records in place
of decode, render and teacher (SyntheticTask below): N samples, 1000 classes, top-5, the
crop-flip policy whose crop boxes come from the policy's own `sample` on ImageNet-like image
sizes (height ~ N(400, 80), width ~ N(350, 70) pixels, clipped to [64, 1024]). Then measured:

  read        shuffled batches through store.read (epoch cache) and through the old per-batch
              chunk reads (zarr oindex of the chunks a batch touches), records/s
  dataset     ReplayDataset (targets only) through a DataLoader with 0/2/4 workers, records/s,
              and each worker's unique memory (smaps: private pages outside the shared cache)
  open/info   labelstore.open in this process; `labelstore info --json` and
              `labelstore inspect --json` as subprocesses (wall and CPU seconds)
  xarray      store.to_xarray() open time
  bytes       stored bytes per view per array
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


class SyntheticImages:
    """An ImageSource of N synthetic ImageNet-like samples: ids, labels, sizes; nothing to decode."""

    kind = "synthetic-imagenet"

    def __init__(self, n: int, num_classes: int = 1000, seed: int = 0):
        g = np.random.default_rng(seed)
        self.labels = np.sort(g.integers(0, num_classes, n)).astype(np.int64)  # class folders, files sorted
        self.classes = [f"n{c:08d}" for c in range(num_classes)]
        self.ids = [f"{self.classes[c]}/{self.classes[c]}_{i}.JPEG" for i, c in enumerate(self.labels.tolist())]
        h = np.clip(g.normal(400, 80, n), 64, 1024)
        w = np.clip(g.normal(350, 70, n), 64, 1024)
        self.hw = np.stack([h, w], 1).astype(np.int64)  # [N, 2]
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


class _Digests:
    """Stands in for rendered Views: only .digests() is asked of it by ClassificationTask.label."""

    def __init__(self, d: np.ndarray):
        self.d = d

    def digests(self) -> np.ndarray:
        return self.d


class SyntheticTask(ClassificationTask):
    """ClassificationTask with precomputed records: inputs() yields each unit's epochs as one batch of
    synthetic digests (no decode, no render), targets() returns synthetic teacher records: a top-1
    probability ~ 0.98 Beta(2, 1), the rest of the mass over 4 more classes in decreasing order; top-1
    = gt for 75 % of views; class ids near the gt class (gt + increasing offsets, mod C)."""

    def inputs(self, units, pool):
        cfg, N = self.cfg, len(self.source)
        S, V = cfg.shard_rows, cfg.group_size
        for g, p in units:
            rows = np.arange(p * S, min(N, (p + 1) * S))
            hw = self.source.hw[rows]
            for e in range(g * V, min(cfg.epochs, (g + 1) * V)):
                params = self.policy.sample(cfg.seed, e, rows, hw, N)
                r = np.random.default_rng([cfg.seed, e, p])
                yield Item("batch", (g, p), e, rows, (np.arange(len(rows)), _Digests(
                    r.integers(0, 2**32, len(rows), dtype=np.uint64).astype(np.uint32))))
                yield Item("epoch", (g, p), e, rows, params)
            yield Item("unit", (g, p), None, rows, (hw, np.zeros(len(rows), bool)))

    def targets(self, x, epoch: int, ids: np.ndarray) -> dict[str, np.ndarray]:
        n, K, C = len(ids), self.cfg.top_k, self.num_classes
        r = np.random.default_rng([self.cfg.seed, epoch, int(ids[0])])
        p1 = 0.98 * r.beta(2.0, 1.0, n)
        rest = np.sort(r.dirichlet(np.full(K + 3, 0.5), n)[:, : K - 1], axis=1)[:, ::-1] * (1 - p1)[:, None]
        vals = np.concatenate([p1[:, None], rest], 1)  # [n, K] descending
        gt = self.gt[ids]
        top1 = np.where(r.random(n) < 0.75, gt, r.integers(0, C, n))
        idx = (top1[:, None] + np.concatenate([np.zeros((n, 1), np.int64),
                                               np.cumsum(r.integers(1, C // K, (n, K - 1)), 1)], 1)) % C
        gp = np.where(top1 == gt, p1, r.uniform(0, 1, n) * rest[:, -1])
        return {"topk_values": vals.astype(np.float16), "topk_indices": idx, "gt_prob": gp.astype(np.float16)}


def write_store(path: str, n: int = IMAGENET_TRAIN, epochs: int = 4, seed: int = 0,
                shard_rows: int = TeachConfig.shard_rows, chunk_rows: int = TeachConfig.chunk_rows) -> dict:
    """The synthetic store at `path` through run_stage (see the module docstring), in the teacher
    stage's default layout unless told; its run statistics."""
    src = SyntheticImages(n, seed=seed)
    policy = make_policy("crop-flip", (224, 224))
    cfg = TeachConfig(epochs=epochs, seed=seed, top_k=5, batch_size=shard_rows, shard_rows=shard_rows,
                      chunk_rows=chunk_rows)
    check_config(cfg, 1000)
    task = SyntheticTask(src, policy, cfg, {"name": "synthetic", "weights_sha256": "0" * 64}, 1000, device="cpu")
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
    """Shuffled batches: store.read (epoch cache; the first read loads the epoch) vs the old path
    (per-batch chunk reads, reader._take on every array)."""
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
        same &= all(np.array_equal(got[k], v, equal_nan=True) for k, v in store.read(epoch, b).items() if k in got)
    old_wall = time.perf_counter() - t0
    old_cpu = time.process_time() - c0
    return {"batch_size": batch_size, "epoch_load_s": load_s, "new_records_per_s": new,
            "old_records_per_s": old_batches * batch_size / old_wall,
            "old_records_per_cpu_s": old_batches * batch_size / max(old_cpu, 1e-9),
            "same_records": bool(same), "keys": sorted(rec), "first_keys": sorted(first)}


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
        r = {"machine": machine(), "num_samples": n, "epochs": epochs}
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
        sizes = store.nbytes_on_disk()
        r["bytes_per_view"] = {name: b / views for name, b in sorted(sizes.items()) if name in store.epoch_arrays()}
        r["bytes_per_view_all_in"] = store.bytes_per_view()
        r["read"] = read_rates(store, 0)
        r["quasi_random"] = quasi_random_rate(out, min(2, epochs - 1))
        r["dataset"] = [dataset_pass(labelstore.open(out), min(1, epochs - 1), w, max_batches=max_batches) for w in workers]
        r["epoch_cache_bytes"] = store.epoch_cache.nbytes(store)
        info = _timed_cli("info", out, "--json")
        r["info"] = {"wall_s": info["wall_s"], "cpu_s": info["cpu_s"], "bytes_per_view": info["out"]["bytes_per_view"]}
        from labelstore import views as store_views

        fresh = labelstore.open(out)
        t0, c0 = time.perf_counter(), time.process_time()
        store_views.classification_stats(fresh)
        store_views.classification_details(fresh)
        r["inspect_pass"] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        ins = _timed_cli("inspect", out, "--json", "--quiet")
        r["inspect"] = {"wall_s": ins["wall_s"], "cpu_s": ins["cpu_s"], "views": views,
                        "views_per_s": views / ins["wall_s"],
                        "topk_mass": ins["out"]["per_epoch"]["topk_mass"]}
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
             f"{'  epoch load into the cache, s':<58}{rd['epoch_load_s']:>16.2f}",
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
    for name, b in r["bytes_per_view"].items():
        lines.append(f"{'  ' + name:<58}{b:>16.2f}")
    lines.append(f"(N = {N:,}, E = {E}; 300-epoch figures are linear extrapolations, not measured)")
    return "\n".join(lines)
