"""RADI as the paper means it on the large-vocabulary VideoQA data: the store holds the teacher's full
ranking, cold lists reach past any top-K, the rank / margins switches, one alpha default, and the
`labelstore experiment videoqa` command end to end."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import labelstore
from labelstore.integrity import StoreError
from labelstore.pipeline import builtin_video as bv
from labelstore.pipeline.teach_videoqa import VideoQATeachConfig, teach_videoqa
from labelstore.pipeline.text import AnswerVocab, Tokenizer, read_questions
from labelstore.pipeline.video import FrameSampler, VideoFolder, VideoPolicy
from labelstore.pipeline.videoqa_data import ClipCache, prepare_questions
from labelstore.trainers import experiment_videoqa, tasks, videoqa_cli, videoqa_demo
from labelstore.trainers.losses import mc_pair_uncertainty, radi_pairwise_loss, sinkhorn_margins
from labelstore.trainers.videoqa import RADI_ALPHA, list_positions, rank_loss_radi, train_videoqa_student
from labelstore.trainers.videoqa_models import VideoQAClassifier

torch.set_num_threads(1)
M = 4  # frames per view


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa_large")
    d = bv.make_videoqa_dataset(root / "data", n_train=6, n_test=2, frames=8, size=32, seed=1, vocab="large")
    videos = VideoFolder(d["videos"])
    tok = Tokenizer.build(q.question for q in read_questions(d["questions_train"]))
    vocab = AnswerVocab.build(bv.large_answer_vocabulary())
    torch.manual_seed(0)
    teacher = VideoQAClassifier(len(tok), len(vocab), dim=16, width=8, num_frames=M, frame_size=32, dropout=0.3,
                                question_encoder="mean")
    store = str(root / "full.zarr")
    teach_videoqa(store, videos, d["questions_train"], tok, vocab, teacher, FrameSampler(num_frames=M),
                  VideoQATeachConfig(epochs=2, seed=2, mc_passes=3, batch_size=8, shard_rows=16))  # top_k default: the full ranking
    return {**d, "videos_src": videos, "tok": tok, "vocab": vocab, "teacher": teacher, "store": store}


def test_store_holds_the_full_ranking(large):
    store = labelstore.open(large["store"])
    A, N, E = len(large["vocab"]), store.num_samples, 2
    assert A == 400 and store.top_k == A
    assert store.group["topk_values"].shape == store.group["topk_indices"].shape == (E, N, A)
    assert store.group["mc_values"].shape == (E, N, 3, A) and store.group["topk_indices"].dtype == np.uint16
    qa = prepare_questions(large["videos_src"], large["questions_train"], large["tok"], large["vocab"])
    policy = VideoPolicy.from_json({k: v for k, v in store.attrs["policy"].items() if k != "digest"})
    for e in range(E):
        rows = np.arange(N)
        rec = store.read(e, rows)
        fi = store.read_array("aug/frames/indices", epoch=e)
        x, vi = ClipCache(large["videos_src"]).shared_views(policy, qa.video_rows, fi)
        with torch.no_grad():
            p = large["teacher"].eval()(x, torch.as_tensor(qa.q_ids), torch.as_tensor(qa.q_mask), vi).softmax(1)  # [N, A]
        ids = rec["topk_indices"].astype(np.int64)
        # every answer once per view, in the teacher's order: the stored ranking is the teacher's full ranking
        assert (np.sort(ids, axis=1) == np.arange(A)).all()
        ranked = p.gather(1, torch.as_tensor(ids))  # exact ties in any order: the store ranks with torch.topk
        assert (ranked[:, :-1] >= ranked[:, 1:]).all()
        np.testing.assert_array_equal(rec["topk_values"], p.gather(1, torch.as_tensor(ids)).numpy().astype(np.float16))


def _law(A: int, hot: int, scheme: str, alpha: float) -> np.ndarray:
    k = np.arange(hot + 1, A + 1, dtype=np.float64)
    w = np.exp(-alpha * k) if scheme == "exp" else k ** -alpha
    return w / w.sum()  # P(first cold draw = rank k), k = hot+1..A


@pytest.mark.parametrize("scheme,alpha", [("exp", 0.005), ("zipf", 1.0)])
def test_cold_list_reaches_past_any_top_k(scheme, alpha):
    A, hot, B = 400, 10, 6000
    pos = list_positions(B, A, hot, 1, scheme, None, torch.Generator().manual_seed(5))  # [B, hot + 1]
    assert (pos[:, :hot] == torch.arange(hot)).all()
    cold_rank = pos[:, hot].numpy() + 1  # 1-based rank in the full ranking
    law = _law(A, hot, scheme, alpha)
    want = law[64 - hot:].sum()  # P(rank > 64): beyond the old default top-K = 64
    got = (cold_rank > 64).mean()
    assert abs(got - want) < 4 * np.sqrt(want * (1 - want) / B) and want > 0.2
    assert cold_rank.max() > 300  # the tail of a 400-answer ranking is drawn too
    # the listwise term draws hot_k + cold_n distinct positions, best first
    many = list_positions(50, A, hot, 20, scheme, None, torch.Generator().manual_seed(6))
    assert (many.diff(dim=1) > 0).all() and many.shape == (50, 30)


def _batch(B=6, K=40, T=4, A=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, A, generator=g, requires_grad=True)
    vals, idx = torch.randn(B, A, generator=g).softmax(1).sort(dim=1, descending=True)
    idx = idx[:, :K]
    vals = vals[:, :K]
    mc = (vals[:, None, :] + 0.05 * torch.rand(B, T, K, generator=g)).clamp_min(0)  # [B, T, K]
    return logits, vals, idx, mc


KW = dict(hot_k=6, cold_n=10, scheme="exp", scheme_alpha=None, list_method="listmle", margin=0.1, epsilon=0.01)


def test_rank_and_margins_switches():
    logits, vals, idx, mc = _batch()
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    pair_b, list_b = rank_loss_radi(logits, vals, idx, mc, gen(), rank="both", margins="adaptive", **KW)
    pair_p, list_p = rank_loss_radi(logits, vals, idx, mc, gen(), rank="pairwise", margins="adaptive", **KW)
    pair_l, list_l = rank_loss_radi(logits, vals, idx, mc, gen(), rank="listwise", margins="adaptive", **KW)
    assert list_p.item() == 0 and pair_l.item() == 0  # the term left out is absent
    assert pair_p.item() > 0 and list_l.item() > 0
    assert torch.equal(pair_b, pair_p) and torch.equal(list_b, list_l)  # "both" is the sum of the two
    # pairwise alone: the hinge on the student's probabilities of the hot answers, margins 0.1 * W
    (g,) = torch.autograd.grad(pair_p, logits)
    p = torch.softmax(logits, 1)
    W01 = sinkhorn_margins(mc_pair_uncertainty(mc[:, :, :6]), margin=0.1, epsilon=0.01)
    (g_hot,) = torch.autograd.grad(radi_pairwise_loss(p.gather(1, idx[:, :6]), vals[:, :6], W01), logits)
    torch.testing.assert_close(g, g_hot)
    # fixed margins: the constant margin, whatever the MC passes say (none needed)
    fixed, _ = rank_loss_radi(logits, vals, idx, None, gen(), rank="pairwise", margins="fixed", **KW)
    fixed_other_mc, _ = rank_loss_radi(logits, vals, idx, mc * torch.rand_like(mc), gen(), rank="pairwise",
                                       margins="fixed", **KW)
    assert torch.equal(fixed, fixed_other_mc)
    assert torch.equal(fixed, radi_pairwise_loss(p.gather(1, idx[:, :6]), vals[:, :6], 0.1))
    # adaptive margins follow the MC uncertainty (not constant): they move the loss
    off = ~torch.eye(6, dtype=torch.bool)
    assert W01[:, off].std() > 1e-3 and not torch.equal(fixed, pair_p)
    # shuffled: the same margins per row in another order, drawn apart from the cold list
    pair_s, list_s = rank_loss_radi(logits, vals, idx, mc, gen(), rank="both", margins="shuffled", **KW)
    assert torch.equal(list_s, list_b) and not torch.equal(pair_s, pair_b)


def test_switches_in_the_trainer_and_their_errors(large, tmp_path):
    videos, q = large["videos_src"], large["questions_train"]

    def student():
        torch.manual_seed(3)
        return VideoQAClassifier(len(large["tok"]), 400, dim=8, width=8, num_frames=M, frame_size=32, dropout=0.1,
                                 question_encoder="mean")

    runs = {}
    for rank, margins in (("pairwise", "adaptive"), ("listwise", "adaptive"), ("both", "adaptive"), ("both", "fixed")):
        model = student()
        r = train_videoqa_student(model, large["store"], videos, q, method="radi", rank=rank, margins=margins,
                                  hot_k=5, cold_n=30, epochs=1, batch_size=8, seed=0)
        assert np.isfinite(r["loss"]).all()
        runs[(rank, margins)] = (r["loss"][0], torch.cat([p.detach().flatten() for p in model.parameters()]))
    losses = [loss for loss, _ in runs.values()]
    assert len(set(losses[:3])) == 3  # pairwise, listwise, both: three different objectives
    weights = [w for _, w in runs.values()]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    # fixed and adaptive margins give the same loss on a new student: every hinge is active, and the
    # Sinkhorn margins (symmetric, mean 1 over the pairs) then add exactly the fixed margin's mean
    assert losses[3] == pytest.approx(losses[2], rel=1e-5)
    with pytest.raises(ValueError, match="rank must be one of"):
        train_videoqa_student(student(), large["store"], videos, q, method="radi", rank="pairs", epochs=1)
    # a store cut to the top 64 cannot give cold lists over the full ranking (pairwise still works)
    cut = str(tmp_path / "cut.zarr")
    teach_videoqa(cut, videos, q, large["tok"], large["vocab"], large["teacher"], FrameSampler(num_frames=M),
                  VideoQATeachConfig(epochs=1, seed=2, top_k=64, mc_passes=0, batch_size=8, shard_rows=16))
    with pytest.raises(StoreError, match=r"cut.zarr: listwise RADI .* top 64 of 400 answers.*--top-k 400"):
        train_videoqa_student(student(), cut, videos, q, method="radi", epochs=1)
    with pytest.raises(StoreError, match=r"adaptive margins need MC passes"):
        train_videoqa_student(student(), cut, videos, q, method="radi", rank="pairwise", epochs=1)
    train_videoqa_student(student(), cut, videos, q, method="radi", rank="pairwise", margins="fixed", epochs=1)


def test_one_alpha_default_everywhere():
    defaults = {
        "train_videoqa_student": inspect.signature(train_videoqa_student).parameters["alpha"].default,
        "cli_train_videoqa": inspect.signature(videoqa_cli.cli_train_videoqa).parameters["alpha"].default,
        "demo": videoqa_demo.DEMO["alpha"],
    }
    assert set(defaults.values()) == {RADI_ALPHA}, defaults
    src = inspect.getsource(videoqa_cli.train_command)  # the CLI passes --alpha, or RADI_ALPHA when not given
    assert "RADI_ALPHA if o.alpha is None else o.alpha" in src
    assert "alpha=RADI_ALPHA" in inspect.getsource(experiment_videoqa.make_arms)


def test_registered_and_arms():
    mod = tasks.experiment_module("videoqa")
    assert mod is experiment_videoqa and mod.REFERENCE == "ce" and mod.METRIC == "acc_any"
    assert mod.DEFAULT_ARMS == ["ce", "kd", "radi-pair", "radi-list", "radi-both", "radi-fixed"]
    assert mod.ARMS["radi-fixed"] == {**mod.ARMS["radi-both"], "margins": "fixed"}


TINY = {"n_train": 6, "n_teacher": 8, "n_test": 4, "teacher_dim": 16, "teacher_width": 8, "teacher_epochs": 1, "store_epochs": 1,
        "mc_passes": 2, "student_epochs": 1, "num_frames": 4}


def test_cli_experiment_videoqa_end_to_end(tmp_path):
    """The real command on a tiny recipe: a table with both arms and 2 seeds, the setup's store keeps
    the full ranking, and a rerun loads every run instead of training again."""
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "labelstore", "experiment", "videoqa", "--seeds", "2", "--arms", "ce,radi-both",
           "--out", str(out), "--recipe", json.dumps(TINY)]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith("$ labelstore experiment videoqa --seeds 2 --arms ce,radi-both")
    assert lines[1].startswith("metric: acc_any   seeds: [0, 1]   reference: ce")
    rows = {ln.split()[0]: ln.split() for ln in lines[3:5]}
    assert set(rows) == {"ce", "radi-both"} and rows["ce"][1] == rows["radi-both"][1] == "2"
    assert "(reference)" in lines[3] + lines[4]
    assert lines[5].startswith("teacher (VideoQAClassifier dim 16") and "K = 400 of 400 answers" in lines[5]
    result = json.loads((out / "result.json").read_text())
    assert result["setup"]["top_k"] == 400 and result["setup"]["recipe"]["n_train"] == 6
    assert labelstore.open(result["setup"]["store"]).num_samples == 4 * 6  # the student's videos only
    for arm in ("ce", "radi-both"):
        vals = result["arms"][arm]["values"]
        assert len(vals) == 2 and all(0 <= v <= 1 for v in vals)
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("loaded") == 4 and "running" not in again.stderr
    assert again.stdout.splitlines()[1:] == lines[1:]


def test_unknown_recipe_key_and_arm(tmp_path):
    from labelstore.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown recipe key\(s\) \['epochs'\]"):
        experiment_videoqa.setup(str(tmp_path / "x"), echo=lambda m: None, epochs=1)
    with pytest.raises(ConfigError, match=r"unknown arm\(s\) \['radi'\]"):
        experiment_videoqa.make_arms({"recipe": {}, "store": ""}, ["radi"])


def test_teacher_trained_on_every_acceptable_answer(large):
    """train_videoqa_classifier(all_answers=vocab): the loss is CE against y uniform over the question's
    `answers` (checked with lr = 0 against the formula on the same batches), not CE on `answer`."""
    from labelstore.pipeline.videoqa_data import frame_indices, video_grouped_order
    from labelstore.trainers.videoqa import train_videoqa_classifier

    videos, vocab = large["videos_src"], large["vocab"]
    qa = prepare_questions(videos, large["questions_train"], large["tok"], vocab)
    sampler, policy = FrameSampler(num_frames=M), VideoPolicy(FrameSampler(num_frames=M), (32, 32))
    torch.manual_seed(0)
    model = VideoQAClassifier(len(large["tok"]), 400, dim=8, width=8, num_frames=M, frame_size=32, dropout=0.0,
                              question_encoder="mean")
    r_all = train_videoqa_classifier(model, videos, qa, sampler, epochs=1, batch_size=8, lr=0.0, seed=4,
                                     all_answers=vocab)
    r_one = train_videoqa_classifier(model, videos, qa, sampler, epochs=1, batch_size=8, lr=0.0, seed=4)
    order, idx = video_grouped_order(qa.video_rows, 4, 0), frame_indices(sampler, 4, 0, videos, qa.video_rows)
    cache, tot, sets = ClipCache(videos), 0.0, qa.answer_sets(vocab)
    model.train()
    with torch.no_grad():
        for b0 in range(0, len(qa), 8):
            rows = order[b0:b0 + 8]
            x, vi = cache.shared_views(policy, qa.video_rows[rows], idx[rows])
            logp = model(x, torch.as_tensor(qa.q_ids[rows]), torch.as_tensor(qa.q_mask[rows]), vi).log_softmax(1)
            tot += sum(-logp[j, sorted(sets[i])].mean().item() for j, i in enumerate(rows))
    assert r_all["loss"][0] == pytest.approx(tot / len(qa), rel=1e-4)
    assert any(len(s) > 1 for s in sets) and r_all["loss"][0] != pytest.approx(r_one["loss"][0], rel=1e-4)
