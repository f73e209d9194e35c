"""VideoQA checkpoints and the `labelstore teach|train --task videoqa` entry points (plain arguments)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

import labelstore
from labelstore.cli_options import TeachCommon, TrainCommon
from labelstore.errors import ConfigError
from labelstore.pipeline.videoqa_data import ClipCache
from labelstore.pipeline.text import AnswerVocab, Tokenizer
from labelstore.pipeline.video import FrameSampler, VideoPolicy
from labelstore.trainers.videoqa import (METHODS, MODES, RADI_ALPHA, _open, check_radi, evaluate_videoqa,
                                         train_videoqa_student)
from labelstore.trainers.videoqa_options import VideoQATeachOptions, VideoQATrainOptions
from labelstore.trainers.videoqa_tokens import TOKEN_LOSS, check_token_store



# --------------------------------------------------------------------------------------
# CLI entry points (plain arguments; labelstore/cli.py wires the options)
# --------------------------------------------------------------------------------------

TEACHER_SPEC = "labelstore.trainers.videoqa_models:videoqa_teacher"
STUDENT_SPEC = "labelstore.trainers.videoqa_models:videoqa_student"


def save_videoqa_checkpoint(path, model: nn.Module, spec: str, kwargs: dict, tokenizer: Tokenizer, vocab: AnswerVocab,
                            num_frames: int, frame_size: int, extra: dict | None = None) -> str:
    """save_checkpoint with the VideoQA extras (tokenizer, vocab, num_frames, frame_size); checks that
    load_model(path) rebuilds the same weights (labelstore.pipeline.teacher.weights_hash). Returns the hash."""
    from labelstore.pipeline.teacher import weights_hash
    from labelstore.trainers.spec import load_model, save_checkpoint

    digest = save_checkpoint(path, model, spec, kwargs, extra={"tokenizer": tokenizer.to_json(), "vocab": vocab.to_json(),
                                                               "num_frames": int(num_frames), "frame_size": int(frame_size),
                                                               **(extra or {})})
    if weights_hash(load_model(str(path))) != weights_hash(model):
        raise RuntimeError(f"{path}: load_model does not rebuild the saved weights ({spec}, {kwargs})")  # internal invariant
    return digest


def _videoqa_model(spec: str, role: str, *, num_tokens: int | None = None, num_answers: int | None = None,
                   num_frames: int | None = None, frame_size: int | None = None) -> tuple[nn.Module, dict]:
    """Build a VideoQA model from a checkpoint path or 'module:callable'. Returns (model, info) with
    info = {"spec", "kwargs", "extra", "checkpoint"} (spec/kwargs rebuild the architecture).
    A callable gets those of num_tokens/num_answers/num_frames/frame_size it accepts (that are not None).
    Errors name the role and the spec."""
    import importlib
    import inspect

    from labelstore.trainers.models import MODELS
    from labelstore.trainers.spec import _looks_like_path, load_checkpoint, load_model, model_from_checkpoint

    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{role} spec must be a non-empty string, got {spec!r}")
    if spec in MODELS:
        raise ConfigError(f"{role} spec {spec!r} is a built-in image classifier; a VideoQA {role} takes (frames, q_ids, "
                          f"q_mask): pass a checkpoint (.pt) or 'module:callable' (e.g. {STUDENT_SPEC})")
    try:
        if _looks_like_path(spec):
            if not os.path.isfile(spec):
                raise FileNotFoundError("checkpoint file not found")
            ckpt = load_checkpoint(spec)
            model = model_from_checkpoint(ckpt, source=spec)
            info = {"spec": ckpt["spec"], "kwargs": dict(ckpt["kwargs"]), "extra": dict(ckpt.get("extra") or {}), "checkpoint": spec}
        elif ":" in spec:
            want = {k: v for k, v in dict(num_tokens=num_tokens, num_answers=num_answers, num_frames=num_frames,
                                          frame_size=frame_size).items() if v is not None}
            kw = dict(want)
            try:  # pass only the kwargs the callable takes (load_model reports a bad module/attribute itself)
                mod, _, attr = spec.partition(":")
                fn = importlib.import_module(mod)
                for part in attr.split("."):
                    fn = getattr(fn, part)
                params = inspect.signature(fn).parameters.values()
                if not any(q.kind is inspect.Parameter.VAR_KEYWORD for q in params):
                    names = {q.name for q in params}
                    kw = {k: v for k, v in want.items() if k in names}
            except Exception:
                pass
            model = load_model(spec, **kw)
            info = {"spec": spec, "kwargs": kw, "extra": {}, "checkpoint": None}
        else:
            raise ConfigError("expected a checkpoint path ending in .pt or 'module:callable'")
    except Exception as e:
        msg = str(e)
        raise ConfigError(f"{role}: {msg}" if repr(spec) in msg else f"{role} spec {spec!r}: {msg}") from e
    cfg = getattr(model, "config", None)
    if isinstance(cfg, dict):
        for key, want_v in (("num_answers", num_answers), ("num_tokens", num_tokens), ("num_frames", num_frames),
                            ("frame_size", frame_size)):
            if want_v is not None and key in cfg and cfg[key] != want_v:
                raise ConfigError(f"{role} spec {spec!r}: the model has {key}={cfg[key]}, but {want_v} is needed here")
    return model, info


def _cli_log(progress: bool):
    return (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)


def cli_teach_videoqa(
    out: str | os.PathLike,
    videos_dir: str | os.PathLike,
    questions_path: str | os.PathLike,
    teacher_spec: str,
    *,
    epochs: int = 4,
    num_frames: int = 8,
    frame_size: int = 32,
    top_k: int | None = None,
    mc_passes: int = 8,
    batch_size: int = 128,
    seed: int = 0,
    strict_answers: bool = False,
    features: str | None = None,
    feature_codec: str = "float16",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Teacher stage for VideoQA from plain arguments (the `teach-videoqa` command).

    features: also record per view the token output [Q, D] of this teacher module (encoded by feature_codec).

    teacher_spec: a checkpoint (save_checkpoint / run_videoqa_demo's teacher.pt) or 'module:callable'.
    The tokenizer and answer vocabulary come from the checkpoint's extra when it has them, else they
    are built from the questions file (words of the questions; every answer, `answers` included).
    num_frames/frame_size must match the checkpoint's extra when it records them. Returns
    teach_videoqa's dict plus {"store", "num_questions", "num_answers", "teacher"}.
    """
    from labelstore.pipeline.teach_videoqa import VideoQATeachConfig, teach_videoqa
    from labelstore.pipeline.teacher import weights_hash
    from labelstore.pipeline.text import read_questions
    from labelstore.pipeline.video import VideoFolder

    from labelstore.trainers.spec import _looks_like_path

    log = _cli_log(progress)
    videos = VideoFolder(videos_dir)
    teacher, extra = None, {}
    if not isinstance(teacher_spec, str) or _looks_like_path(teacher_spec) or ":" not in teacher_spec:
        teacher, info = _videoqa_model(teacher_spec, "teacher")  # a checkpoint (or an error naming the spec)
        extra = info["extra"]
    for key, val in (("num_frames", num_frames), ("frame_size", frame_size)):
        if key in extra and int(extra[key]) != int(val):
            raise ConfigError(f"teacher spec {teacher_spec!r} was trained with {key}={extra[key]}, got {key}={val}")
    if "tokenizer" in extra and "vocab" in extra:
        tokenizer, vocab = Tokenizer.from_json(extra["tokenizer"]), AnswerVocab.from_json(extra["vocab"])
        source = "checkpoint"
    else:
        qs = read_questions(questions_path)
        tokenizer = Tokenizer.build(q.question for q in qs)
        vocab = AnswerVocab.build(a for q in qs for a in (q.answers or [q.answer]))
        source = str(questions_path)
    if teacher is None:  # 'module:callable': build it for this tokenizer / vocabulary
        teacher, _ = _videoqa_model(teacher_spec, "teacher", num_tokens=len(tokenizer), num_answers=len(vocab),
                                    num_frames=num_frames, frame_size=frame_size)
    cfg = getattr(teacher, "config", None)
    if isinstance(cfg, dict):
        for key, n in (("num_answers", len(vocab)), ("num_tokens", len(tokenizer)), ("num_frames", num_frames)):
            if key in cfg and cfg[key] != n:
                raise ConfigError(f"teacher spec {teacher_spec!r}: the model has {key}={cfg[key]}, but the "
                                  f"{'vocabulary' if key == 'num_answers' else 'tokenizer' if key == 'num_tokens' else 'sampler'} "
                                  f"({source}) needs {n}")
    log(f"teacher {teacher_spec}: {type(teacher).__name__}; tokenizer/vocab from {source}: "
        f"{len(tokenizer)} words, {len(vocab)} answers")
    teacher_info = {"name": type(teacher).__name__, "spec": teacher_spec, "weights_sha256": weights_hash(teacher),
                    "params": int(sum(p.numel() for p in teacher.parameters()))}
    cfg = VideoQATeachConfig(epochs=epochs, seed=seed, top_k=top_k, mc_passes=mc_passes, batch_size=batch_size,
                             frame_size=(frame_size, frame_size), strict_answers=strict_answers, features=features,
                             feature_codec=feature_codec)
    st = teach_videoqa(str(out), videos, questions_path, tokenizer, vocab, teacher, FrameSampler(num_frames=num_frames),
                       cfg, teacher_info=teacher_info, resume=resume, overwrite=overwrite, progress=progress)
    store = labelstore.open(str(out))
    res = {**st, "store": str(out), "num_questions": store.num_samples, "num_answers": len(vocab), "teacher": teacher_info,
           "vocab_source": source}
    log(f"wrote {out}: {res['num_questions']} questions x {epochs} epochs, K={st['top_k']}, T={mc_passes}, "
        f"{st['seconds']:.1f}s")
    return res


