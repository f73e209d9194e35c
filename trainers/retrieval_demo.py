"""End-to-end TeachCLIP demo on the built-in clips, and the retrieval benchmark figures.

run_retrieval_demo: generate data -> train the X-CLIP-like teacher (symmetric InfoNCE) -> teacher
stage (dense similarities) -> three students with identical initialisation and identical batches:
TeachCLIP from the store, TeachCLIP with the live teacher, InfoNCE alone -> test-split retrieval.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import labelstore
from labelstore.pipeline import builtin_video as bv
from labelstore.pipeline.teach_retrieval import dense_similarity, repr_cat, teach_retrieval
from labelstore.pipeline.text import Tokenizer, read_captions
from labelstore.pipeline.video import FrameSampler, VideoFolder, VideoPolicy
from labelstore.trainers.retrieval import evaluate_retrieval, train_retrieval_student
from labelstore.trainers.retrieval_cli import STUDENT_SPEC, TEACHER_SPEC, save_retrieval_checkpoint
from labelstore.trainers.retrieval_models import CrossModalTeacher, HolisticStudent


def _table(rows: list[dict]) -> str:
    head = f"{'model':<32} {'t2v R@1':>8} {'R@5':>6} {'R@10':>6} {'MdR':>5} {'v2t R@1':>8} {'train s':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        m = r["metrics"]
        lines.append(f"{r['name']:<32} {m['t2v_R@1']:>8.1f} {m['t2v_R@5']:>6.1f} {m['t2v_R@10']:>6.1f} "
                     f"{m['t2v_MdR']:>5.1f} {m['v2t_R@1']:>8.1f} {r['seconds']:>8.1f}")
    return "\n".join(lines)


def run_retrieval_demo(
    out_dir: str | os.PathLike,
    seed: int = 0,
    progress: bool = True,
    *,
    n_train: int = 400,
    n_test: int = 100,
    teacher_epochs: int = 16,
    student_epochs: int = 12,
    batch_size: int = 64,
    num_frames: int = 8,
    threads: int = 1,
) -> dict[str, Any]:
    """Run the demo in `out_dir` (data in out_dir/data, store out_dir/retrieval.zarr).

    Returns {"rows": [{name, metrics, seconds}], "table": str, "stage": teacher-stage stats,
    "seconds": total wall time, "store": path, "checkpoints": {"teacher", "student_<mode>": path},
    "bytes_per_caption": float}. Checkpoints (out_dir/teacher.pt, out_dir/student_<mode>.pt) carry
    extra={"tokenizer", "num_frames", "frame_size"}: `labelstore teach --task retrieval --teacher
    out_dir/teacher.pt` reuses the teacher and its tokenizer. One torch thread by
    default: on a shared 2-core machine it is faster than two.
    """
    torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)

    t = time.perf_counter()
    d = bv.make_retrieval_dataset(out / "data", n_train=n_train, n_test=n_test, frames=16, size=32, seed=seed)
    say(f"data: {d['n_captions']} captions ({time.perf_counter() - t:.1f}s)")
    videos = VideoFolder(d["videos"])
    caps = read_captions(d["captions_train"])
    tok = Tokenizer.build(c.text for c in caps)
    policy = VideoPolicy(FrameSampler(num_frames), frame_size=(32, 32))
    rows: list[dict] = []

    def evaluate(model) -> dict:
        return evaluate_retrieval(model, videos, d["captions_test"], tok, num_frames=num_frames)

    # teacher: symmetric InfoNCE, frames drawn with the sampler under seed + 1 (not the store's seed)
    torch.manual_seed(seed)
    model_kw = {"vocab_size": len(tok), "dim": 64, "frame_size": 32, "num_frames": num_frames}  # teacher and students
    teacher = CrossModalTeacher(**model_kw)
    t = time.perf_counter()
    train_retrieval_student(teacher, None, videos, caps, mode="infonce", epochs=teacher_epochs, batch_size=batch_size,
                            tokenizer=tok, sampler=policy, seed=seed + 1, lr=2e-3, progress=progress)
    rows.append({"name": "teacher (X-CLIP-like, InfoNCE)", "seconds": time.perf_counter() - t, "metrics": evaluate(teacher)})
    say(f"teacher: {rows[-1]['metrics']}")
    ckpts = {"teacher": save_retrieval_checkpoint(out / "teacher.pt", teacher, TEACHER_SPEC, model_kw, tok, num_frames, 32)}

    store_path = str(out / "retrieval.zarr")
    stage = teach_retrieval(store_path, videos, caps, tok, teacher, policy, epochs=student_epochs, seed=seed,
                            mode="dense", batch_size=batch_size, overwrite=True)
    store = labelstore.open(store_path)
    say(f"teacher stage: {stage['seconds']:.1f}s, {stage['pairs_per_s']:.0f} pairs/s")

    for name, mode in (("student TeachCLIP (store)", "cache"), ("student TeachCLIP (online)", "online"),
                       ("student InfoNCE only", "infonce")):
        torch.manual_seed(seed + 2)  # identical initialisation for the three students
        student = HolisticStudent(**model_kw)
        t = time.perf_counter()
        train_retrieval_student(student, store, videos, mode=mode, epochs=student_epochs, batch_size=batch_size,
                                teacher=teacher if mode == "online" else None, seed=seed, lr=2e-3, progress=progress)
        rows.append({"name": name, "seconds": time.perf_counter() - t, "metrics": evaluate(student)})
        say(f"{name}: {rows[-1]['metrics']}")
        ckpts[f"student_{mode}"] = save_retrieval_checkpoint(
            out / f"student_{mode}.pt", student, STUDENT_SPEC, model_kw, tok, num_frames, 32, mode=mode)

    table = _table(rows)
    total = time.perf_counter() - t_start
    nbytes = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(store_path) for f in fs)
    say(table)
    say(f"total wall time {total:.1f}s")
    return {"rows": rows, "table": table, "stage": stage, "seconds": total, "store": store_path, "checkpoints": ckpts,
            "bytes_per_caption": nbytes / (store.attrs["num_captions"] * store.epochs)}


def bench_retrieval(threads: int = 1, n_train: int = 200, epochs: int = 2, batch_size: int = 64,
                    steps: int = 10, seed: int = 0) -> dict[str, Any]:
    """Benchmark figures (untrained built-in models, generated data in a temp dir; ~30 s):

    teacher_stage_pairs_per_s  dense teacher stage (decode, render, teacher, write) caption-video pairs/s
    bare_teacher_pairs_per_s   the same computation (cached frames, teacher, dense similarity) without storage
    stage_overhead             bare / stage
    student_step_store_s, student_step_online_s, step_ratio = store step / online-teacher step
    bytes_per_caption          stored bytes / (captions x epochs), dense mode
    """
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        d = bv.make_retrieval_dataset(Path(tmp) / "data", n_train=n_train, n_test=8, frames=16, size=32, seed=seed)
        videos = VideoFolder(d["videos"])
        caps = read_captions(d["captions_train"])
        tok = Tokenizer.build(c.text for c in caps)
        policy = VideoPolicy(FrameSampler(8), frame_size=(32, 32))
        torch.manual_seed(seed)
        teacher = CrossModalTeacher(len(tok)).eval()
        path = str(Path(tmp) / "b.zarr")
        stage = teach_retrieval(path, videos, caps, tok, teacher, policy, epochs=epochs, seed=seed, mode="dense",
                                batch_size=batch_size, overwrite=True)
        store = labelstore.open(path)
        # bare teacher: the same frames (already decoded) and computation, nothing stored
        from labelstore.pipeline.retrieval_data import FrameCache, caption_rows, render_inputs

        src_rows, cv = caption_rows(videos, caps)
        cache = FrameCache(videos)
        idx_all = [store.read_array("aug/frames/indices", e) for e in range(epochs)]
        for r in src_rows:  # warm the decode cache: bare = teacher compute only
            cache.get(int(r), np.arange(1))
        ids, mask = tok.encode_batch([c.text for c in caps], 32)
        t = time.perf_counter()
        with torch.inference_mode():
            for e in range(epochs):
                vr = repr_cat([teacher.encode_video(render_inputs(videos, policy, [cache.get(int(src_rows[v]), idx_all[e][v])
                                                                                  for v in range(s, min(len(src_rows), s + batch_size))]))
                               for s in range(0, len(src_rows), batch_size)])
                tr = teacher.encode_text(torch.from_numpy(ids), torch.from_numpy(mask))
                teacher.frame_text_scores(vr[torch.as_tensor(cv, dtype=torch.long)], tr).softmax(-1)
                dense_similarity(teacher, vr, tr)
        bare_s = time.perf_counter() - t
        pairs = len(caps) * len(src_rows) * epochs
        torch.manual_seed(seed)
        st = HolisticStudent(len(tok))
        h_store = train_retrieval_student(st, store, videos, mode="cache", epochs=1, batch_size=batch_size, max_steps=steps)
        torch.manual_seed(seed)
        st = HolisticStudent(len(tok))
        h_online = train_retrieval_student(st, store, videos, mode="online", epochs=1, batch_size=batch_size,
                                           teacher=teacher, max_steps=steps)
        nbytes = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(path) for f in fs)
        return {
            "teacher_stage_pairs_per_s": stage["pairs_per_s"],
            "bare_teacher_pairs_per_s": pairs / bare_s,
            "stage_overhead": (pairs / bare_s) / stage["pairs_per_s"],
            "student_step_store_s": h_store["step_s"],
            "student_step_online_s": h_online["step_s"],
            "step_ratio": h_store["step_s"] / h_online["step_s"],
            "bytes_per_caption": nbytes / (len(caps) * epochs),
            "captions": len(caps),
            "videos": len(src_rows),
            "epochs": epochs,
        }


def demo_command(out: str, seed: int, progress: bool, echo) -> dict:
    """`labelstore demo --task retrieval` (labelstore.trainers.tasks)."""
    r = run_retrieval_demo(out, seed=seed, progress=progress)
    echo(r["table"])
    return r
