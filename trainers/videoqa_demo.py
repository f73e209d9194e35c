"""The VideoQA demo (teacher, store, CE / KD / RADI students on built-in data) and its benchmark."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from labelstore.pipeline.videoqa_data import ClipCache, prepare_questions
from labelstore.pipeline.text import AnswerVocab, Tokenizer
from labelstore.pipeline.video import FrameSampler
from labelstore.trainers.videoqa import RADI_ALPHA, RADI_MARGIN, evaluate_videoqa, train_videoqa_classifier, train_videoqa_student
from labelstore.trainers.videoqa_cli import TEACHER_SPEC, save_videoqa_checkpoint



# --------------------------------------------------------------------------------------
# Demo and bench
# --------------------------------------------------------------------------------------


def _setup(out_dir: Path, n_train: int, n_test: int, frames: int, size: int, seed: int):
    from labelstore.pipeline.builtin_video import make_videoqa_dataset
    from labelstore.pipeline.text import read_questions
    from labelstore.pipeline.video import VideoFolder

    data = make_videoqa_dataset(out_dir / "data", n_train=n_train, n_test=n_test, frames=frames, size=size, seed=seed)
    videos = VideoFolder(data["videos"])
    train_q = read_questions(data["questions_train"])
    tokenizer = Tokenizer.build(q.question for q in train_q)
    vocab = AnswerVocab.build(a for q in train_q for a in (q.answers or [q.answer]))
    return data, videos, tokenizer, vocab


DEMO = dict(n_train=400, n_test=100, frames=16, size=32, num_frames=8, teacher_epochs=40, store_epochs=20,
            student_epochs=20, top_k=None, mc_passes=8, hot_k=5, cold_n=8, alpha=RADI_ALPHA, margin=RADI_MARGIN,
            batch_size=64)


def run_videoqa_demo(out_dir: str | os.PathLike, seed: int = 0, progress: bool = True, **overrides) -> dict:
    """Built-in VideoQA end to end: data, teacher (CE), teacher stage (T MC passes), four students.

    Students (same init, same batches, same replayed frames): CE; CE + vanilla KD (store);
    CE + RADI (store); CE + RADI (online teacher). Returns {"table", "rows", "teacher", "teach",
    "seconds", "config"}; rows hold acc_annotated / acc_any on the test questions and train seconds.
    """
    from labelstore.trainers.videoqa_models import videoqa_student, videoqa_teacher

    cfg = {**DEMO, **overrides}
    t_all = time.perf_counter()
    torch.set_num_threads(2)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = print if progress else (lambda *a, **k: None)
    t0 = time.perf_counter()
    data, videos, tokenizer, vocab = _setup(out_dir, cfg["n_train"], cfg["n_test"], cfg["frames"], cfg["size"], seed)
    t_data = time.perf_counter() - t0
    log(f"data: {data['n_questions']} questions, {len(vocab)} answers, {t_data:.1f}s", flush=True)
    m, fs = cfg["num_frames"], (cfg["size"], cfg["size"])
    sampler = FrameSampler(num_frames=m)
    cache = ClipCache(videos)
    train_qa = prepare_questions(videos, data["questions_train"], tokenizer, vocab, strict_answers=False)
    test_qa = prepare_questions(videos, data["questions_test"], tokenizer, vocab, strict_answers=False)
    ev = dict(num_frames=m, frame_size=fs, cache=cache)

    torch.manual_seed(seed)
    teacher = videoqa_teacher(len(tokenizer), len(vocab), num_frames=m, frame_size=cfg["size"])
    tt = train_videoqa_classifier(teacher, videos, train_qa, sampler, epochs=cfg["teacher_epochs"], seed=seed + 1,
                                  frame_size=fs, cache=cache, batch_size=cfg["batch_size"])
    t_eval = evaluate_videoqa(teacher, videos, test_qa, vocab, **ev)
    log(f"teacher: {tt['seconds']:.1f}s  acc_annotated {t_eval['acc_annotated']:.3f}  acc_any {t_eval['acc_any']:.3f}", flush=True)
    teacher_ckpt = str(out_dir / "teacher.pt")
    save_videoqa_checkpoint(teacher_ckpt, teacher, TEACHER_SPEC,
                            {"num_tokens": len(tokenizer), "num_answers": len(vocab), "num_frames": m, "frame_size": cfg["size"]},
                            tokenizer, vocab, m, cfg["size"])

    from labelstore.pipeline.teach_videoqa import VideoQATeachConfig, teach_videoqa

    store_path = str(out_dir / "videoqa.zarr")
    st = teach_videoqa(store_path, videos, data["questions_train"], tokenizer, vocab, teacher, sampler,
                       VideoQATeachConfig(epochs=cfg["store_epochs"], seed=seed, top_k=cfg["top_k"],
                                          mc_passes=cfg["mc_passes"], batch_size=256, shard_rows=512, frame_size=fs,
                                          strict_answers=False), overwrite=True)
    log(f"teacher stage: {st['views']} views, T={cfg['mc_passes']}, K={st['top_k']}, {st['seconds']:.1f}s", flush=True)

    runs = [("CE", "ce", "cache"), ("CE + KD (store)", "kd", "cache"),
            ("CE + RADI (store)", "radi", "cache"), ("CE + RADI (online)", "radi", "online")]
    rows = []
    for name, method, mode in runs:
        torch.manual_seed(seed + 7)
        student = videoqa_student(len(tokenizer), len(vocab), num_frames=m, frame_size=cfg["size"])
        r = train_videoqa_student(student, store_path, videos, data["questions_train"], method=method, mode=mode,
                                  alpha=cfg["alpha"], hot_k=cfg["hot_k"],
                                  cold_n=cfg["cold_n"], margin=cfg["margin"], epochs=cfg["student_epochs"],
                                  batch_size=cfg["batch_size"], seed=seed, teacher=teacher, cache=cache)
        acc = evaluate_videoqa(student, videos, test_qa, vocab, **ev)
        rows.append({"name": name, **acc, "seconds": r["seconds"]})
        log(f"{name:20s} acc_annotated {acc['acc_annotated']:.3f}  acc_any {acc['acc_any']:.3f}  {r['seconds']:.1f}s", flush=True)
    lines = [f"{'student':22s} {'acc_annotated':>13s} {'acc_any':>8s} {'train_s':>8s}",
             f"{'(teacher)':22s} {t_eval['acc_annotated']:13.3f} {t_eval['acc_any']:8.3f} {tt['seconds']:8.1f}"]
    lines += [f"{r['name']:22s} {r['acc_annotated']:13.3f} {r['acc_any']:8.3f} {r['seconds']:8.1f}" for r in rows]
    seconds = time.perf_counter() - t_all
    lines.append(f"teacher stage: {st['views']} views (K={st['top_k']}, T={cfg['mc_passes']}) in {st['seconds']:.1f}s; "
                 f"total {seconds:.1f}s")
    table = "\n".join(lines)
    return {"table": table, "rows": rows, "teacher": {**t_eval, "seconds": tt["seconds"]}, "teach": st,
            "seconds": seconds, "config": cfg, "store": store_path, "teacher_checkpoint": teacher_ckpt}


def bench_videoqa(mc_passes: int = 8, seed: int = 0) -> dict:
    """Teacher-stage views/s with T MC passes, head-only vs the whole teacher T times; and the student
    step from the store vs with the online teacher (T passes). Small built-in data; < 60 s on 2 cores."""
    from labelstore.pipeline.teach_videoqa import VideoQATeachConfig, teach_videoqa
    from labelstore.trainers.videoqa_models import videoqa_student, videoqa_teacher

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, videos, tokenizer, vocab = _setup(tmp, 48, 1, 16, 32, seed)
        sampler = FrameSampler(num_frames=8)
        torch.manual_seed(seed)
        teacher = videoqa_teacher(len(tokenizer), len(vocab))
        res = {}
        for name, head_only in (("warmup", True), ("head_only", True), ("full", False)):
            st = teach_videoqa(str(tmp / f"{name}.zarr"), videos, data["questions_train"], tokenizer, vocab, teacher,
                               sampler, VideoQATeachConfig(epochs=4, seed=seed, top_k=64, mc_passes=mc_passes, batch_size=128,
                                                           shard_rows=256, strict_answers=False),
                               head_only=head_only, overwrite=True)
            res[f"teach_views_per_s_{name}"] = st["views_per_s"]
        res.pop("teach_views_per_s_warmup")
        cache = ClipCache(videos)
        cache.get(np.arange(len(videos)), np.zeros((len(videos), 1), np.int64))  # decode every clip up front
        steps = {}
        for mode in ("online", "cache", "online"):  # the first run warms up (kernels, allocator)
            torch.manual_seed(seed)
            student = videoqa_student(len(tokenizer), len(vocab))
            r = train_videoqa_student(student, str(tmp / "head_only.zarr"), videos, data["questions_train"], method="radi",
                                      mode=mode, hot_k=5, cold_n=8, epochs=3, batch_size=64, teacher=teacher, cache=cache)
            steps[mode] = r["seconds_per_step"]
    return {
        "mc_passes": mc_passes,
        **res,
        "teach_speedup_head_only": res["teach_views_per_s_head_only"] / res["teach_views_per_s_full"],
        "student_step_s_store": steps["cache"],
        "student_step_s_online": steps["online"],
        "student_step_store_over_online": steps["cache"] / steps["online"],
        "threads": torch.get_num_threads(),
    }


def demo_command(out: str, seed: int, progress: bool, echo) -> dict:
    """`labelstore demo --task videoqa` (labelstore.trainers.tasks)."""
    r = run_videoqa_demo(out, seed=seed, progress=progress)
    echo(r["table"])
    return r
