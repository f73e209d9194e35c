"""VideoQA teacher stage (answer rankings + MC dropout), RADI students, inspect statistics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import labelstore
from labelstore.integrity import StoreError
from labelstore.trainers.tasks import inspect_store
from labelstore.pipeline import builtin_video as bv
from labelstore.pipeline.teach_videoqa import VideoQATeachConfig, mc_seed, teach_videoqa, teacher_targets
from labelstore.pipeline.videoqa_data import ClipCache, frame_indices, prepare_questions
from labelstore.pipeline.text import AnswerVocab, QuestionsError, Tokenizer, read_questions
from labelstore.pipeline.video import FrameSampler, VideoFolder, VideoPolicy
from labelstore.trainers.videoqa import evaluate_videoqa, train_videoqa_student
from labelstore.trainers.videoqa_models import VideoQAClassifier

torch.set_num_threads(1)

M = 4  # frames per view
SEED = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa")
    d = bv.make_videoqa_dataset(root, n_train=10, n_test=2, frames=8, size=32, seed=0)
    videos = VideoFolder(d["videos"])
    qs = read_questions(d["questions_train"])
    tok = Tokenizer.build(q.question for q in qs)
    vocab = AnswerVocab.build(a for q in qs for a in q.answers)
    return {**d, "videos_src": videos, "qs": qs, "tok": tok, "vocab": vocab, "root": root}


def tiny(data, dropout: float = 0.3, seed: int = 0) -> VideoQAClassifier:
    torch.manual_seed(seed)
    return VideoQAClassifier(len(data["tok"]), len(data["vocab"]), dim=16, width=8, num_frames=M, frame_size=32,
                             dropout=dropout, question_encoder="mean")


def teach(data, out, teacher, **kw):
    """teach_videoqa with this file's settings; kw: VideoQATeachConfig fields, teach_videoqa keywords, questions."""
    args = dict(epochs=2, seed=SEED, top_k=64, mc_passes=4, batch_size=8, shard_rows=16, overwrite=True)
    args.update(kw)
    questions = args.pop("questions", data["questions_train"])
    run = {k: args.pop(k) for k in ("overwrite", "resume", "max_units", "head_only") if k in args}
    return teach_videoqa(str(out), data["videos_src"], questions, data["tok"], data["vocab"], teacher,
                         FrameSampler(num_frames=M), VideoQATeachConfig(**args), **run)


def test_store_schema_and_reproducible_block(data, tmp_path):
    teacher = tiny(data)
    st = teach(data, tmp_path / "s.zarr", teacher)
    assert st["complete"] and st["top_k"] == len(data["vocab"])  # K clamped to the vocabulary
    store = labelstore.open(str(tmp_path / "s.zarr"))
    N, K, E = len(data["qs"]), len(data["vocab"]), 2
    assert store.task == "videoqa" and store.num_classes == K and store.mc_passes == 4
    assert store.group["mc_values"].shape == (E, N, 4, K)
    assert store.group["aug/frames/indices"].shape == (E, N, M) and store.group["aug/frames/indices"].dtype == np.int16
    assert store.group["topk_indices"].dtype == np.uint8
    qa = prepare_questions(data["videos_src"], data["questions_train"], data["tok"], data["vocab"])
    assert (store.read_array("question_video") == qa.video_rows).all()
    # frames are keyed by video row: every question of a video sees the same frames in an epoch
    fi = store.read_array("aug/frames/indices", epoch=1)
    np.testing.assert_array_equal(fi, frame_indices(FrameSampler(num_frames=M), SEED, 1, data["videos_src"], qa.video_rows))
    for v in np.unique(qa.video_rows):
        assert (fi[qa.video_rows == v] == fi[qa.video_rows == v][0]).all()
    # recompute a stored batch (epoch 1, rows 16..23: first batch of unit 1) on the replayed inputs
    rows = np.arange(16, 24)
    x, vi = ClipCache(data["videos_src"]).shared_views(VideoPolicy(FrameSampler(num_frames=M), (32, 32)),
                                                        qa.video_rows[rows], fi[rows])
    out = teacher_targets(teacher, x, torch.as_tensor(qa.q_ids[rows]), torch.as_tensor(qa.q_mask[rows]),
                          torch.as_tensor(qa.gt[rows]), K, 4, mc_seed(SEED, 1, 16), video_index=vi)
    rec = store.read(1, rows)
    np.testing.assert_array_equal(rec["topk_indices"], out["topk_indices"].numpy())
    np.testing.assert_array_equal(rec["topk_values"], out["topk_values"].numpy().astype(np.float16))
    np.testing.assert_array_equal(rec["mc_values"], out["mc_values"].numpy().astype(np.float16))
    np.testing.assert_array_equal(rec["gt_prob"], out["gt_prob"].numpy().astype(np.float16))
    stats = inspect_store(store)[0]["per_epoch"]
    assert set(stats) == {"top1_agreement", "topk_mass", "gt_prob", "mc_spread"}
    assert stats["mc_spread"][0] > 0 and abs(stats["topk_mass"][0] - 1) < 1e-2


def test_mc_spread_zero_without_dropout(data, tmp_path):
    teach(data, tmp_path / "p0.zarr", tiny(data, dropout=0.0))
    store = labelstore.open(str(tmp_path / "p0.zarr"))
    mc, top = store.read_array("mc_values", epoch=0), store.read_array("topk_values", epoch=0)
    np.testing.assert_array_equal(mc, np.broadcast_to(top[:, None], mc.shape))
    assert inspect_store(store)[0]["per_epoch"]["mc_spread"] == [0.0, 0.0]


