"""Retrieval checkpoints and the `labelstore teach|train --task retrieval` entry points (plain arguments)."""

from __future__ import annotations

import os
from typing import Any

import torch

import labelstore
from labelstore.cli_options import TeachCommon, TrainCommon
from labelstore.errors import ConfigError, StoreError, StoreMismatch
from labelstore.pipeline.teach_retrieval import RetrievalTeachConfig, teach_retrieval
from labelstore.pipeline.teacher import weights_hash
from labelstore.pipeline.text import Tokenizer, read_captions
from labelstore.pipeline.video import FeatureH5, FrameSampler, VideoFolder, VideoPolicy
from labelstore.trainers.retrieval import TRAIN_MODES, evaluate_retrieval, train_retrieval_student
from labelstore.trainers.retrieval_options import RetrievalTeachOptions, RetrievalTrainOptions



# --------------------------------------------------------------------------------------
# Checkpoints and the CLI entry points (`labelstore teach/train --task retrieval`)
# --------------------------------------------------------------------------------------

TEACHER_SPEC = "labelstore.trainers.retrieval_models:CrossModalTeacher"
STUDENT_SPEC = "labelstore.trainers.retrieval_models:HolisticStudent"


def save_retrieval_checkpoint(path: str | os.PathLike, model: torch.nn.Module, spec: str, kwargs: dict,
                              tokenizer: Tokenizer, num_frames: int, frame_size: int, **extra) -> str:
    """save_checkpoint(path, model, spec, kwargs, extra={"tokenizer", "num_frames", "frame_size", **extra}),
    then check that load_model(path) rebuilds identical weights (weights_hash); returns str(path)."""
    from labelstore.trainers.spec import load_model, save_checkpoint

    save_checkpoint(path, model, spec, kwargs, extra={"tokenizer": tokenizer.to_json(), "num_frames": int(num_frames),
                                                      "frame_size": int(frame_size), **extra})
    if weights_hash(load_model(str(path))) != weights_hash(model):
        raise RuntimeError(f"{path}: load_model does not rebuild the saved {spec} model (weights hash differs)")  # internal invariant
    return str(path)


def open_video_source(path: str | os.PathLike):
    """FeatureH5 for a path ending .h5/.hdf5, else VideoFolder (errors name the path)."""
    return FeatureH5(path) if str(path).lower().endswith((".h5", ".hdf5")) else VideoFolder(path)


def _load_spec(spec: str, what: str) -> tuple[torch.nn.Module, dict | None]:
    """(model, checkpoint dict or None): a checkpoint file is read once (load_checkpoint), anything else
    goes through load_model. Errors are re-raised with `what` (e.g. "--teacher") and the spec named."""
    from labelstore.trainers.spec import load_checkpoint, load_model, model_from_checkpoint

    try:
        if isinstance(spec, (str, os.PathLike)) and os.path.isfile(spec):
            ckpt = load_checkpoint(spec)
            return model_from_checkpoint(ckpt, source=str(spec)), ckpt
        return load_model(spec), None
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{what} {spec!r}: {e}") from e
    except (ValueError, ImportError, AttributeError, TypeError) as e:
        raise ConfigError(f"{what} {spec!r}: cannot load the model: {e}") from e


def _frame_square(policy: VideoPolicy, store_path) -> int:
    h, w = policy.frame_size
    if h != w:
        raise ConfigError(f"{store_path}: frame_size {policy.frame_size} is not square; the built-in student needs "
                          f"square frames (pass student_spec)")
    return int(h)


