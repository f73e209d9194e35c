"""VideoQA students distilled from a label store: CE, vanilla KD and RADI (cached or online teacher).

Per batch of questions (frames replayed from the store's `aug/frames/indices`):

    L = L_cls + alpha * L_rank,       L_cls = CE(student logits, annotated answer)  (gt = -1 ignored)

    "kd"  : L_rank = KL(q || softmax(z / tau)) tau^2,  q = top-K teacher probabilities scattered into
            the vocabulary and renormalised (kd_kl)
    "radi": L_rank = pair_weight * L_pair + list_weight * L_list   (radi_objective), on student scores
            s = log_softmax(z):
            L_pair: hot list = the teacher's top hot_k answers (stored order);
                    U = mc_pair_uncertainty(MC probabilities of the hot list) [B, hot, hot],
                    M = sinkhorn_margins(U, margin, epsilon),
                    radi_pairwise_loss(s[hot], p_teacher[hot], M)
            L_list: list = hot_k top answers + cold_n sampled (Exp or Zipf over ranks) from the rest of
                    the stored K (sample_partial_list), radi_listwise_loss(s[list], p_teacher[list])

mode="cache" reads the targets of store epoch e % E; mode="online" runs the teacher (T MC passes,
head only) on the same replayed frames. Both draw the cold list and the batch order from the same
seeds, (seed, epoch, batch), so they differ only by float16 rounding of the targets and by the MC
masks (online masks are keyed by the student's batch, stored ones by the teacher stage's batch).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import labelstore
from labelstore.integrity import StoreError, StoreMismatch
from labelstore.pipeline import rng
from labelstore.pipeline.teach_videoqa import (
    ClipCache,
    QASet,
    frame_indices,
    mc_seed,
    prepare_questions,
    teacher_targets,
    video_grouped_order,
)
from labelstore.pipeline.text import AnswerVocab, Question, Tokenizer
from labelstore.pipeline.video import FrameSampler, VideoPolicy
from labelstore.trainers.losses import (
    kd_kl,
    mc_pair_uncertainty,
    radi_listwise_loss,
    radi_objective,
    radi_pairwise_loss,
    sample_partial_list,
    sinkhorn_margins,
)

METHODS = ("ce", "kd", "radi")
MODES = ("cache", "online")


def _batch_seed(seed: int, epoch: int, batch: int) -> int:
    return int(rng.mix64(rng.mix64(np.uint64(seed) ^ np.uint64(0x5AD1)) ^ np.uint64(epoch * 1_000_003 + batch))) & 0x7FFF_FFFF_FFFF_FFFF


def _ce(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean CE over rows with gt >= 0 (0, attached to the graph, when there are none)."""
    ok = gt >= 0
    if not ok.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[ok], gt[ok])


# --------------------------------------------------------------------------------------
# Teacher (plain CE on the annotated answer)
# --------------------------------------------------------------------------------------


