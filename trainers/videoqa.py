"""VideoQA students distilled from a label store: CE, vanilla KD and RADI (cached or online teacher).

Per batch of questions (frames replayed from the store's `aug/frames/indices`):

    L = L_cls + alpha * L_rank,       L_cls = CE(student logits, annotated answer)  (gt = -1 ignored)

    "kd"  : L_rank = KL(q || softmax(z / tau)) tau^2,  q = top-K teacher probabilities scattered into
            the vocabulary and renormalised (kd_kl)
    "radi": L_rank = pair_weight * L_pair + list_weight * L_list   (radi_objective);
            rank="pairwise" | "listwise" | "both" keeps one term or both:
            L_pair: on the student's PROBABILITIES p = softmax(z), as the paper writes it;
                    hot list = the teacher's top hot_k answers (stored order);
                    margins="adaptive": U = mc_pair_uncertainty(MC probabilities of the hot list)
                    [B, hot, hot], M = sinkhorn_margins(U, margin, epsilon) (U and epsilon both on
                    the probability scale: RADI_EPSILON = 0.01);
                    margins="fixed": M = margin (the same constant for every pair);
                    margins="shuffled": the adaptive M with each row's off-diagonal entries permuted
                    (shuffle_within_rows; the control: same margins, not tied to their pairs);
                    radi_pairwise_loss(p[hot], p_teacher[hot], M), margin = RADI_MARGIN = 0.1
            L_list: list = the teacher's top hot_k + cold_n answers drawn over the teacher's FULL
                    ranking (sample_cold_full_ranking, Exp or Zipf law over ranks hot_k+1..A), so the
                    store must hold the full ranking (top_k = A);
                    radi_listwise_loss(log_softmax(z)[list], p_teacher[list]) (ListMLE: mean per position)
            alpha defaults to RADI_ALPHA everywhere (trainer, demo, CLI).
    "token-mse": L_rank = query_token_mse between the student's projected tokens and the teacher's
            stored tokens (trainers/videoqa_tokens.py; a store taught with --features, mode="cache")

mode="cache" reads the targets of store epoch e % E; mode="online" runs the teacher (T MC passes,
head only) on the same replayed frames. Both draw the cold list and the batch order from the same
seeds, (seed, epoch, batch), so they differ only by float16 rounding of the targets and by the MC
masks (online masks are keyed by the student's batch, stored ones by the teacher stage's batch).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import labelstore
from labelstore.errors import ConfigError
from labelstore.integrity import StoreError
from labelstore.pipeline import rng
from labelstore.pipeline.teach_videoqa import mc_seed, teacher_targets
from labelstore.pipeline.replay import check_data, epoch_batches
from labelstore.pipeline.videoqa_data import ClipCache, QAReplay, QASet, frame_indices, prepare_questions
from labelstore.pipeline.text import AnswerVocab, Question, Tokenizer
from labelstore.pipeline.video import FrameSampler, VideoPolicy
from labelstore.trainers.losses import (
    kd_kl,
    mc_pair_uncertainty,
    radi_listwise_loss,
    radi_objective,
    radi_pairwise_loss,
    sample_cold_full_ranking,
    shuffle_within_rows,
    sinkhorn_margins,
)
from labelstore.trainers.loop import LoopConfig, StepResult, train
from labelstore.trainers.videoqa_tokens import TOKEN_LOSS, TokenStudent

METHODS = ("ce", "kd", "radi", TOKEN_LOSS)
MODES = ("cache", "online")
RANKS = ("pairwise", "listwise", "both")  # which RADI terms run
MARGINS = ("adaptive", "fixed", "shuffled")  # Sinkhorn margins from the MC uncertainty, the constant
# margin, or the Sinkhorn margins shuffled within each row (the control of "adaptive")
RADI_ALPHA = 1.0  # the one default weight of the ranking loss (L = L_cls + alpha * L_rank)
RADI_MARGIN = 0.1  # base margin m of the pairwise hinge, in probability units (docs/losses.md)
RADI_EPSILON = 0.01  # Sinkhorn epsilon, on the scale of U (std of MC probability gaps, median ~0.01)
# U / epsilon spans tens where the teacher is unsure, and Sinkhorn then converges slowly: the trainer
# allows more steps and a marginal error of 1e-6 (against marginals 1/K = 0.1 for K = 10)
SINKHORN_ITERS, SINKHORN_TOL = 1000, 1e-6
VIDEOQA_WD = 1e-4  # AdamW weight decay of the VideoQA models (teacher and students)


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
    seed: int = 0,
    frame_size: tuple[int, int] = (32, 32),
    cache: ClipCache | None = None,
    all_answers: AnswerVocab | None = None,
    lr: float = 5e-3,
    progress: bool = False,
    num_workers: int = 0,
) -> dict:
    """Train `model` with CE on the annotated answer; frames drawn per epoch by `sampler` keyed by
    (seed, epoch, video row) (QAReplay without a store), trained by labelstore.trainers.loop.train
    (AdamW at `lr`, weight decay VIDEOQA_WD, warmup-cosine). Returns {"seconds", "loss": [per epoch]}.

    all_answers=vocab (the QASet's AnswerVocab): CE against y uniform over the question's acceptable
    answers instead (a teacher shown every acceptable answer; a question without `answers` uses gt):
        loss = -(1/|S|) sum_{a in S} log softmax(z)_a,   S = qa.answer_sets(vocab) of the question"""
    policy = VideoPolicy(sampler=sampler, frame_size=tuple(frame_size))
    target = None
    if all_answers is not None:
        sets = qa.answer_sets(all_answers) or [{int(g)} - {-1} for g in qa.gt]
        target = torch.zeros(len(qa), len(all_answers))  # [N, A], rows sum to 1 (0 for a question without answers)
        for i, s_i in enumerate(sets):
            target[i, sorted(s_i)] = 1.0 / max(len(s_i), 1)
    ds = QAReplay(videos, qa, policy, batch_size=batch_size, seed=seed, cache=cache)

    def step(m: nn.Module, b: dict) -> StepResult:
        logits = m(b["x"], b["q_ids"], b["q_mask"], b["video_index"])
        if target is None:
            loss = _ce(logits, b["gt"])
        else:
            loss = -(target[b["rows"]] * F.log_softmax(logits, dim=1)).sum(1).mean()
        return StepResult(loss, len(b["rows"]))

    cfg = LoopConfig(epochs=epochs, lr=lr, weight_decay=VIDEOQA_WD, progress=progress, desc="teacher")
    res = train(model, epoch_batches(ds, num_workers), step, cfg, lengths=[ds.num_batches(e) for e in range(epochs)],
                on_epoch=_print_epoch("teacher") if cfg.progress else None)
    return {"seconds": res["seconds"], "loss": [r["loss"] for r in res["history"]]}


def _print_epoch(name: str):
    return lambda rec: print(f"  {name} epoch {rec['epoch']}: loss {rec['loss']:.3f}", flush=True)


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
            raise ConfigError("evaluate_videoqa: pass the tokenizer (or a prepared QASet)")
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


def check_radi(store, hot_k: int, cold_n: int, rank: str = "both", margins: str = "adaptive") -> None:
    """ValueError for bad RADI settings; StoreError naming the store when it lacks what they need:
    the listwise term needs the full ranking (top_k = the vocabulary size A, so cold answers can be
    drawn from any rank), the pairwise term hot_k <= K, adaptive margins >= 2 MC passes."""
    if rank not in RANKS or margins not in MARGINS:
        raise ConfigError(f"rank must be one of {RANKS} and margins one of {MARGINS}, got {rank!r}, {margins!r}")
    K, A = store.top_k, store.num_classes
    pairwise, listwise = rank in ("pairwise", "both"), rank in ("listwise", "both")
    if pairwise and hot_k < 2:
        raise ConfigError(f"pairwise RADI needs hot_k >= 2, got {hot_k}")
    if listwise and hot_k + cold_n > A:
        raise ConfigError(f"hot_k + cold_n = {hot_k} + {cold_n} exceeds the {A} answers of the vocabulary")
    if listwise and K < A:
        raise StoreError(f"{store.path}: listwise RADI draws cold answers over the teacher's full ranking, but the "
                         f"store keeps only the top {K} of {A} answers per view; rebuild it with top_k = {A} "
                         f"(--top-k {A})")
    if pairwise and hot_k > K:
        raise StoreError(f"{store.path}: the store keeps top_k = {K} answers per view, but the hot list needs "
                         f"hot_k = {hot_k}; rebuild it with a larger top_k or lower hot_k")
    if pairwise and margins != "fixed" and store.mc_passes < 2:
        raise StoreError(f"{store.path}: adaptive margins need MC passes; the store has mc_passes = "
                         f"{store.mc_passes} (rebuild with mc_passes >= 2, or use margins='fixed')")


def list_positions(B: int, K: int, hot_k: int, cold_n: int, scheme: str, scheme_alpha: float | None,
                   generator: torch.Generator) -> torch.Tensor:
    """RADI's partial list as positions in the stored ranking (position = rank - 1): [B, hot_k + cold_n],
    best first; positions 0..hot_k-1 plus cold_n drawn over ranks hot_k+1..K by sample_cold_full_ranking
    (Exp or Zipf law). With K = A (the full ranking) the cold list can reach every answer."""
    by_rank = -torch.arange(K, dtype=torch.float32).expand(B, K)  # [B, K], higher = better ranked
    return sample_cold_full_ranking(by_rank, hot_k, cold_n, scheme, scheme_alpha, generator)


def pair_margins(mc: torch.Tensor | None, margins: str, hot_k: int, margin: float, epsilon: float,
                 shuffle_seed: int = 0) -> torch.Tensor | float:
    """The pairwise margins of the hot list: `margin` (fixed), or M [B, hot, hot] (float32):
    U = mc_pair_uncertainty(mc[:, :, :hot_k]), M = sinkhorn_margins(U, margin, epsilon) (adaptive),
    shuffle_within_rows(M) with a generator seeded by shuffle_seed (shuffled). mc: [B, T, >= hot_k]."""
    if margins == "fixed":
        return margin
    U = mc_pair_uncertainty(mc[:, :, :hot_k].float())  # [B, hot, hot]
    M = sinkhorn_margins(U, margin=margin, epsilon=epsilon, iters=SINKHORN_ITERS, tol=SINKHORN_TOL)
    if margins == "shuffled":
        M = shuffle_within_rows(M, torch.Generator().manual_seed(shuffle_seed))
    return M.float()


def rank_loss_radi(
    logits: torch.Tensor,
    vals: torch.Tensor,
    idx: torch.Tensor,
    mc: torch.Tensor | None,
    generator: torch.Generator,
    *,
    rank: str,
    margins: str,
    hot_k: int,
    cold_n: int,
    scheme: str,
    scheme_alpha: float | None,
    list_method: str,
    margin: float,
    epsilon: float,
    hot_margins: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_pair, L_list) of one batch; a term that `rank` leaves out is 0 (attached to the graph).

    hot_margins [B, hot, hot]: the margins pair_margins gives for these rows, computed beforehand
    (a store's margins are fixed per view; margins, margin, epsilon and mc are then not used for them).

    logits [B, A]; vals [B, K] teacher probabilities in the teacher's order (the full ranking when
    K = A), idx [B, K] their answer ids, mc [B, T, K] MC-pass probabilities of the same answers.
    The list is drawn as positions of the stored ranking (list_positions), so ties in the float16
    values keep the teacher's float32 order. The pairwise hinge is on probabilities p = softmax(z)
    (margins in probability units), the listwise term on log-probabilities (ListMLE, ListNet and
    LambdaLoss are shift invariant in the scores, so log_softmax(z) is z). `generator` draws the cold
    list; the shuffle of margins="shuffled" has its own generator, seeded from generator.initial_seed(),
    so every arm of one seed draws the same cold lists."""
    zero = logits.sum() * 0.0
    pair = lst = zero
    if rank in ("pairwise", "both"):
        p_hot = F.softmax(logits, dim=1).gather(1, idx[:, :hot_k])  # [B, hot] student probabilities
        if hot_margins is None:
            M = pair_margins(mc, margins, hot_k, margin, epsilon, generator.initial_seed() ^ 0x5F1E)
        else:
            M = hot_margins
        M = M.to(logits.dtype) if isinstance(M, torch.Tensor) else M
        pair = radi_pairwise_loss(p_hot, vals[:, :hot_k].to(logits.dtype), M)
    if rank in ("listwise", "both"):
        s = F.log_softmax(logits, dim=1)  # [B, A]
        pos = list_positions(vals.shape[0], vals.shape[1], hot_k, cold_n, scheme, scheme_alpha, generator)  # [B, L]
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
    alpha: float = RADI_ALPHA,
    rank: str = "both",
    margins: str = "adaptive",
    pair_weight: float = 1.0,
    list_weight: float = 1.0,
    hot_k: int = 10,
    cold_n: int = 10,
    scheme: str = "exp",
    scheme_alpha: float | None = None,
    list_method: str = "listmle",
    margin: float = RADI_MARGIN,
    epsilon: float = RADI_EPSILON,
    temperature: float = 1.0,
    epochs: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    teacher: nn.Module | None = None,
    cache: ClipCache | None = None,
    loop: LoopConfig | None = None,
    progress: bool = False,
    num_workers: int = 0,
) -> dict:
    """Train `student` on the store's questions; returns {"seconds", "steps", "seconds_per_step", "loss"}.

    store: path or LabelStore of task "videoqa" built from `videos` and `questions` (checked by
    digest, labelstore.pipeline.replay.check_data). Student epoch e replays store epoch e % E
    (frames, and in cache mode the targets), through the QAReplay dataset: num_workers DataLoader
    processes decode and render the clips (the same batches for any number).
    method: "ce" (L_cls only), "kd" (+ alpha * kd_kl at `temperature`), "radi" (+ alpha * ranking,
    see the module docstring; rank picks the terms, margins the pairwise margins; check_radi says
    what the store must hold). mode="online" needs `teacher` and recomputes the targets live with
    the store's top_k and mc_passes.
    Batches: `video_grouped_order` keyed by (seed, epoch) (a video's questions together: each clip is
    encoded once per batch); the cold list of batch b in epoch e is drawn from seed (seed, e, b).
    loop: optimiser/schedule settings (default LoopConfig(lr=5e-3, weight_decay=VIDEOQA_WD)); its
    epochs and progress are `epochs` and `progress` (a progress bar and one line per epoch).
    """
    if method not in METHODS or mode not in MODES:
        raise ConfigError(f"method must be one of {METHODS} and mode one of {MODES}, got {method!r}, {mode!r}")
    if mode == "online" and method != "ce" and teacher is None:
        raise ConfigError("mode='online' needs the teacher")
    if mode == "online" and method == TOKEN_LOSS:
        raise ConfigError(f"--loss {TOKEN_LOSS} reads the teacher's tokens from the store: use --mode cache")
    store = _open(store)
    a = store.attrs
    vocab, tokenizer = AnswerVocab.from_json(a["vocab"]), Tokenizer.from_json(a["tokenizer"])
    tc = a["teach_config"]
    qa = prepare_questions(videos, questions, tokenizer, vocab, strict_answers=tc["strict_answers"], max_len=tc["max_len"])
    policy = VideoPolicy.from_json({k: v for k, v in a["policy"].items() if k != "digest"})
    ds = QAReplay(videos, qa, policy, batch_size=batch_size, seed=seed, store=store,
                  targets=method in ("kd", "radi") and mode == "cache", cache=cache)
    check_data(store, ds)
    if method == "radi":
        check_radi(store, hot_k, cold_n, rank, margins)
    K, T, seed_t = store.top_k, store.mc_passes, int(a["seed"])
    if teacher is not None:
        teacher.eval()
    model = student
    if method == TOKEN_LOSS:  # the student and its projector, trained together
        model = TokenStudent(student, store, policy.num_frames, tuple(policy.frame_size), tc["max_len"])

    def step(model: nn.Module, bt: dict) -> StepResult:
        x, vi, q_ids, q_mask, gt, rows = bt["x"], bt["video_index"], bt["q_ids"], bt["q_mask"], bt["gt"], bt["rows"]
        logits = model(x, q_ids, q_mask, vi)  # [B, A]
        loss = _ce(logits, gt)
        if method == TOKEN_LOSS:
            loss = loss + alpha * model.token_loss(bt["store_epoch"], rows)
        elif method != "ce":
            if mode == "cache":
                vals, idx, mc = bt["topk_values"], bt["topk_indices"], bt.get("mc_values")
            else:
                tt = teacher_targets(teacher, x, q_ids, q_mask, gt, K, T, mc_seed(seed_t, bt["store_epoch"], int(rows[0])),
                                     video_index=vi)
                vals, idx, mc = tt["topk_values"], tt["topk_indices"], tt.get("mc_values")
            if method == "kd":
                q = torch.zeros_like(logits).scatter_(1, idx, vals)
                loss = loss + alpha * kd_kl(logits, q / q.sum(1, keepdim=True), temperature)
            else:
                gen = torch.Generator().manual_seed(_batch_seed(seed, bt["epoch"], bt["batch"]))
                pair, lst = rank_loss_radi(logits, vals, idx, mc, gen, rank=rank, margins=margins,
                                           hot_k=hot_k, cold_n=cold_n, scheme=scheme, scheme_alpha=scheme_alpha,
                                           list_method=list_method, margin=margin, epsilon=epsilon)
                loss = radi_objective(loss, pair, lst, alpha, pair_weight, list_weight)
        return StepResult(loss, len(rows))

    cfg = replace(loop or LoopConfig(lr=5e-3, weight_decay=VIDEOQA_WD), epochs=epochs, progress=progress,
                  desc=f"{method}/{mode}")
    res = train(model, epoch_batches(ds, num_workers), step, cfg, lengths=[ds.num_batches(e) for e in range(epochs)],
                on_epoch=_print_epoch(f"{method}/{mode}") if cfg.progress else None)
    seconds = res["seconds"]
    return {"seconds": seconds, "steps": res["steps"], "seconds_per_step": seconds / max(res["steps"], 1),
            "loss": [r["loss"] for r in res["history"]]}