def cli_train_videoqa(
    store_path: str | os.PathLike,
    videos_dir: str | os.PathLike,
    questions_path: str | os.PathLike,
    *,
    method: str = "radi",
    mode: str = "cache",
    online_teacher: str | None = None,
    student_spec: str | None = None,
    eval_questions: str | os.PathLike | None = None,
    epochs: int = 4,
    batch_size: int = 64,
    hot_k: int = 10,
    cold_n: int = 10,
    scheme: str = "exp",
    rank: str = "both",
    margins: str = "adaptive",
    alpha: float = RADI_ALPHA,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    num_workers: int = 0,
) -> dict:
    """Train a VideoQA student from a store (the `train-videoqa` command); see train_videoqa_student.

    student_spec: checkpoint or 'module:callable' (default videoqa_student), built for the store's
    tokenizer, vocabulary, num_frames and frame size. mode="online" (method kd/radi) needs
    online_teacher (checkpoint or 'module:callable'). eval_questions: questions file on the same
    videos; adds acc_annotated / acc_any. out: directory for student.pt (save_checkpoint, with the
    tokenizer/vocab in extra) and metrics.json. num_workers: DataLoader processes decoding the clips.
    Returns the metrics dict.
    """
    import json

    from labelstore.pipeline.teacher import weights_hash
    from labelstore.pipeline.video import VideoFolder

    if method not in METHODS or mode not in MODES:
        raise ConfigError(f"method must be one of {METHODS} and mode one of {MODES}, got {method!r}, {mode!r}")
    log = _cli_log(progress)
    store = _open(str(store_path))
    if method == "radi":
        check_radi(store, hot_k, cold_n, rank, margins)
    if method == TOKEN_LOSS:
        check_token_store(store)
    if mode == "online" and method != "ce" and not online_teacher:
        raise ConfigError("mode='online' needs online_teacher (a checkpoint or 'module:callable')")
    a = store.attrs
    vocab, tokenizer = AnswerVocab.from_json(a["vocab"]), Tokenizer.from_json(a["tokenizer"])
    policy = VideoPolicy.from_json({k: v for k, v in a["policy"].items() if k != "digest"})
    m, fs = policy.num_frames, tuple(policy.frame_size)
    dims = dict(num_tokens=len(tokenizer), num_answers=len(vocab), num_frames=m, frame_size=fs[0])
    videos = VideoFolder(videos_dir)
    teacher = None
    if mode == "online" and method != "ce":
        teacher, _ = _videoqa_model(online_teacher, "online teacher", **dims)
    torch.manual_seed(seed)
    student, sinfo = _videoqa_model(student_spec or STUDENT_SPEC, "student", **dims)
    cache = ClipCache(videos)
    log(f"student {sinfo['spec']} ({sum(p.numel() for p in student.parameters())} params): {method}/{mode}, "
        f"{store.num_samples} questions, {epochs} epochs")
    r = train_videoqa_student(student, store, videos, questions_path, method=method, mode=mode, alpha=alpha, hot_k=hot_k,
                              cold_n=cold_n, scheme=scheme, rank=rank, margins=margins, epochs=epochs, batch_size=batch_size, seed=seed,
                              teacher=teacher, cache=cache, progress=progress,
                              num_workers=num_workers)
    metrics = {"method": method, "mode": mode, "store": str(store_path), "epochs": epochs, "batch_size": batch_size,
               "seed": seed, "alpha": alpha, "hot_k": hot_k, "cold_n": cold_n, "scheme": scheme, "rank": rank, "margins": margins, **r,
               "student": {"spec": sinfo["spec"], "kwargs": sinfo["kwargs"], "weights_sha256": weights_hash(student)}}
    if teacher is not None:
        th = weights_hash(teacher)
        metrics["online_teacher"] = {"spec": online_teacher, "weights_sha256": th,
                                     "matches_store": th == a["teacher"].get("weights_sha256")}
    if eval_questions is not None:
        acc = evaluate_videoqa(student, videos, eval_questions, vocab, tokenizer=tokenizer, num_frames=m, frame_size=fs,
                               max_len=a["teach_config"]["max_len"], cache=cache)
        metrics.update(acc_annotated=acc["acc_annotated"], acc_any=acc["acc_any"], n_eval=acc["n"],
                       eval_questions=str(eval_questions))
        log(f"eval {eval_questions}: acc_annotated {acc['acc_annotated']:.3f}  acc_any {acc['acc_any']:.3f}")
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        ckpt = out / "student.pt"
        save_videoqa_checkpoint(ckpt, student, sinfo["spec"], sinfo["kwargs"], tokenizer, vocab, m, fs[0],
                                extra={"method": method, "mode": mode, "store": str(store_path)})
        metrics["checkpoint"] = str(ckpt)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
        log(f"wrote {ckpt} and {out / 'metrics.json'}")
    return metrics