def test_resume_equals_uninterrupted(data, tmp_path):
    teacher = tiny(data)
    teach(data, tmp_path / "full.zarr", teacher)
    st = teach(data, tmp_path / "part.zarr", teacher, max_units=1)
    assert not st["complete"]
    with pytest.raises(StoreError, match="has not finished"):
        labelstore.open(str(tmp_path / "part.zarr"))
    st = teach(data, tmp_path / "part.zarr", teacher, overwrite=False, resume=True)
    assert st["complete"] and st["units"] == 2
    a, b = labelstore.open(str(tmp_path / "full.zarr")), labelstore.open(str(tmp_path / "part.zarr"))
    for name in a.arrays:
        np.testing.assert_array_equal(a.group[name][:], b.group[name][:], err_msg=name)


def test_missing_video_names_the_question(data, tmp_path):
    qs = list(data["qs"])
    qs[5] = dataclasses.replace(qs[5], video_id="train_99999", line=6)
    with pytest.raises(QuestionsError, match="train_99999") as e:
        teach(data, tmp_path / "m.zarr", tiny(data), questions=qs)
    assert "line 6" in str(e.value)


def test_answer_outside_vocabulary(data, tmp_path):
    qs = list(data["qs"])
    qs[2] = dataclasses.replace(qs[2], answer="purple", answers=["purple"], line=3)
    with pytest.raises(QuestionsError, match="purple"):
        teach(data, tmp_path / "v.zarr", tiny(data), questions=qs)
    teach(data, tmp_path / "v.zarr", tiny(data), questions=qs, strict_answers=False)
    store = labelstore.open(str(tmp_path / "v.zarr"))
    assert store.read_array("gt")[2] == -1 and np.isnan(store.read_array("gt_prob", epoch=0)[2])


def test_students_and_small_k_error(data, tmp_path):
    teacher = tiny(data)
    teach(data, tmp_path / "k.zarr", teacher, top_k=8)
    videos, q = data["videos_src"], data["questions_train"]
    A = len(data["vocab"])
    with pytest.raises(StoreError, match=rf"k.zarr: listwise RADI .*full ranking.*top 8 of {A} answers"):
        train_videoqa_student(tiny(data, seed=1), str(tmp_path / "k.zarr"), videos, q, method="radi", hot_k=5,
                              cold_n=4, epochs=1)
    with pytest.raises(StoreError, match=r"top_k = 8.*hot_k = 9"):  # pairwise alone needs only the hot list
        train_videoqa_student(tiny(data, seed=1), str(tmp_path / "k.zarr"), videos, q, method="radi", rank="pairwise",
                              hot_k=9, epochs=1)
    path = str(tmp_path / "full.zarr")
    teach(data, path, teacher)  # top_k = 64 > A: the full ranking
    cache = ClipCache(videos)
    results = {}
    for method, mode in (("ce", "cache"), ("kd", "cache"), ("radi", "cache"), ("radi", "online")):
        student = tiny(data, seed=1)
        r = train_videoqa_student(student, path, videos, q, method=method, mode=mode, hot_k=4, cold_n=4, epochs=3,
                                  batch_size=16, teacher=teacher, cache=cache, alpha=0.1)
        assert np.isfinite(r["loss"]).all() and r["steps"] == 3 * 3
        results[(method, mode)] = [p.detach().clone() for p in student.parameters()]
    # the same inputs and cold lists: store and online RADI students end up close (not bitwise: MC masks differ)
    diff = max((a - b).abs().max().item() for a, b in zip(results[("radi", "cache")], results[("radi", "online")]))
    ref = max((a - b).abs().max().item() for a, b in zip(results[("radi", "cache")], results[("ce", "cache")]))
    assert diff < ref
    acc = evaluate_videoqa(student, videos, data["questions_test"], data["vocab"], tokenizer=data["tok"], num_frames=M)
    assert set(acc) >= {"acc_annotated", "acc_any"} and 0 <= acc["acc_annotated"] <= acc["acc_any"] <= 1


def test_student_decodes_in_workers_and_checks_its_data(data, tmp_path):
    """The student's clips are decoded and rendered by DataLoader workers (QAReplay): 0 and 2
    workers train the same weights, bit for bit, over epochs that wrap around the store's; the
    store's dataset digest (replay.check_data) refuses other questions."""
    from labelstore.integrity import StoreMismatch

    teacher = tiny(data)
    path = str(tmp_path / "w.zarr")
    teach(data, path, teacher)
    videos, q = data["videos_src"], data["questions_train"]
    weights, losses = {}, {}
    for workers in (0, 2):
        student = tiny(data, seed=1)
        r = train_videoqa_student(student, path, videos, q, method="radi", hot_k=4, cold_n=4, epochs=3, batch_size=16,
                                  num_workers=workers)
        weights[workers] = torch.cat([p.detach().flatten() for p in student.parameters()])
        losses[workers] = r["loss"]
    assert losses[0] == losses[2] and torch.equal(weights[0], weights[2])
    with pytest.raises(StoreMismatch, match=r"w.zarr: built from another dataset"):
        train_videoqa_student(tiny(data), path, videos, data["questions_test"], method="ce", epochs=1)