def train_videoqa_classifier(
    model: nn.Module,
    videos,
    qa: QASet,
    sampler: FrameSampler,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 5e-3,
    seed: int = 0,
    frame_size: tuple[int, int] = (32, 32),
    cache: ClipCache | None = None,
    progress: bool = False,
) -> dict:
    """Train `model` with CE on the annotated answer; frames drawn per epoch by `sampler` keyed by
    (seed, epoch, video row). Returns {"seconds", "loss": [per epoch]}."""
    policy = VideoPolicy(sampler=sampler, frame_size=tuple(frame_size))
    cache = cache or ClipCache(videos)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(qa) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    t0, losses = time.perf_counter(), []
    for e in range(epochs):
        model.train()
        idx_e = frame_indices(sampler, seed, e, videos, qa.video_rows)  # [N, m]
        order = video_grouped_order(qa.video_rows, seed, e)
        tot = 0.0
        for b0 in range(0, len(qa), batch_size):
            rows = order[b0 : b0 + batch_size]
            x, vi = cache.shared_views(policy, qa.video_rows[rows], idx_e[rows])  # [V, m, 3, h, w], [B]
            logits = model(x, torch.as_tensor(qa.q_ids[rows]), torch.as_tensor(qa.q_mask[rows]), vi)
            loss = _ce(logits, torch.as_tensor(qa.gt[rows]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(rows)
        losses.append(tot / len(qa))
        if progress:
            print(f"  teacher epoch {e}: loss {losses[-1]:.3f}", flush=True)
    return {"seconds": time.perf_counter() - t0, "loss": losses}


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


def evaluate_videoqa(
    model: nn.Module,
    videos,
    questions: str | os.PathLike | Sequence[Question] | QASet,
    vocab: AnswerVocab,
    *,
    tokenizer: Tokenizer | None = None,
    num_frames: int = 8,
    frame_size: tuple[int, int] = (32, 32),
    max_len: int = 16,
    batch_size: int = 256,
    cache: ClipCache | None = None,
) -> dict:
    """Accuracy of argmax answers on `uniform` frames (the same every time):

    acc_annotated = mean[pred == annotated answer]       (answers outside the vocabulary count as wrong)
    acc_any       = mean[pred in the question's `answers`] (the annotated answer where `answers` is absent)
    """
    if isinstance(questions, QASet):
        qa = questions
    else:
        if tokenizer is None:
            raise ValueError("evaluate_videoqa: pass the tokenizer (or a prepared QASet)")
        qa = prepare_questions(videos, questions, tokenizer, vocab, strict_answers=False, max_len=max_len)
    sampler = FrameSampler(num_frames=num_frames, mode="uniform")
    policy = VideoPolicy(sampler=sampler, frame_size=tuple(frame_size))
    cache = cache or ClipCache(videos)
    idx = frame_indices(sampler, 0, 0, videos, qa.video_rows)
    preds = []
    model.eval()
    with torch.no_grad():
        for b0 in range(0, len(qa), batch_size):
            rows = np.arange(b0, min(len(qa), b0 + batch_size))
            x, vi = cache.shared_views(policy, qa.video_rows[rows], idx[rows])
            preds.append(model(x, torch.as_tensor(qa.q_ids[rows]), torch.as_tensor(qa.q_mask[rows]), vi).argmax(1).numpy())
    pred = np.concatenate(preds)
    sets = [{vocab.index(a) for a in (q.answers or [q.answer])} - {-1} for q in qa.questions]
    return {"acc_annotated": float((pred == qa.gt).mean()),
            "acc_any": float(np.mean([int(p) in s for p, s in zip(pred, sets)])), "n": len(qa)}


# --------------------------------------------------------------------------------------
# Students
# --------------------------------------------------------------------------------------


def _open(store) -> labelstore.LabelStore:
    store = labelstore.open(store) if isinstance(store, (str, os.PathLike)) else store
    if store.task != "videoqa":
        raise StoreError(f"{store.path}: task is {store.task!r}, expected 'videoqa'")
    return store


def check_store_k(store, hot_k: int, cold_n: int, *, pairwise: bool = True, listwise: bool = True) -> None:
    """StoreError naming the store when its K cannot hold the hot list (+ cold pool)."""
    K = store.top_k
    need = (hot_k + cold_n) if listwise else hot_k if pairwise else 0
    if need > K:
        what = f"hot_k + cold_n = {hot_k} + {cold_n} = {hot_k + cold_n}" if listwise else f"hot_k = {hot_k}"
        raise StoreError(f"{store.path}: the store keeps top_k = {K} answers per view, but RADI asks for {what}; "
                         f"rebuild it with a larger top_k (at most the vocabulary size {store.num_classes}) "
                         f"or lower hot_k/cold_n")
    if pairwise and hot_k < 2:
        raise ValueError(f"pairwise RADI needs hot_k >= 2, got {hot_k}")
    if pairwise and store.mc_passes < 2:
        raise StoreError(f"{store.path}: adaptive pairwise RADI needs MC passes; the store has mc_passes = {store.mc_passes}")


def rank_loss_radi(
    logits: torch.Tensor,
    vals: torch.Tensor,
    idx: torch.Tensor,
    mc: torch.Tensor | None,
    generator: torch.Generator,
    *,
    pairwise: bool,
    listwise: bool,
    hot_k: int,
    cold_n: int,
    scheme: str,
    scheme_alpha: float | None,
    list_method: str,
    margin: float,
    epsilon: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_pair, L_list) of one batch. logits [B, A]; vals [B, K] teacher probabilities (descending),
    idx [B, K] their answer ids, mc [B, T, K] MC-pass probabilities of the same answers."""
    s = F.log_softmax(logits, dim=1)  # [B, A] student scores
    zero = logits.sum() * 0.0
    pair = lst = zero
    if pairwise:
        s_hot = s.gather(1, idx[:, :hot_k])  # [B, hot]
        U = mc_pair_uncertainty(mc[:, :, :hot_k])  # [B, hot, hot]
        M = sinkhorn_margins(U, margin=margin, epsilon=epsilon).to(s.dtype)
        pair = radi_pairwise_loss(s_hot, vals[:, :hot_k], M)
    if listwise:
        pos = sample_partial_list(vals, hot_k, cold_n, scheme, scheme_alpha, generator)  # [B, L] positions in K
        lst = radi_listwise_loss(s.gather(1, idx.gather(1, pos)), vals.gather(1, pos), list_method, generator=generator)
    return pair, lst


def train_videoqa_student(
    student: nn.Module,
    store,
    videos,
    questions: str | os.PathLike | Sequence[Question],
    *,
    method: str = "radi",
    mode: str = "cache",
    alpha: float = 1.0,
    pairwise: bool = True,
    listwise: bool = True,
    pair_weight: float = 1.0,
    list_weight: float = 1.0,
    hot_k: int = 10,
    cold_n: int = 10,
    scheme: str = "exp",
    scheme_alpha: float | None = None,
    list_method: str = "listmle",
    margin: float = 1.0,
    epsilon: float = 1.0,
    temperature: float = 1.0,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 5e-3,
    seed: int = 0,
    teacher: nn.Module | None = None,
    cache: ClipCache | None = None,
    progress: bool = False,
) -> dict:
    """Train `student` on the store's questions; returns {"seconds", "steps", "seconds_per_step", "loss"}.

    store: path or LabelStore of task "videoqa" built from `videos` and `questions` (checked by
    digest). Student epoch e replays store epoch e % E (frames, and in cache mode the targets).
    method: "ce" (L_cls only), "kd" (+ alpha * kd_kl at `temperature`), "radi" (+ alpha * ranking,
    see the module docstring). mode="online" needs `teacher` and recomputes the targets live with
    the store's top_k and mc_passes. K must be >= hot_k + cold_n (listwise) or hot_k (pairwise).
    Batches: `video_grouped_order` keyed by (seed, epoch) (a video's questions together: each clip is
    encoded once per batch); the cold list of batch b in epoch e is drawn from seed (seed, e, b).
    """
    if method not in METHODS or mode not in MODES:
        raise ValueError(f"method must be one of {METHODS} and mode one of {MODES}, got {method!r}, {mode!r}")
    if mode == "online" and method != "ce" and teacher is None:
        raise ValueError("mode='online' needs the teacher")
    store = _open(store)
    a = store.attrs
    vocab, tokenizer = AnswerVocab.from_json(a["vocab"]), Tokenizer.from_json(a["tokenizer"])
    tc = a["teach_config"]
    qa = prepare_questions(videos, questions, tokenizer, vocab, strict_answers=tc["strict_answers"], max_len=tc["max_len"])
    if qa.digest != a["dataset"]["questions_digest"] or len(qa) != store.num_samples:
        raise StoreMismatch(f"{store.path}: the questions given ({qa.path or 'records'}, {len(qa)}) are not the ones "
                            f"the store was built from ({a['dataset'].get('questions_path')}, {store.num_samples})")
    if videos.fingerprint()["digest"] != a["dataset"]["videos"]["digest"]:
        raise StoreMismatch(f"{store.path}: the video source differs from the one the store was built from")
    if method == "radi":
        check_store_k(store, hot_k, cold_n, pairwise=pairwise, listwise=listwise)
    policy = VideoPolicy.from_json({k: v for k, v in a["policy"].items() if k != "digest"})
    K, T, E, seed_t = store.top_k, store.mc_passes, store.epochs, int(a["seed"])
    cache = cache or ClipCache(videos)
    if teacher is not None:
        teacher.eval()
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    steps_total = epochs * -(-len(qa) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps_total, pct_start=0.15)
    gt_all = torch.as_tensor(qa.gt)
    t0, steps, losses = time.perf_counter(), 0, []
    for e in range(epochs):
        se = e % E
        idx_e = store.read_array("aug/frames/indices", epoch=se)  # [N, m]
        if method != "ce" and mode == "cache":
            tv = torch.from_numpy(store.read_array("topk_values", epoch=se).astype(np.float32))  # [N, K]
            ti = torch.from_numpy(store.read_array("topk_indices", epoch=se).astype(np.int64))  # [N, K]
            tm = torch.from_numpy(store.read_array("mc_values", epoch=se).astype(np.float32)) if T else None  # [N, T, K]
        order = video_grouped_order(qa.video_rows, seed, e)
        student.train()
        tot = 0.0
        for b, b0 in enumerate(range(0, len(qa), batch_size)):
            rows = order[b0 : b0 + batch_size]
            x, vi = cache.shared_views(policy, qa.video_rows[rows], idx_e[rows])  # [V, m, 3, h, w], [B]
            q_ids, q_mask = torch.as_tensor(qa.q_ids[rows]), torch.as_tensor(qa.q_mask[rows])
            gt = gt_all[rows]
            logits = student(x, q_ids, q_mask, vi)  # [B, A]
            loss = _ce(logits, gt)
            if method != "ce":
                if mode == "cache":
                    r = torch.as_tensor(rows)
                    vals, idx, mc = tv[r], ti[r], (tm[r] if tm is not None else None)
                else:
                    tt = teacher_targets(teacher, x, q_ids, q_mask, gt, K, T, mc_seed(seed_t, se, int(rows[0])), video_index=vi)
                    vals, idx, mc = tt["topk_values"], tt["topk_indices"], tt.get("mc_values")
                if method == "kd":
                    q = torch.zeros_like(logits).scatter_(1, idx, vals)
                    loss = loss + alpha * kd_kl(logits, q / q.sum(1, keepdim=True), temperature)
                else:
                    gen = torch.Generator().manual_seed(_batch_seed(seed, e, b))
                    pair, lst = rank_loss_radi(logits, vals, idx, mc, gen, pairwise=pairwise, listwise=listwise,
                                               hot_k=hot_k, cold_n=cold_n, scheme=scheme, scheme_alpha=scheme_alpha,
                                               list_method=list_method, margin=margin, epsilon=epsilon)
                    loss = radi_objective(loss, pair, lst, alpha, pair_weight, list_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
            tot += float(loss.detach()) * len(rows)
        losses.append(tot / len(qa))
        if progress:
            print(f"  {method}/{mode} epoch {e}: loss {losses[-1]:.3f}", flush=True)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "steps": steps, "seconds_per_step": seconds / max(steps, 1), "loss": losses}


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
            student_epochs=20, top_k=64, mc_passes=8, hot_k=5, cold_n=8, alpha=1.0, margin=1.0, batch_size=64)


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

    from labelstore.pipeline.teach_videoqa import teach_videoqa

    store_path = str(out_dir / "videoqa.zarr")
    st = teach_videoqa(store_path, videos, data["questions_train"], tokenizer, vocab, teacher, sampler,
                       epochs=cfg["store_epochs"], seed=seed, top_k=cfg["top_k"], mc_passes=cfg["mc_passes"],
                       batch_size=256, shard_rows=512, frame_size=fs, strict_answers=False, overwrite=True)
    log(f"teacher stage: {st['views']} views, T={cfg['mc_passes']}, K={st['top_k']}, {st['seconds']:.1f}s", flush=True)

    runs = [("CE", "ce", "cache"), ("CE + KD (store)", "kd", "cache"),
            ("CE + RADI (store)", "radi", "cache"), ("CE + RADI (online)", "radi", "online")]
    rows = []
    for name, method, mode in runs:
        torch.manual_seed(seed + 7)
        student = videoqa_student(len(tokenizer), len(vocab), num_frames=m, frame_size=cfg["size"])
        r = train_videoqa_student(student, store_path, videos, data["questions_train"], method=method, mode=mode,
                                  alpha=(1.0 if method == "kd" else cfg["alpha"]), hot_k=cfg["hot_k"],
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
    from labelstore.pipeline.teach_videoqa import teach_videoqa
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
                               sampler, epochs=4, seed=seed, top_k=64, mc_passes=mc_passes, batch_size=128,
                               shard_rows=256, strict_answers=False, head_only=head_only, overwrite=True)
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
        raise RuntimeError(f"{path}: load_model does not rebuild the saved weights ({spec}, {kwargs})")
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
        raise ValueError(f"{role} spec must be a non-empty string, got {spec!r}")
    if spec in MODELS:
        raise ValueError(f"{role} spec {spec!r} is a built-in image classifier; a VideoQA {role} takes (frames, q_ids, "
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
            raise ValueError("expected a checkpoint path ending in .pt or 'module:callable'")
    except Exception as e:
        msg = str(e)
        raise ValueError(f"{role}: {msg}" if repr(spec) in msg else f"{role} spec {spec!r}: {msg}") from e
    cfg = getattr(model, "config", None)
    if isinstance(cfg, dict):
        for key, want_v in (("num_answers", num_answers), ("num_tokens", num_tokens), ("num_frames", num_frames),
                            ("frame_size", frame_size)):
            if want_v is not None and key in cfg and cfg[key] != want_v:
                raise ValueError(f"{role} spec {spec!r}: the model has {key}={cfg[key]}, but {want_v} is needed here")
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
    top_k: int = 64,
    mc_passes: int = 8,
    batch_size: int = 128,
    seed: int = 0,
    strict_answers: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Teacher stage for VideoQA from plain arguments (the `teach-videoqa` command).

    teacher_spec: a checkpoint (save_checkpoint / run_videoqa_demo's teacher.pt) or 'module:callable'.
    The tokenizer and answer vocabulary come from the checkpoint's extra when it has them, else they
    are built from the questions file (words of the questions; every answer, `answers` included).
    num_frames/frame_size must match the checkpoint's extra when it records them. Returns
    teach_videoqa's dict plus {"store", "num_questions", "num_answers", "teacher"}.
    """
    from labelstore.pipeline.teach_videoqa import teach_videoqa
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
            raise ValueError(f"teacher spec {teacher_spec!r} was trained with {key}={extra[key]}, got {key}={val}")
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
                raise ValueError(f"teacher spec {teacher_spec!r}: the model has {key}={cfg[key]}, but the "
                                 f"{'vocabulary' if key == 'num_answers' else 'tokenizer' if key == 'num_tokens' else 'sampler'} "
                                 f"({source}) needs {n}")
    log(f"teacher {teacher_spec}: {type(teacher).__name__}; tokenizer/vocab from {source}: "
        f"{len(tokenizer)} words, {len(vocab)} answers")
    teacher_info = {"name": type(teacher).__name__, "spec": teacher_spec, "weights_sha256": weights_hash(teacher),
                    "params": int(sum(p.numel() for p in teacher.parameters()))}
    st = teach_videoqa(str(out), videos, questions_path, tokenizer, vocab, teacher, FrameSampler(num_frames=num_frames),
                       epochs=epochs, seed=seed, top_k=top_k, mc_passes=mc_passes, batch_size=batch_size,
                       frame_size=(frame_size, frame_size), strict_answers=strict_answers, teacher_info=teacher_info,
                       resume=resume, overwrite=overwrite, progress=progress)
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
    alpha: float = 0.1,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Train a VideoQA student from a store (the `train-videoqa` command); see train_videoqa_student.

    student_spec: checkpoint or 'module:callable' (default videoqa_student), built for the store's
    tokenizer, vocabulary, num_frames and frame size. mode="online" (method kd/radi) needs
    online_teacher (checkpoint or 'module:callable'). eval_questions: questions file on the same
    videos; adds acc_annotated / acc_any. out: directory for student.pt (save_checkpoint, with the
    tokenizer/vocab in extra) and metrics.json. Returns the metrics dict.
    """
    import json

    from labelstore.pipeline.teacher import weights_hash
    from labelstore.pipeline.video import VideoFolder

    if method not in METHODS or mode not in MODES:
        raise ValueError(f"method must be one of {METHODS} and mode one of {MODES}, got {method!r}, {mode!r}")
    log = _cli_log(progress)
    store = _open(str(store_path))
    if method == "radi":
        check_store_k(store, hot_k, cold_n)
    if mode == "online" and method != "ce" and not online_teacher:
        raise ValueError("mode='online' needs online_teacher (a checkpoint or 'module:callable')")
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
                              cold_n=cold_n, scheme=scheme, epochs=epochs, batch_size=batch_size, seed=seed,
                              teacher=teacher, cache=cache, progress=progress)
    metrics = {"method": method, "mode": mode, "store": str(store_path), "epochs": epochs, "batch_size": batch_size,
               "seed": seed, "alpha": alpha, "hot_k": hot_k, "cold_n": cold_n, "scheme": scheme, **r,
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
