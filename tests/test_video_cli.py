"""The video tasks through real `labelstore` subprocesses: teach --task, info, inspect, train --task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import labelstore
from labelstore.pipeline.builtin_video import make_retrieval_dataset, make_videoqa_dataset
from labelstore.pipeline.text import AnswerVocab, Tokenizer, read_captions, read_questions

ROOT = Path(__file__).resolve().parents[1]
_EXE = Path(sys.executable).with_name("labelstore")
CLI = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "labelstore.cli"]


def run(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    p = subprocess.run(CLI + [str(a) for a in args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 0, f"{args}: rc={p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def info_and_inspect(store: Path, task: str) -> dict:
    info = json.loads(run("info", store, "--json").stdout)
    assert info["task"] == task and info["state"] == "complete" and info["units_done"] == info["units_total"]
    stats = json.loads(run("inspect", store, "--json").stdout)
    assert stats["per_epoch"] and all(len(v) == 2 for v in stats["per_epoch"].values())
    return info


def test_retrieval_teach_info_inspect_train(tmp_path):
    from labelstore.trainers.retrieval_cli import TEACHER_SPEC, save_retrieval_checkpoint
    from labelstore.trainers.retrieval_models import CrossModalTeacher

    d = make_retrieval_dataset(tmp_path / "data", n_train=10, n_test=4, frames=8, size=32)
    tok = Tokenizer.build(c.text for c in read_captions(d["captions_train"]))
    torch.manual_seed(0)
    kwargs = {"vocab_size": len(tok), "num_frames": 4}
    ckpt = tmp_path / "teacher.pt"
    save_retrieval_checkpoint(ckpt, CrossModalTeacher(**kwargs), TEACHER_SPEC, kwargs, tok, num_frames=4, frame_size=32)
    store = tmp_path / "ret.zarr"
    p = run("teach", "--task", "retrieval", "--data", d["videos"], "--captions", d["captions_train"],
            "--teacher", ckpt, "--out", store, "--epochs", "2", "--batch-size", "8", "--quiet")
    assert "complete" in p.stdout
    info_and_inspect(store, "retrieval")
    for mode in ("cache", "online", "none"):
        out = tmp_path / f"student-{mode}"
        extra = ["--online-teacher", ckpt] if mode == "online" else []
        p = run("train", "--task", "retrieval", "--store", store, "--data", d["videos"], "--captions",
                d["captions_train"], "--mode", mode, "--epochs", "1", "--batch-size", "8", "--eval-captions",
                d["captions_test"], "--out", out, "--workers", "1" if mode == "cache" else "0", "--json", *extra)
        m = json.loads((out / "metrics.json").read_text())
        assert m["eval"] and (out / "student.pt").exists()
        assert json.loads(p.stdout)["loss"] == m["loss"]  # --json: the metrics alone on stdout (the log on stderr)


def test_videoqa_teach_info_inspect_train(tmp_path):
    from labelstore.trainers.videoqa_cli import TEACHER_SPEC, save_videoqa_checkpoint
    from labelstore.trainers.videoqa_models import videoqa_teacher

    d = make_videoqa_dataset(tmp_path / "data", n_train=10, n_test=4, frames=8, size=32)
    qs = read_questions(d["questions_train"])
    tok = Tokenizer.build(q.question for q in qs)
    vocab = AnswerVocab.build(a for q in qs for a in (q.answers or [q.answer]))
    torch.manual_seed(0)
    kwargs = {"num_tokens": len(tok), "num_answers": len(vocab), "num_frames": 4, "frame_size": 32}
    ckpt = tmp_path / "teacher.pt"
    save_videoqa_checkpoint(ckpt, videoqa_teacher(**kwargs), TEACHER_SPEC, kwargs, tok, vocab, num_frames=4,
                            frame_size=32)
    store = tmp_path / "qa.zarr"
    run("teach", "--task", "videoqa", "--data", d["videos"], "--questions", d["questions_train"], "--teacher", ckpt,
        "--out", store, "--epochs", "2", "--mc-passes", "3", "--frames", "4", "--quiet")
    info = info_and_inspect(store, "videoqa")
    assert labelstore.open(store).mc_passes == 3 and info["top_k"] == len(vocab)  # the full ranking by default
    for mode, loss in (("cache", "radi"), ("online", "radi"), ("cache", "kd"), ("none", None)):
        out = tmp_path / f"student-{mode}-{loss}"
        extra = (["--online-teacher", ckpt] if mode == "online" else []) + (["--loss", loss] if loss else [])
        run("train", "--task", "videoqa", "--store", store, "--data", d["videos"], "--questions", d["questions_train"],
            "--mode", mode, "--epochs", "1", "--batch-size", "8", "--hot-k", "3", "--cold-n", "4",
            "--eval-questions", d["questions_test"], "--out", out, "--workers", "1" if loss == "kd" else "0", *extra)
        assert (out / "metrics.json").exists() and (out / "student.pt").exists()
