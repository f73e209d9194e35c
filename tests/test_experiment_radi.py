"""`labelstore experiment radi`: the RADI testbed's data (several correct answers, 90 answers), its
frozen features, its store (written by the real teacher stage, read by the students) and the command
end to end on a tiny recipe."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import labelstore
from labelstore.trainers import experiment_radi as X
from labelstore.trainers import radi_folds as RF
from labelstore.trainers import tasks

torch.set_num_threads(1)

TINY = {"n_train": 12, "n_test": 4, "num_frames": 4, "teacher_hidden": 16, "teacher_epochs": 2, "teacher_views": 1,
        "store_epochs": 1, "mc_passes": 3, "student_hidden": 8, "student_epochs": 1, "cold_n": 5}


def test_registered_and_arms():
    assert tasks.experiment_module("radi") is X and "radi" in tasks.experiment_names()
    assert X.REFERENCE == "ce" and X.METRIC == "acc_any"
    assert X.ARMS["pair-shuffled"] == {**X.ARMS["pair-adaptive"], "margins": "shuffled"}
    assert X.ARMS["both-a0.1"] == {**X.ARMS["both"], "alpha": 0.1}


def test_vocabulary_and_derived_questions(tmp_path):
    from labelstore.pipeline.builtin_video import make_videoqa_dataset

    vocab = X.testbed_vocabulary()
    assert len(vocab) == len(set(vocab)) == 90
    d = make_videoqa_dataset(tmp_path / "d", n_train=12, n_test=2, frames=8, size=32, seed=0, vocab="large")
    counts = X.derive_questions(d["questions_train"], tmp_path / "q.jsonl")
    qs = [json.loads(line) for line in open(tmp_path / "q.jsonl")]
    assert qs and {q["type"] for q in qs} <= set(X.KEEP) and sum(counts.values()) == len(qs)
    for q in qs:
        assert q["answer"] in q["answers"] and set(q["answers"]) <= set(vocab)
    assert any(len(q["answers"]) > 1 for q in qs)  # real multi-answer questions
    assert X._drop_size("big red circle moving left") == "red circle moving left"


def test_clip_features_find_the_blob():
    """A red square on a dark background: the red channel's area, centroid and fill are the square's."""
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    img = np.full((32, 32, 3), 40, np.float32)
    img[4:12, 20:28] = (225, 35, 35)  # 8x8 square, rows 4..11, columns 20..27
    x = (torch.as_tensor(img).permute(2, 0, 1) / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    f = X.clip_features(x[None, None], mean, std).view(5, X.N_CLIP_FEATURES)  # [C, 7], red first
    area, cu, cv, var_u, var_v, skew, fill = f[0].tolist()
    assert area == pytest.approx(64 / 1024 * 10)
    assert cu == pytest.approx(24 / 32 - 0.5) and cv == pytest.approx(8 / 32 - 0.5)
    assert var_u == pytest.approx(10 * (64 - 1) / 12 / 32**2, rel=1e-4)  # discrete uniform over 8 columns
    assert fill == pytest.approx(1.0) and abs(skew) < 1e-4
    assert (f[1:] == 0).all()  # no other colour present


def test_slot_features_see_the_motion_and_slotqa_shares_its_head():
    """A red square moving right by 2 px a frame over 4 frames, absent in the last: the red slot's presence
    is 3/4, its centroid's slope over t in [-1, 1] is +(2/32) / (2/3) per unit t along u and 0 along v, its
    grid mass moves right; the other slots are 0. SlotQA scores colour c's answers from c's slot alone."""
    from labelstore.pipeline.text import AnswerVocab

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    img = np.full((4, 32, 32, 3), 40, np.float32)
    for t in range(3):
        img[t, 4:12, 2 + 2 * t:10 + 2 * t] = (225, 35, 35)
    m_, s_ = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    x = (torch.as_tensor(img).permute(0, 3, 1, 2) / 255 - m_) / s_  # [4, 3, 32, 32]
    s = X.slot_features(x[None], mean, std)[0]  # [C, 4 * 23 + 6], red first
    assert s.shape == (5, 4 * X.N_SLOT_FRAME + X.N_SLOT_CLIP) and (s[1:] == 0).all()
    pres, slope_u, slope_v = s[0, -6:-3].tolist()
    assert pres == pytest.approx(0.75) and slope_u == pytest.approx((2 / 32) / (2 / 3), rel=1e-4)
    assert slope_v == pytest.approx(0.0, abs=1e-6)
    vocab = AnswerVocab.build(X.testbed_vocabulary())
    slots = X.answer_slots(vocab)
    assert sorted(i for row in slots for i in row) == list(range(90))
    torch.manual_seed(0)
    t = X.SlotQA(6, 90, num_frames=4, mean=mean, std=std, hidden=8, dropout=0.0, slots=slots).eval()
    f = t.features(x[None], torch.tensor([[1, 2]]), torch.tensor([[True, True]]))  # [1, C * Fs + 6]
    g = f.clone()
    g[0, t.slot_dim:5 * t.slot_dim] = 1.0  # change every slot but red's
    red = slots[0]
    with torch.no_grad():
        assert torch.equal(t.head(f)[0, red], t.head(g)[0, red]) and not torch.equal(t.head(f), t.head(g))


def test_clip_folds_split_by_clip():
    rows = np.repeat(np.arange(10), [1, 2, 3, 1, 2, 3, 1, 2, 3, 1])  # 10 clips, 1-3 questions each
    fold = RF.clip_folds(rows, 4, 0)
    assert fold.shape == rows.shape and set(fold.tolist()) == {0, 1, 2, 3}
    per_clip = {v: set(fold[rows == v].tolist()) for v in range(10)}
    assert all(len(f) == 1 for f in per_clip.values())  # every question of a clip in its clip's fold
    assert sorted(np.bincount([f.pop() for f in per_clip.values()]).tolist()) == [2, 2, 3, 3]
    assert (RF.clip_folds(rows, 4, 0) == fold).all() and not (RF.clip_folds(rows, 4, 1) == fold).all()


def test_fold_of_a_view():
    """A view's fold is that of its frames in the table; a frame outside it (a blank one, shared by clips)
    is skipped; a view with no frame in the table, or with frames of two folds, is a DataError."""
    from labelstore.errors import DataError

    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    g = torch.Generator().manual_seed(0)
    a, b = ((torch.randint(0, 256, (3, 8, 8), generator=g).float() / 255 - 0.5) / 0.25 for _ in range(2))
    blank = torch.full((3, 8, 8), (40 / 255 - 0.5) / 0.25)
    w = torch.randint(0, 2**31, (3 * 8 * 8,), generator=g)
    keys = RF.frame_keys(torch.stack([a, b]), mean, std, w)
    assert keys[0] != keys[1] and (RF.frame_keys(torch.stack([a, b]) + 1e-4, mean, std, w) == keys).all()
    t = X.FeatureQA(4, 3, num_frames=2, mean=mean, std=std, hidden=4, dropout=0.3)
    ft = RF.FoldTeachers([t, t], keys, torch.tensor([1, 0]), w)
    assert ft.fold_of(torch.stack([torch.stack([blank, a]), torch.stack([b, b])])).tolist() == [1, 0]
    for view in (torch.stack([blank, blank]), torch.stack([a, b])):
        with pytest.raises(DataError, match="no training clip"):
            ft.fold_of(view[None])


def test_one_fold_is_an_error(tmp_path):
    from labelstore.errors import ConfigError

    with pytest.raises(ConfigError, match="teacher_folds must be >= 2"):
        X.setup(str(tmp_path / "exp"), teacher_folds=1)
    assert not (tmp_path / "exp").exists()  # checked before anything is made


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """The real command on a tiny recipe (2 seeds, 4 arms)."""
    out = tmp_path_factory.mktemp("radi") / "exp"
    cmd = [sys.executable, "-m", "labelstore", "experiment", "radi", "--seeds", "2",
           "--arms", "ce,kd,pair-shuffled,both-a0.1", "--out", str(out), "--recipe", json.dumps(TINY)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return {"out": out, "stdout": run.stdout, "meta": json.loads((out / "setup.json").read_text())}


def test_cli_experiment_radi_end_to_end(cli_run):
    """The table, the teacher line and the gate line; the store the students read is the teacher stage's
    (full ranking, MC passes)."""
    out = cli_run["out"]
    lines = cli_run["stdout"].splitlines()
    assert lines[0].startswith("$ labelstore experiment radi --seeds 2")
    rows = {ln.split()[0]: ln.split() for ln in lines[3:7]}
    assert set(rows) == {"ce", "kd", "pair-shuffled", "both-a0.1"} and all(r[1] == "2" for r in rows.values())
    assert lines[7].startswith("teacher: 4 fold teachers (SlotQA hidden 16") and "store K = 90, T = 3" in lines[7]
    assert lines[8].startswith("gate: kd - ce = ") and ("PASSED" in lines[8] or "FAILED" in lines[8])
    result = json.loads((out / "result.json").read_text())
    store = labelstore.open(result["setup"]["store"])
    assert store.task == "videoqa" and store.top_k == store.num_classes == 90 and store.mc_passes == 3
    assert store.num_samples == result["setup"]["n_train_questions"]


def test_gate_line_is_kd_against_ce_whatever_the_reference(cli_run):
    """`--reference kd` from the same saved runs prints the same gate line (KD - CE, paired by seed)."""
    out = cli_run["out"]
    cmd = [sys.executable, "-m", "labelstore", "experiment", "radi", "--seeds", "2",
           "--arms", "ce,kd,pair-shuffled,both-a0.1", "--out", str(out), "--recipe", json.dumps(TINY), "--reference", "kd", "--quiet"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    gate = [ln for ln in cli_run["stdout"].splitlines() if ln.startswith("gate: ")]
    again = [ln for ln in run.stdout.splitlines() if ln.startswith("gate: ")]
    assert "reference: kd" in run.stdout and len(gate) == 1 and again == gate and gate[0].startswith("gate: kd - ce = ")


def _training_set(meta):
    from labelstore.pipeline.text import AnswerVocab, Tokenizer
    from labelstore.pipeline.video import VideoFolder, VideoPolicy
    from labelstore.pipeline.videoqa_data import ClipCache, prepare_questions

    store = labelstore.open(meta["store"])
    a = store.attrs
    videos = VideoFolder(meta["videos"])
    tok, vocab = Tokenizer.from_json(a["tokenizer"]), AnswerVocab.from_json(a["vocab"])
    policy = VideoPolicy.from_json({k: v for k, v in a["policy"].items() if k != "digest"})
    qa = prepare_questions(videos, meta["questions_train"], tok, vocab)
    return store, videos, ClipCache(videos), policy, qa, tok, vocab


def test_store_labels_are_out_of_fold(cli_run):
    """Every training question's stored distribution is the output of its fold's teacher on the stored view,
    and differs from every other teacher's; teacher k is the one trained on the questions of the clips
    outside fold k only; the store's weights hash covers the K teachers and the fold table."""
    from labelstore.errors import DataError
    from labelstore.pipeline.teacher import weights_hash
    from labelstore.pipeline.video import FrameSampler
    from labelstore.pipeline.videoqa_data import frame_indices, prepare_questions

    meta = cli_run["meta"]
    teacher = X.load_teacher(meta)
    store, videos, cache, policy, qa, tok, vocab = _training_set(meta)
    fold = np.asarray(meta["question_fold"])
    K = X.RECIPE["teacher_folds"]
    assert len(teacher.teachers) == K == 4 and set(fold.tolist()) == set(range(K))
    assert store.attrs["teacher"]["name"] == "FoldTeachers"
    assert store.attrs["teacher"]["weights_sha256"] == weights_hash(teacher)
    assert {k.split(".")[1] for k in teacher.state_dict() if k.startswith("teachers.")} == {"0", "1", "2", "3"}
    for v in np.unique(qa.video_rows):  # folds by clip
        assert len(set(fold[qa.video_rows == v].tolist())) == 1
    q, m = torch.as_tensor(qa.q_ids), torch.as_tensor(qa.q_mask)
    own = torch.nn.functional.one_hot(torch.as_tensor(fold), K).bool()  # [N, K]
    for e in range(store.epochs):
        rec = store.read(e)
        x, vi = cache.shared_views(policy, qa.video_rows, store.read_array("aug/frames/indices", epoch=e))
        with torch.no_grad():
            assert (teacher.fold_of(x)[vi] == torch.as_tensor(fold)).all()
            f = teacher.teachers[0].features(x, q, m, vi)
            p = torch.stack([t.head(f).softmax(1) for t in teacher.teachers], 1)  # [N, K, A]
        stored = torch.zeros(len(qa), len(vocab)).scatter_(1, torch.as_tensor(rec["topk_indices"].astype(np.int64)),
                                                         torch.as_tensor(rec["topk_values"].astype(np.float32)))
        gap = (p - stored[:, None]).abs().amax(2)  # [N, K]
        assert (gap[own] < 1e-3).all()  # the fold's teacher (float16 rounding)
        assert (gap[~own] > 1e-3).all()  # not any other
    # teacher k = a teacher trained on the questions outside fold k (same features, seeds and loop as setup)
    r = meta["recipe"]
    sampler = FrameSampler(num_frames=r["num_frames"])
    feats = torch.stack([X.view_features(teacher.teachers[0], cache, policy, qa,
                                         frame_indices(sampler, 1, e, videos, qa.video_rows))
                         for e in range(r["teacher_views"])])
    kwargs = X.teacher_kwargs(r, tok, vocab, policy)
    for k in range(K):
        again = X.train_teacher(kwargs, feats, torch.as_tensor(qa.gt), np.flatnonzero(fold != k), r, k)
        for (name, w), w_k in zip(again.state_dict().items(), teacher.teachers[k].state_dict().values()):
            assert torch.allclose(w, w_k, atol=1e-5), (k, name)
    # a view of no training clip (a test clip) has no fold: a DataError, not a guess
    test_qa = prepare_questions(videos, meta["questions_test"], tok, vocab)
    x, _ = cache.shared_views(policy, test_qa.video_rows[:1], frame_indices(sampler, 0, 0, videos, test_qa.video_rows[:1]))
    with pytest.raises(DataError, match="no training clip"):
        teacher.fold_of(x)