def cli_teach_retrieval(
    out: str | os.PathLike,
    videos_dir: str | os.PathLike,
    captions_path: str | os.PathLike,
    teacher_spec: str,
    *,
    epochs: int = 4,
    num_frames: int | None = None,
    frame_size: int | None = None,
    mode: str = "dense",
    batch_size: int = 64,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """`labelstore teach --task retrieval`: run the teacher stage into the store `out`; returns its stats
    (teach_retrieval's) plus "store", "teacher", "tokenizer" ("checkpoint" or "built"), "num_frames", "frame_size".

    videos_dir: a folder of videos, or an HDF5 feature file (.h5/.hdf5). captions_path: JSON lines/CSV
    (video_id, caption). teacher_spec: a checkpoint (.pt, save_checkpoint) or 'module:callable'. The
    tokenizer is the checkpoint's extra["tokenizer"] when present, else built over the captions.
    num_frames / frame_size (square side): None = the checkpoint's extra values, else 8 / 32.
    """
    captions_path = str(captions_path)
    if not os.path.isfile(captions_path):
        raise FileNotFoundError(f"captions file {captions_path} does not exist")
    caps = read_captions(captions_path)
    videos = open_video_source(videos_dir)
    teacher, ckpt = _load_spec(teacher_spec, "teacher")
    extra = (ckpt or {}).get("extra") or {}
    if extra.get("tokenizer") is not None:
        tok, tok_src = Tokenizer.from_json(extra["tokenizer"]), "checkpoint"
    else:
        tok, tok_src = Tokenizer.build(c.text for c in caps), "built"
    vocab = getattr(getattr(getattr(teacher, "text", None), "emb", None), "num_embeddings", None)
    if vocab is not None and vocab < len(tok):
        raise ConfigError(f"teacher {teacher_spec!r}: its text embedding has {vocab} entries but the tokenizer "
                          f"({tok_src}) has {len(tok)} words: save the teacher with extra['tokenizer']")
    num_frames = int(num_frames if num_frames is not None else extra.get("num_frames", 8))
    frame_size = int(frame_size if frame_size is not None else extra.get("frame_size", 32))
    if extra.get("frame_size") is not None and int(extra["frame_size"]) != frame_size:
        raise ConfigError(f"teacher {teacher_spec!r} was saved for frame_size {extra['frame_size']}, not {frame_size}")
    policy = VideoPolicy(FrameSampler(num_frames), frame_size=(frame_size, frame_size))
    cfg = RetrievalTeachConfig(epochs=epochs, seed=seed, mode=mode, batch_size=batch_size)
    stats = teach_retrieval(str(out), videos, captions_path, tok, teacher, policy, cfg, resume=resume, overwrite=overwrite,
                            progress=progress)
    return {**stats, "store": str(out), "teacher": str(teacher_spec), "tokenizer": tok_src,
            "num_frames": num_frames, "frame_size": frame_size}


def cli_train_retrieval(
    store_path: str | os.PathLike,
    videos_dir: str | os.PathLike,
    captions_path: str | os.PathLike | None = None,
    *,
    student_spec: str | None = None,
    mode: str = "cache",
    teaching: str = "both",
    online_teacher: str | None = None,
    eval_captions: str | os.PathLike | None = None,
    epochs: int = 4,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    num_workers: int = 0,
) -> dict[str, Any]:
    """`labelstore train --task retrieval`: train a student from the store; returns the metrics dict
    {"mode", "teaching", "epochs", "loss", "parts", "seconds", "steps", "step_s", "eval" (or None), "store",
    "student", "online_teacher_matches_store" (online mode), "checkpoint", "metrics_path"}.

    captions_path: optional; when given it must equal the store's caption table. student_spec: a
    checkpoint or 'module:callable'; default a HolisticStudent (seeded by `seed`) sized to the store's
    tokenizer, frames and text length. mode "online" needs online_teacher (a spec). teaching: "both",
    "cgt" or "fgt" (train_retrieval_student's ablation switch). eval_captions:
    captions (e.g. the test split) of videos in videos_dir for evaluate_retrieval. out: a directory;
    when given, out/student.pt (save_checkpoint, extra tokenizer/num_frames/frame_size) and
    out/metrics.json are written. num_workers: DataLoader processes decoding the batches.
    """
    import json

    if mode not in TRAIN_MODES:
        raise ConfigError(f"mode must be one of {TRAIN_MODES}, got {mode!r}")
    if mode == "online" and not online_teacher:
        raise ConfigError("mode 'online' needs an online teacher spec (online_teacher / --online-teacher)")
    for what, p in (("captions", captions_path), ("eval captions", eval_captions)):
        if p is not None and not os.path.isfile(p):
            raise FileNotFoundError(f"{what} file {p} does not exist")
    store = labelstore.open(str(store_path))
    if store.task != "retrieval":
        raise StoreError(f"{store_path}: task is {store.task!r}, not 'retrieval'")
    a = store.attrs
    tok = Tokenizer.from_json(a["tokenizer"])
    policy = VideoPolicy.from_json({k: v for k, v in a["policy"].items() if k != "digest"})
    num_frames, text_max_len = int(a["num_frames"]), int(a["text_max_len"])
    videos = open_video_source(videos_dir)
    if student_spec:
        student, ckpt = _load_spec(student_spec, "student")
        if ckpt is not None:
            sspec, skw = ckpt["spec"], dict(ckpt["kwargs"])
            ctok = (ckpt.get("extra") or {}).get("tokenizer")
            if ctok is not None and Tokenizer.from_json(ctok).words != tok.words:
                raise StoreMismatch(f"student {student_spec!r}: its tokenizer differs from the store's ({store_path})")
        else:
            sspec, skw = str(student_spec), {}
        frame_side = policy.frame_size[0]
    else:
        from labelstore.trainers.retrieval_models import HolisticStudent

        frame_side = _frame_square(policy, store_path)
        fdim = int(videos.dim) if isinstance(videos, FeatureH5) else None
        sspec = STUDENT_SPEC
        skw = {"vocab_size": len(tok), "dim": 64, "frame_size": frame_side, "num_frames": num_frames,
               "feature_dim": fdim, "max_len": max(32, text_max_len)}
        torch.manual_seed(seed)
        student = HolisticStudent(**skw)
    teacher = None
    matches = None
    if mode == "online":
        teacher, _ = _load_spec(online_teacher, "online teacher")
        matches = weights_hash(teacher) == a["teacher"]["weights_sha256"]
        if progress and not matches:
            print(f"note: the online teacher {online_teacher!r} is not the teacher that wrote {store_path}", flush=True)
    hist = train_retrieval_student(student, store, videos, None if captions_path is None else str(captions_path),
                                   mode=mode, teaching=teaching, epochs=epochs, batch_size=batch_size, teacher=teacher,
                                   lr=lr, seed=seed, progress=progress, num_workers=num_workers)
    metrics: dict[str, Any] = {
        "mode": mode, "teaching": teaching, "epochs": epochs, "loss": hist["loss"], "parts": hist["parts"], "seconds": hist["seconds"],
        "steps": hist["steps"], "step_s": hist["step_s"], "store": str(store_path), "student": student_spec or sspec,
        "eval": None, "checkpoint": None, "metrics_path": None,
    }
    if matches is not None:
        metrics["online_teacher_matches_store"] = matches
    if eval_captions is not None:
        metrics["eval"] = evaluate_retrieval(student, videos, str(eval_captions), tok, num_frames=num_frames,
                                             frame_size=tuple(policy.frame_size), text_max_len=text_max_len,
                                             batch_size=batch_size)
    if out is not None:
        from pathlib import Path

        od = Path(out)
        od.mkdir(parents=True, exist_ok=True)
        metrics["checkpoint"] = save_retrieval_checkpoint(od / "student.pt", student, sspec, skw, tok, num_frames,
                                                          frame_side, mode=mode, store=str(store_path))
        metrics["metrics_path"] = str(od / "metrics.json")
        tmp = od / "metrics.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=1, default=float))
        os.replace(tmp, od / "metrics.json")
    return metrics


# --------------------------------------------------------------------------------------
# Registry entry points (labelstore.trainers.tasks): the common options and the task's own
# (trainers/retrieval_options.py) in, (result, summary line) out
# --------------------------------------------------------------------------------------


def teach_command(c: TeachCommon, o: RetrievalTeachOptions, warn) -> tuple[dict, str]:
    if not o.captions:
        raise ConfigError("--task retrieval needs --captions FILE")
    r = cli_teach_retrieval(c.out, c.data_spec, o.captions, c.teacher, epochs=c.epochs, num_frames=o.frames,
                            frame_size=o.frame_size, mode=o.similarity_mode, batch_size=c.batch_size, seed=c.seed,
                            resume=c.resume, overwrite=c.overwrite, progress=not c.quiet)
    return r, (f"{c.out}: {r['captions']} captions x {r['videos']} videos, {c.epochs} epochs, mode {r['mode']}, "
               f"{r['seconds']:.1f}s ({r['pairs_per_s']:.0f} pairs/s), {'complete' if r['complete'] else 'incomplete'}")


LOSS_TEACHING = {None: "both", "teachclip": "both", "cgt": "cgt", "fgt": "fgt"}  # --loss -> teaching


def train_command(c: TrainCommon, o: RetrievalTrainOptions, warn) -> tuple[dict, str]:
    if c.loss not in LOSS_TEACHING:
        raise ConfigError(f"--task retrieval: --loss {c.loss!r} is not a retrieval loss; choose teachclip (CgT + FgT, "
                          f"the default), cgt (CgT only) or fgt (FgT only)")
    m = cli_train_retrieval(c.store_path, c.data_spec, o.captions, student_spec=c.student,
                            mode="infonce" if c.mode == "none" else c.mode, teaching=LOSS_TEACHING[c.loss],
                            online_teacher=c.online_teacher, eval_captions=o.eval_captions, epochs=c.epochs or 4,
                            batch_size=c.batch_size, seed=c.seed, out=c.out, progress=True, num_workers=c.workers)
    return m, f"{c.mode} ({m['teaching']}): {m['epochs']} epochs in {m['seconds']:.1f}s; eval {m.get('eval')} -> {c.out}"
