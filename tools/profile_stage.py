"""CPU per view of the teacher stage by thread and by component, with a near-free teacher.

    taskset -c 0   python tools/profile_stage.py PHOTOS 1 [--epochs 2] [--shard-rows 128]
    taskset -c 0,1 python tools/profile_stage.py PHOTOS 2 [--epochs 2] [--shard-rows 128]

PHOTOS: a class-folder image tree (`labelstore.trainers.bench.write_jpegs(PHOTOS, 128)` writes the
bench's 500x375 JPEGs, `stage_photos(PHOTOS, MORE, 512)` links them into a tree of 512). Runs the
stage of `bench_stage_cores` (crop-flip at 224 px, here in batches of 64, units of --shard-rows rows,
decode workers = CORES, torch's threads as the stage splits the cores) once to warm up, then once
measured, and prints JSON:

  cpu_ms_per_view       process CPU (time.process_time) / views; sys_ms_per_view its kernel part
  faults_per_view       minor page faults (getrusage) / views
  threads_ms_per_view   CPU of each thread (/proc/self/task/*/stat, sampled every 0.2 s, 10 ms ticks):
                        main (the teacher: label), ThreadPoolExecutor (decode + render), zarr_io and
                        asyncio_* (zarr's writes), native:* (threads Python did not start: torch's
                        OpenMP workers)
  pool_idle_share       1 - (wall time of the decode pool's tasks) / (workers x the stage's seconds):
                        the share of the pool's time it had no task (a task waiting for an image
                        another one decodes counts as busy)
  serial_share          the share of the stage's wall time before the teacher's first batch and after
                        its last; serial_ms: wall ms of its phases: open (create the store),
                        to_first_batch (from there to the teacher's first batch: the pool decodes and
                        renders on every core meanwhile), after_last_batch (the writer's drain) and
                        finalize (open, the drain and finalize run on one thread: Amdahl's serial part)
  components_ms_per_view  CPU (time.thread_time on the calling thread) inside decode (source.load),
                        render (Policy.render_batch), digest (Views.digests), targets (to_input +
                        teacher + top-k), label (all of it) and write_block; "faults:*" their page faults

Compare CPU per view, not wall time, on a machine other jobs share.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import resource
import tempfile
import threading
import time

import labelstore  # before torch (imported by the pipeline): sets OMP_WAIT_POLICY
from labelstore import writer
from labelstore.pipeline import augment, teach
from labelstore.pipeline.augment import make_policy
from labelstore.pipeline.images import ImageFolder
from labelstore.pipeline.teach import TeachConfig
from labelstore.trainers.bench import _NearFree, _teach

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[int, float]:
    """{native thread id: CPU seconds (user + system)} of this process's threads."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def timed(acc: dict, lock: threading.Lock, key: str, fn):
    """fn, adding its calling thread's CPU seconds and page faults to acc[key], acc["faults:" + key]."""
    def run(*a, **k):
        f0, t0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt, time.thread_time()
        try:
            return fn(*a, **k)
        finally:
            dt, df = time.thread_time() - t0, resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f0
            with lock:
                acc[key] += dt
                acc["faults:" + key] += df
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("photos")
    ap.add_argument("cores", type=int)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--shard-rows", type=int, default=128)
    args = ap.parse_args()
    acc: dict = collections.defaultdict(float)
    lock = threading.Lock()
    data = ImageFolder(args.photos)
    data.load = timed(acc, lock, "decode", data.load)
    augment.Policy.render_batch = timed(acc, lock, "render", augment.Policy.render_batch)
    augment.Views.digests = timed(acc, lock, "digest", augment.Views.digests)
    teach.ClassificationTask.targets = timed(acc, lock, "targets", teach.ClassificationTask.targets)
    teach.ClassificationTask.label = timed(acc, lock, "label", teach.ClassificationTask.label)
    labelled: list[float] = []  # perf_counter at the end of each label call
    label = teach.ClassificationTask.label

    def stamped(self, item):
        try:
            return label(self, item)
        finally:
            labelled.append(time.perf_counter())

    teach.ClassificationTask.label = stamped
    pool_busy = [0.0]  # wall seconds inside the pool's tasks
    submit = concurrent.futures.ThreadPoolExecutor.submit

    def timed_submit(self, fn, *a, **k):
        if not self._thread_name_prefix.startswith("ThreadPoolExecutor"):  # not the stage's (zarr's, asyncio's)
            return submit(self, fn, *a, **k)

        def task(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                with lock:
                    pool_busy[0] += time.perf_counter() - t
        return submit(self, task, *a, **k)

    concurrent.futures.ThreadPoolExecutor.submit = timed_submit
    phases: dict[str, list[float]] = collections.defaultdict(list)  # [start, end] perf_counter
    for name in ("open_or_create", "finalize"):
        def phase(*a, _fn=getattr(writer, name), _name=name, **k):
            phases[_name].append(time.perf_counter())
            try:
                return _fn(*a, **k)
            finally:
                phases[_name].append(time.perf_counter())
        setattr(writer, name, phase)
    writer.write_block = timed(acc, lock, "write_block", writer.write_block)
    policy = make_policy("crop-flip", (224, 224))
    cfg = TeachConfig(epochs=args.epochs, top_k=5, batch_size=64, shard_rows=args.shard_rows,
                      chunk_rows=min(args.shard_rows, 1024),
                      decode_workers=args.cores)
    last: dict[int, float] = {}
    names: dict[int, str] = {threading.main_thread().native_id: "main"}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for t in threading.enumerate():
                names.setdefault(t.native_id, t.name)
            last.update(thread_cpu())
            time.sleep(0.2)

    with tempfile.TemporaryDirectory() as tmp:
        _teach(os.path.join(tmp, "warm.zarr"), data, _NearFree(10).eval(), policy, cfg, 10)
        base = thread_cpu()
        acc.clear()
        sampler = threading.Thread(target=sample, name="sampler", daemon=True)
        sampler.start()
        labelled.clear()
        phases.clear()
        pool_busy[0] = 0.0
        r0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
        stats = _teach(os.path.join(tmp, "stage.zarr"), data, _NearFree(10).eval(), policy, cfg, 10)
        cpu, r1, t1 = time.process_time() - c0, resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        stop.set()
        sampler.join()
    n = stats["views"]
    threads: dict = collections.defaultdict(float)
    for tid, t in last.items():
        name = names.get(tid, "native")
        threads["ThreadPoolExecutor" if name.startswith("ThreadPoolExecutor") else name] += t - base.get(tid, 0.0)
    ms = lambda v: round(1e3 * v / n, 3)  # noqa: E731
    ms_of = lambda se: round(1e3 * (se[1] - se[0]), 1)  # noqa: E731
    print(json.dumps({
        "cores": args.cores, "views": n, "views_per_s": stats["views_per_s"], "cpu_ms_per_view": ms(cpu),
        "sys_ms_per_view": ms(r1.ru_stime - r0.ru_stime),
        "pool_idle_share": round(1 - pool_busy[0] / (args.cores * stats["seconds"]), 3),
        "serial_share": round((labelled[0] - t0 + t1 - labelled[-1]) / (t1 - t0), 3),
        "serial_ms": {"open": ms_of(phases["open_or_create"]), "to_first_batch": round(1e3 * (labelled[0] - phases["open_or_create"][1]), 1),
                      "after_last_batch": round(1e3 * (phases["finalize"][0] - labelled[-1]), 1), "finalize": ms_of(phases["finalize"]),
                      "all": round(1e3 * (t1 - t0), 1)},
        "faults_per_view": round((r1.ru_minflt - r0.ru_minflt) / n),
        "threads_ms_per_view": {k: ms(v) for k, v in sorted(threads.items(), key=lambda kv: -kv[1]) if v > 0},
        "components_ms_per_view": {k: (round(v / n, 1) if k.startswith("faults:") else ms(v)) for k, v in acc.items()},
        "load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
