"""VideoQA CLI entry points (labelstore.trainers.videoqa_cli.cli_teach_videoqa / cli_train_videoqa) and the shared MC passes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import labelstore
from labelstore.integrity import StoreError
from labelstore.pipeline import builtin_video as bv
from labelstore.pipeline.teach_videoqa import mc_forward_qa, mc_seed, teacher_targets
from labelstore.pipeline.videoqa_data import ClipCache, prepare_questions
from labelstore.pipeline.teacher import weights_hash
from labelstore.pipeline.text import AnswerVocab, Tokenizer, read_questions
from labelstore.pipeline.video import FrameSampler, VideoFolder, VideoPolicy
from labelstore.trainers.spec import load_model, save_checkpoint
from labelstore.trainers.videoqa_cli import cli_teach_videoqa, cli_train_videoqa
from labelstore.trainers.videoqa_models import VideoQAClassifier

torch.set_num_threads(1)

M, SIZE = 8, 32
SPEC = "labelstore.trainers.videoqa_models:VideoQAClassifier"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa_cli")
    d = bv.make_videoqa_dataset(root / "data", n_train=16, n_test=4, frames=8, size=SIZE, seed=0)
    qs = read_questions(d["questions_train"])
    tok = Tokenizer.build(q.question for q in qs)
    vocab = AnswerVocab.build(a for q in qs for a in (q.answers or [q.answer]))
    kwargs = dict(num_tokens=len(tok), num_answers=len(vocab), dim=16, width=8, num_frames=M, frame_size=SIZE,
                  dropout=0.3, question_encoder="mean")
    torch.manual_seed(0)
    teacher = VideoQAClassifier(**kwargs)
    ckpt = root / "teacher.pt"
    save_checkpoint(ckpt, teacher, SPEC, kwargs,
                    extra={"tokenizer": tok.to_json(), "vocab": vocab.to_json(), "num_frames": M, "frame_size": SIZE})
    store = root / "store.zarr"
    st = cli_teach_videoqa(store, d["videos"], d["questions_train"], str(ckpt), epochs=2, num_frames=M, frame_size=SIZE,
                           top_k=64, mc_passes=4, batch_size=32, seed=1, progress=False)
    return {**d, "root": root, "tok": tok, "vocab": vocab, "teacher": teacher, "ckpt": str(ckpt), "store": str(store),
            "teach": st, "qs": qs}


def test_teach_writes_a_readable_store(env):
    st = env["teach"]
    assert st["complete"] and st["vocab_source"] == "checkpoint"
    store = labelstore.open(env["store"])
    K = len(env["vocab"])
    assert store.task == "videoqa" and store.num_samples == len(env["qs"]) == st["num_questions"]
    assert (store.epochs, store.top_k, store.mc_passes, store.num_classes) == (2, min(64, K), 4, K)
    a = store.attrs
    assert AnswerVocab.from_json(a["vocab"]).to_json() == env["vocab"].to_json()
    assert a["teacher"]["spec"] == env["ckpt"] and a["teacher"]["weights_sha256"] == weights_hash(env["teacher"])
    assert store.read(1, np.arange(4))["mc_values"].shape == (4, 4, min(64, K))
    with pytest.raises(StoreError, match="exists"):
        cli_teach_videoqa(env["store"], env["videos"], env["questions_train"], env["ckpt"], epochs=2, progress=False)


def test_teach_from_callable_builds_vocab(env, tmp_path):
    st = cli_teach_videoqa(tmp_path / "c.zarr", env["videos"], env["questions_train"],
                           "labelstore.trainers.videoqa_models:videoqa_teacher", epochs=1, mc_passes=2, batch_size=64, progress=False)
    assert st["complete"] and st["vocab_source"] == str(env["questions_train"])
    assert labelstore.open(str(tmp_path / "c.zarr")).num_classes == len(env["vocab"])


@pytest.mark.parametrize("method,mode", [("ce", "cache"), ("kd", "cache"), ("radi", "cache"), ("radi", "online")])
def test_train_each_method_writes_metrics(env, tmp_path, method, mode):
    out = tmp_path / "run"
    cli_train_videoqa(env["store"], env["videos"], env["questions_train"], method=method, mode=mode,
                          online_teacher=env["ckpt"] if mode == "online" else None, eval_questions=env["questions_test"],
                          epochs=1, batch_size=32, hot_k=4, cold_n=4, out=out, progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["method"] == method and saved["mode"] == mode and np.isfinite(saved["loss"]).all()
    assert 0 <= saved["acc_annotated"] <= saved["acc_any"] <= 1 and saved["n_eval"] > 0
    student = load_model(str(out / "student.pt"))
    assert weights_hash(student) == saved["student"]["weights_sha256"]
    if mode == "online":
        assert saved["online_teacher"]["matches_store"]


def test_hot_plus_cold_larger_than_vocabulary(env):
    A = labelstore.open(env["store"]).num_classes
    with pytest.raises(ValueError, match=rf"hot_k \+ cold_n = {A} \+ 1 exceeds the {A} answers"):
        cli_train_videoqa(env["store"], env["videos"], env["questions_train"], method="radi", hot_k=A, cold_n=1,
                          epochs=1, progress=False)


@pytest.mark.parametrize("spec", ["no_such_module_xyz:build", "missing_teacher.pt", "resnet-m",
                                  "labelstore.trainers.videoqa_models:nope"])
def test_bad_teacher_spec_is_named(env, tmp_path, spec):
    with pytest.raises(ValueError, match=spec.replace(".", r"\.")):
        cli_teach_videoqa(tmp_path / "x.zarr", env["videos"], env["questions_train"], spec, epochs=1, progress=False)
    with pytest.raises(ValueError, match=spec.replace(".", r"\.")):
        cli_train_videoqa(env["store"], env["videos"], env["questions_train"], method="radi", mode="online",
                          online_teacher=spec, hot_k=4, cold_n=4, epochs=1, progress=False)
    assert not (tmp_path / "x.zarr").exists()


def test_teach_frames_mismatch_with_checkpoint(env, tmp_path):
    with pytest.raises(ValueError, match="num_frames=8, got num_frames=4"):
        cli_teach_videoqa(tmp_path / "f.zarr", env["videos"], env["questions_train"], env["ckpt"], num_frames=4,
                          epochs=1, progress=False)


def test_mc_passes_shared_and_reproducible(env):
    """Stored MC values recompute exactly; the head-only path equals the whole model run T times
    (labelstore.pipeline.teacher.mc_head_passes, one seed per pass); RNG state and module flags are untouched."""
    teacher = load_model(env["ckpt"])
    store = labelstore.open(env["store"])
    videos = VideoFolder(env["videos"])
    qa = prepare_questions(videos, env["questions_train"], env["tok"], env["vocab"], strict_answers=False)
    rows = np.arange(32, min(64, len(qa)))  # epoch 1, second batch of 32
    fi = store.read_array("aug/frames/indices", epoch=1)
    x, vi = ClipCache(videos).shared_views(VideoPolicy(FrameSampler(num_frames=M), (SIZE, SIZE)), qa.video_rows[rows], fi[rows])
    args = (x, torch.as_tensor(qa.q_ids[rows]), torch.as_tensor(qa.q_mask[rows]), torch.as_tensor(qa.gt[rows]),
            store.top_k, 4, mc_seed(1, 1, 32))
    teacher.train()
    state = torch.random.get_rng_state()
    head = teacher_targets(teacher, *args, head_only=True, video_index=vi)
    assert torch.equal(state, torch.random.get_rng_state()) and teacher.training
    assert all(m.training for m in teacher.modules())
    full = teacher_targets(teacher, *args, head_only=False, video_index=vi)
    rec = store.read(1, rows)
    np.testing.assert_array_equal(rec["mc_values"], head["mc_values"].numpy().astype(np.float16))
    np.testing.assert_array_equal(rec["topk_indices"], head["topk_indices"].numpy())
    torch.testing.assert_close(head["mc_values"], full["mc_values"], rtol=1e-5, atol=1e-6)
    # pass t does not depend on T
    _, mc2 = mc_forward_qa(teacher, x, args[1], args[2], 2, 123, video_index=vi)
    _, mc4 = mc_forward_qa(teacher, x, args[1], args[2], 4, 123, video_index=vi)
    assert torch.equal(mc2, mc4[:, :2]) and not torch.equal(mc4[:, 0], mc4[:, 1])