# --------------------------------------------------------------------------------------
# Registry entry points (labelstore.trainers.tasks): the common options and the task's own
# (trainers/videoqa_options.py) in, (result, summary line) out
# --------------------------------------------------------------------------------------


def teach_command(c: TeachCommon, o: VideoQATeachOptions, warn) -> tuple[dict, str]:
    if not o.questions:
        raise ConfigError("--task videoqa needs --questions FILE")
    if o.feature_codec != "float16" and not o.features:
        raise ConfigError(f"--feature-codec {o.feature_codec} goes with --features NAME (the teacher module to record)")
    r = cli_teach_videoqa(c.out, c.data_spec, o.questions, c.teacher, epochs=c.epochs, num_frames=o.frames,
                          frame_size=o.frame_size, top_k=o.top_k, mc_passes=o.mc_passes, batch_size=c.batch_size,
                          seed=c.seed, features=o.features, feature_codec=o.feature_codec, resume=c.resume,
                          overwrite=c.overwrite, progress=not c.quiet)
    return r, (f"{c.out}: {r['views']} views (K={r['top_k']}, T={o.mc_passes}) in {r['seconds']:.1f}s, "
               f"{'complete' if r['complete'] else 'incomplete'}")


def train_command(c: TrainCommon, o: VideoQATrainOptions, warn) -> tuple[dict, str]:
    if not o.questions:
        raise ConfigError("--task videoqa needs --questions FILE")
    mode = c.mode
    method = "ce" if mode == "none" else (c.loss or "radi")
    m = cli_train_videoqa(c.store_path, c.data_spec, o.questions, method=method,
                          mode="cache" if mode == "none" else mode, online_teacher=c.online_teacher,
                          student_spec=c.student, eval_questions=o.eval_questions, epochs=c.epochs or 4,
                          batch_size=c.batch_size, hot_k=o.hot_k, cold_n=o.cold_n, scheme=o.cold_scheme,
                          rank=o.radi_rank, margins=o.margins, alpha=RADI_ALPHA if o.alpha is None else o.alpha,
                          seed=c.seed, out=c.out, progress=True, num_workers=c.workers)
    return m, f"{method} ({mode}): {m.get('seconds', 0):.1f}s; eval {m.get('eval')} -> {c.out}"
