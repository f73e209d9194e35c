"""End-to-end TeachCLIP demo on the built-in clips, and the retrieval benchmark figures.

prepare_retrieval (also the setup of `labelstore experiment retrieval`): generate data -> train the
X-CLIP-like teacher (symmetric InfoNCE) -> teacher stage (dense similarities). run_retrieval_demo then
trains three students with identical initialisation and identical batches (train_and_evaluate_student,
also the experiment's arms): TeachCLIP from the store, TeachCLIP with the live teacher, InfoNCE alone
-> test-split retrieval.
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
from labelstore.pipeline.teach_retrieval import RetrievalTeachConfig, dense_similarity, repr_cat, teach_retrieval
from labelstore.pipeline.text import Tokenizer, read_captions
from labelstore.pipeline.video import FrameSampler, VideoFolder, VideoPolicy
from labelstore.trainers.experiment import with_recipe
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


RECIPE = {  # the demo's and the experiment's setup (labelstore experiment retrieval --recipe overrides these)
    "n_train": 400, "n_test": 100, "num_frames": 8, "batch_size": 64,
    "teacher_dim": 64, "teacher_epochs": 16, "teacher_lr": 2e-3,
    "student_dim": 64, "student_epochs": 10, "student_lr": 2e-3,
}


def prepare_retrieval(out: str | os.PathLike, *, seed: int = 0, progress: bool = False, echo=print,
                      **recipe) -> dict[str, Any]:
    """Data, teacher and store under `out`, made the same way for the demo and the experiment:

    1. the built-in clips (seed `seed`): n_train train and n_test test videos, 3 captions each;
    2. the X-CLIP-like teacher (width teacher_dim) trained with symmetric InfoNCE for teacher_epochs,
       frames drawn with the sampler under seed + 1 (not the store's seed) -> out/teacher.pt;
    3. the teacher stage, dense mode, student_epochs epochs of views -> out/retrieval.zarr.
    recipe: RECIPE keys to override (ConfigError on an unknown key). Returns {"recipe", "data" (the
    dataset dict), "videos", "tok", "teacher", "teacher_metrics", "teacher_seconds", "teacher_ckpt",
    "store_path", "store", "stage", "student_kw"}.
    """
    r = with_recipe(RECIPE, recipe)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    nf, B = int(r["num_frames"]), int(r["batch_size"])
    t = time.perf_counter()
    d = bv.make_retrieval_dataset(out / "data", n_train=r["n_train"], n_test=r["n_test"], frames=16, size=32, seed=seed)
    echo(f"[1/3] data: {d['n_captions']} captions ({time.perf_counter() - t:.1f}s)")
    videos = VideoFolder(d["videos"])
    caps = read_captions(d["captions_train"])
    tok = Tokenizer.build(c.text for c in caps)
    policy = VideoPolicy(FrameSampler(nf), frame_size=(32, 32))

    torch.manual_seed(seed)
    teacher_kw = {"vocab_size": len(tok), "dim": int(r["teacher_dim"]), "frame_size": 32, "num_frames": nf}
    teacher = CrossModalTeacher(**teacher_kw)
    t = time.perf_counter()
    train_retrieval_student(teacher, None, videos, caps, mode="infonce", epochs=r["teacher_epochs"], batch_size=B,
                            tokenizer=tok, sampler=policy, seed=seed + 1, lr=r["teacher_lr"], progress=progress)
    teacher_seconds = time.perf_counter() - t
    teacher_metrics = evaluate_retrieval(teacher, videos, d["captions_test"], tok, num_frames=nf)
    ckpt = save_retrieval_checkpoint(out / "teacher.pt", teacher, TEACHER_SPEC, teacher_kw, tok, nf, 32)
    echo(f"[2/3] teacher (X-CLIP-like, dim {teacher_kw['dim']}): test t2v R@1 {teacher_metrics['t2v_R@1']:.1f} "
         f"({teacher_seconds:.1f}s) -> {ckpt}")

    store_path = str(out / "retrieval.zarr")
    stage = teach_retrieval(store_path, videos, caps, tok, teacher, policy,
                            RetrievalTeachConfig(epochs=r["student_epochs"], seed=seed, mode="dense", batch_size=B),
                            overwrite=True)
    echo(f"[3/3] teacher stage: {stage['seconds']:.1f}s, {stage['pairs_per_s']:.0f} pairs/s -> {store_path}")
    student_kw = {"vocab_size": len(tok), "dim": int(r["student_dim"]), "frame_size": 32, "num_frames": nf}
    return {"recipe": r, "data": d, "videos": videos, "tok": tok, "teacher": teacher, "teacher_metrics": teacher_metrics,
            "teacher_seconds": teacher_seconds, "teacher_ckpt": ckpt, "store_path": store_path,
            "store": labelstore.open(store_path), "stage": stage, "student_kw": student_kw}


def train_and_evaluate_student(store, videos, test_captions, tok: Tokenizer, student_kw: dict, recipe: dict, *,
                               mode: str, teaching: str = "both", seed: int = 0, teacher=None,
                               progress: bool = False) -> tuple[HolisticStudent, dict[str, Any]]:
    """One student run: init from torch.manual_seed(seed), batch order keyed by `seed` (the store fixes the
    frames), student_epochs epochs; returns (student, test metrics + "seconds")."""
    torch.manual_seed(seed)
    student = HolisticStudent(**student_kw)
    t = time.perf_counter()
    train_retrieval_student(student, store, videos, mode=mode, teaching=teaching, epochs=recipe["student_epochs"],
                            batch_size=recipe["batch_size"], teacher=teacher if mode == "online" else None, seed=seed,
                            lr=recipe["student_lr"], progress=progress)
    seconds = time.perf_counter() - t
    metrics = evaluate_retrieval(student, videos, test_captions, tok, num_frames=student_kw["num_frames"])
    return student, {**metrics, "seconds": seconds}


def run_retrieval_demo(out_dir: str | os.PathLike, seed: int = 0, progress: bool = True, *, threads: int = 1,
                       **recipe) -> dict[str, Any]:
    """Run the demo in `out_dir`: prepare_retrieval (data seed 0, `recipe` overrides), then three students
    with seed `seed` (identical init and batches): TeachCLIP from the store, TeachCLIP with the live
    teacher, InfoNCE alone -> test-split retrieval. Seed s gives the same students as seed s of
    `labelstore experiment retrieval` (arms teachclip, teachclip-online, infonce) under the same recipe.

    Returns {"rows": [{name, metrics, seconds}], "table": str, "stage": teacher-stage stats,
    "seconds": total wall time, "store": path, "checkpoints": {"teacher", "student_<mode>": path},
    "bytes_per_caption": float}. Checkpoints (out_dir/teacher.pt, out_dir/student_<mode>.pt) carry
    extra={"tokenizer", "num_frames", "frame_size"}: `labelstore teach --task retrieval --teacher
    out_dir/teacher.pt` reuses the teacher and its tokenizer. One torch thread by
    default: on a shared 2-core machine it is faster than two.
    """
    torch.set_num_threads(threads)
    out = Path(out_dir)
    t_start = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    p = prepare_retrieval(out, progress=progress, echo=say, **recipe)
    r, store, tok = p["recipe"], p["store"], p["tok"]
    rows = [{"name": f"teacher (X-CLIP-like, dim {r['teacher_dim']})", "seconds": p["teacher_seconds"],
             "metrics": p["teacher_metrics"]}]
    ckpts = {"teacher": p["teacher_ckpt"]}
    for name, mode in (("student TeachCLIP (store)", "cache"), ("student TeachCLIP (online)", "online"),
                       ("student InfoNCE only", "infonce")):
        student, m = train_and_evaluate_student(store, p["videos"], p["data"]["captions_test"], tok, p["student_kw"], r,
                                                mode=mode, seed=seed, teacher=p["teacher"], progress=progress)
        rows.append({"name": name, "seconds": m.pop("seconds"), "metrics": m})
        say(f"{name}: {rows[-1]['metrics']}")
        ckpts[f"student_{mode}"] = save_retrieval_checkpoint(
            out / f"student_{mode}.pt", student, STUDENT_SPEC, p["student_kw"], tok, r["num_frames"], 32, mode=mode)

    table = _table(rows)
    total = time.perf_counter() - t_start
    store_path = p["store_path"]
    nbytes = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(store_path) for f in fs)
    say(table)
    say(f"total wall time {total:.1f}s")
    return {"rows": rows, "table": table, "stage": p["stage"], "seconds": total, "store": store_path, "checkpoints": ckpts,
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
        stage = teach_retrieval(path, videos, caps, tok, teacher, policy,
                                RetrievalTeachConfig(epochs=epochs, seed=seed, mode="dense", batch_size=batch_size),
                                overwrite=True)
        store = labelstore.open(path)
        # bare teacher: the same frames (already decoded) and computation, nothing stored
        from labelstore.pipeline.retrieval_data import (FRAME_TEMPERATURE, FrameCache, caption_rows, frame_targets,
                                                        render_inputs)

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
                frame_targets(teacher.frame_text_scores(vr[torch.as_tensor(cv, dtype=torch.long)], tr), FRAME_TEMPERATURE)
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
