"""RADI's adaptive margins on a real store: a small built-in VideoQA store taught by a trained teacher
(the real teacher stage), read back, and the trainer's pairwise term run on it.

The margins are M = m * W, W = K (K - 1) * Sinkhorn(exp(-U / epsilon)), U the std over the MC passes of
the teacher's probability gaps. With U and epsilon on the same scale (RADI_EPSILON = 0.01 against U
in probability units) the margins must spread over the store's questions; with epsilon = 1 they are
the constant m (the old default)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import labelstore
from labelstore.pipeline.video import FrameSampler
from labelstore.pipeline.videoqa_data import prepare_questions
from labelstore.trainers.losses import mc_pair_uncertainty, radi_pairwise_loss, shuffle_within_rows, sinkhorn_margins
from labelstore.trainers.videoqa import (RADI_EPSILON, RADI_MARGIN, SINKHORN_ITERS, SINKHORN_TOL, rank_loss_radi,
                                         train_videoqa_classifier, train_videoqa_student)
from test_videoqa import M, data, teach, tiny  # noqa: F401  (data is the module fixture)

HOT = 10


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):  # noqa: F811
    """A teacher trained with CE on the annotated answers, and the store it teaches (full ranking, 8 MC passes)."""
    teacher = tiny(data, dropout=0.3, seed=1)
    qa = prepare_questions(data["videos_src"], data["questions_train"], data["tok"], data["vocab"])
    train_videoqa_classifier(teacher, data["videos_src"], qa, FrameSampler(num_frames=M), epochs=25, batch_size=16,
                             seed=0, frame_size=(32, 32))
    out = tmp_path_factory.mktemp("radi") / "t.zarr"
    teach(data, out, teacher, top_k=None, mc_passes=8, epochs=2)
    return {"teacher": teacher, "store": str(out)}


def _store_margins(store, epsilon: float) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Off-diagonal margins of every view of the store (hot list = top HOT), with the views' records."""
    ms, recs = [], []
    for e in range(store.epochs):
        rec = store.read(e)
        mc = torch.as_tensor(rec["mc_values"][:, :, :HOT].astype(np.float32))  # [N, T, HOT]
        U = mc_pair_uncertainty(mc)  # [N, HOT, HOT]
        W = sinkhorn_margins(U, margin=RADI_MARGIN, epsilon=epsilon, iters=SINKHORN_ITERS, tol=SINKHORN_TOL)
        ms.append(W)
        recs.append(rec)
    Ms = torch.cat(ms)
    off = ~torch.eye(HOT, dtype=torch.bool)
    return Ms[:, off].numpy(), Ms, recs


def test_margins_spread_over_the_store(trained):
    store = labelstore.open(trained["store"])
    assert store.mc_passes == 8 and store.top_k == store.num_classes >= HOT
    m, _, _ = _store_margins(store, RADI_EPSILON)
    p5, p50, p95 = np.percentile(m, [5, 50, 95])
    assert p95 / p5 >= 2.0, (p5, p50, p95)
    assert abs(m.mean() - RADI_MARGIN) < 1e-6  # W averages 1 over the pairs: the margins' mean is m
    # the old epsilon = 1 against U in probability units: every margin is m within a few per cent
    m_old, _, _ = _store_margins(store, 1.0)
    assert np.percentile(m_old, 95) / np.percentile(m_old, 5) < 1.1


def test_shuffled_margins_change_the_loss(trained, data):  # noqa: F811
    """Shuffling W within rows (same margins per answer, not tied to their pairs) changes the pairwise
    loss of a student equal to the teacher, and the training run of a new student."""
    store = labelstore.open(trained["store"])
    _, Ms, recs = _store_margins(store, RADI_EPSILON)
    rec = recs[0]
    vals = torch.as_tensor(rec["topk_values"].astype(np.float32))  # [N, A] teacher probabilities, ranked
    idx = torch.as_tensor(rec["topk_indices"].astype(np.int64))
    mc = torch.as_tensor(rec["mc_values"].astype(np.float32))
    logits = torch.zeros(vals.shape).scatter_(1, idx, vals.clamp_min(1e-6).log())  # a student equal to the teacher
    kw = dict(rank="pairwise", hot_k=HOT, cold_n=0, scheme="exp", scheme_alpha=None, list_method="listmle",
              margin=RADI_MARGIN, epsilon=RADI_EPSILON)
    losses = {mg: rank_loss_radi(logits, vals, idx, mc, torch.Generator().manual_seed(0), margins=mg, **kw)[0].item()
              for mg in ("adaptive", "shuffled", "fixed")}
    assert len(set(losses.values())) == 3, losses
    # the trainer's value is the hinge of the formula on probabilities with the store's margins
    p_hot = torch.softmax(logits, 1).gather(1, idx[:, :HOT])
    want = radi_pairwise_loss(p_hot, vals[:, :HOT], Ms[: len(vals)].float()).item()
    assert losses["adaptive"] == pytest.approx(want, rel=1e-5)
    sh = shuffle_within_rows(Ms[: len(vals)], torch.Generator().manual_seed(3)).float()
    assert radi_pairwise_loss(p_hot, vals[:, :HOT], sh).item() != pytest.approx(want, rel=1e-3)
    # one epoch of a new student through the real trainer: adaptive and shuffled train differently
    runs = {}
    for mg in ("adaptive", "shuffled"):
        student = tiny(data, dropout=0.1, seed=4)
        r = train_videoqa_student(student, store, data["videos_src"], data["questions_train"], method="radi",
                                  rank="pairwise", margins=mg, hot_k=HOT, epochs=1, batch_size=8, seed=0)
        runs[mg] = (r["loss"][0], torch.cat([q.detach().flatten() for q in student.parameters()]))
    assert runs["adaptive"][0] != runs["shuffled"][0]
    assert not torch.equal(runs["adaptive"][1], runs["shuffled"][1])
