"""The retrieval CLI entry points (labelstore.trainers.retrieval_cli.cli_teach_retrieval / cli_train_retrieval), called
directly on tiny generated data with real checkpoints and real stores."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import labelstore
from labelstore.integrity import StoreError, StoreMismatch
from labelstore.pipeline import builtin_video as bv
from labelstore.pipeline.teach_retrieval import RetrievalTeachConfig, teach_retrieval
from labelstore.pipeline.teacher import weights_hash
from labelstore.pipeline.text import Tokenizer, read_captions
from labelstore.pipeline.video import FrameSampler, VideoFolder, VideoPolicy
from labelstore.trainers.retrieval_cli import (STUDENT_SPEC, TEACHER_SPEC, cli_teach_retrieval, cli_train_retrieval,
                                save_retrieval_checkpoint)
from labelstore.trainers.retrieval_models import CrossModalTeacher, HolisticStudent
from labelstore.trainers.spec import load_checkpoint, load_model, save_checkpoint

torch.set_num_threads(1)
M, SIZE, B = 8, 32, 8


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("retcli")
    d = bv.make_retrieval_dataset(root / "data", n_train=16, n_test=4, frames=M, size=SIZE, seed=1)
    caps = read_captions(d["captions_train"])
    tok = Tokenizer.build(c.text for c in caps)
    kw = {"vocab_size": len(tok), "dim": 32, "frame_size": SIZE, "num_frames": M}
    torch.manual_seed(0)
    teacher = CrossModalTeacher(**kw)
    ckpt = save_retrieval_checkpoint(root / "teacher.pt", teacher, TEACHER_SPEC, kw, tok, M, SIZE)
    store = root / "store.zarr"
    stats = cli_teach_retrieval(store, d["videos"], d["captions_train"], ckpt, epochs=2, batch_size=B, progress=False)
    return {"root": root, "d": d, "tok": tok, "kw": kw, "teacher": teacher, "ckpt": ckpt, "store": store, "stats": stats}


def test_checkpoint_carries_tokenizer_and_rebuilds(env):
    c = load_checkpoint(env["ckpt"])
    assert c["spec"] == TEACHER_SPEC and c["kwargs"] == env["kw"]
    assert c["extra"]["tokenizer"]["words"] == env["tok"].words
    assert (c["extra"]["num_frames"], c["extra"]["frame_size"]) == (M, SIZE)
    assert weights_hash(load_model(env["ckpt"])) == weights_hash(env["teacher"])


def test_teach_writes_a_readable_store(env):
    s = env["stats"]
    assert s["complete"] and s["units"] == 2 and s["tokenizer"] == "checkpoint"
    assert (s["num_frames"], s["frame_size"]) == (M, SIZE)
    store = labelstore.open(env["store"])
    assert store.task == "retrieval" and store.epochs == 2
    a = store.attrs
    assert a["similarity_mode"] == "dense" and a["num_frames"] == M and a["num_videos"] == 16
    assert a["tokenizer"]["words"] == env["tok"].words
    assert a["captions"]["path"] == str(env["d"]["captions_train"])
    assert store.read_array("similarity", 1).shape == (a["num_captions"], 16)


def test_teach_resume_equals_uninterrupted(env, tmp_path):
    d, path = env["d"], tmp_path / "r.zarr"
    # the same stage the CLI runs, stopped after one of its two epochs
    teach_retrieval(str(path), VideoFolder(d["videos"]), str(d["captions_train"]), env["tok"], load_model(env["ckpt"]),
                    VideoPolicy(FrameSampler(M), frame_size=(SIZE, SIZE)),
                    RetrievalTeachConfig(epochs=2, seed=0, mode="dense", batch_size=B), stop_after_units=1)
    with pytest.raises(StoreError, match="has not finished"):
        labelstore.open(path)
    with pytest.raises(StoreError, match="resume"):
        cli_teach_retrieval(path, d["videos"], d["captions_train"], env["ckpt"], epochs=2, batch_size=B, progress=False)
    with pytest.raises(StoreMismatch, match="seed"):
        cli_teach_retrieval(path, d["videos"], d["captions_train"], env["ckpt"], epochs=2, batch_size=B, seed=1,
                            resume=True, progress=False)
    s = cli_teach_retrieval(path, d["videos"], d["captions_train"], env["ckpt"], epochs=2, batch_size=B, resume=True,
                            progress=False)
    assert s["units"] == 1 and s["complete"]
    a, b = labelstore.open(path), labelstore.open(env["store"])
    for e in range(2):
        for name in ("aug/frames/indices", "similarity", "frame_scores", "view_digest"):
            np.testing.assert_array_equal(a.read_array(name, e), b.read_array(name, e))
    # resuming a finished store is a no-op
    assert cli_teach_retrieval(path, d["videos"], d["captions_train"], env["ckpt"], epochs=2, batch_size=B,
                               resume=True, progress=False)["units"] == 0


def test_teach_builds_tokenizer_without_checkpoint_extra(env, tmp_path):
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, env["teacher"], TEACHER_SPEC, env["kw"])  # no extra: tokenizer built over the captions
    s = cli_teach_retrieval(tmp_path / "p.zarr", env["d"]["videos"], env["d"]["captions_train"], str(plain), epochs=1,
                            mode="batches", batch_size=B, progress=False)
    assert s["tokenizer"] == "built" and s["complete"] and (s["num_frames"], s["frame_size"]) == (8, 32)
    assert labelstore.open(tmp_path / "p.zarr").attrs["tokenizer"]["words"] == env["tok"].words


@pytest.mark.parametrize("mode", ["cache", "online", "infonce"])
def test_train_each_mode_writes_checkpoint_and_metrics(env, tmp_path, mode):
    out = tmp_path / "run"
    m = cli_train_retrieval(env["store"], env["d"]["videos"], env["d"]["captions_train"], mode=mode,
                            online_teacher=env["ckpt"] if mode == "online" else None,
                            eval_captions=env["d"]["captions_test"], epochs=1, batch_size=B, out=out, progress=False)
    assert m["mode"] == mode and m["steps"] >= 1 and np.isfinite(m["loss"][0])
    assert set(m["eval"]) >= {"t2v_R@1", "t2v_R@5", "t2v_MdR", "v2t_R@1"}
    if mode == "online":
        assert m["online_teacher_matches_store"] is True
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["mode"] == mode and on_disk["eval"] == m["eval"] and on_disk["checkpoint"] == str(out / "student.pt")
    c = load_checkpoint(out / "student.pt")
    assert c["spec"] == STUDENT_SPEC and c["extra"]["tokenizer"]["words"] == env["tok"].words
    assert isinstance(load_model(str(out / "student.pt")), HolisticStudent)


def test_train_from_student_checkpoint(env, tmp_path):
    kw = {"vocab_size": len(env["tok"]), "dim": 32, "num_frames": M}
    torch.manual_seed(3)
    spec = save_retrieval_checkpoint(tmp_path / "s0.pt", HolisticStudent(**kw), STUDENT_SPEC, kw, env["tok"], M, SIZE)
    m = cli_train_retrieval(env["store"], env["d"]["videos"], mode="infonce", student_spec=spec, epochs=1,
                            batch_size=B, out=tmp_path / "o", progress=False)
    assert m["eval"] is None and load_checkpoint(tmp_path / "o" / "student.pt")["kwargs"] == kw
    other = Tokenizer(env["tok"].words[::-1])
    bad = save_retrieval_checkpoint(tmp_path / "s1.pt", HolisticStudent(**kw), STUDENT_SPEC, kw, other, M, SIZE)
    with pytest.raises(ValueError, match="tokenizer differs"):
        cli_train_retrieval(env["store"], env["d"]["videos"], mode="infonce", student_spec=bad, epochs=1, progress=False)


def test_clear_errors(env, tmp_path):
    d = env["d"]
    with pytest.raises(FileNotFoundError, match="nope/teacher.pt"):
        cli_teach_retrieval(tmp_path / "x.zarr", d["videos"], d["captions_train"], "nope/teacher.pt", progress=False)
    with pytest.raises(ValueError, match="NoSuchModel"):
        cli_teach_retrieval(tmp_path / "x.zarr", d["videos"], d["captions_train"],
                            "labelstore.trainers.retrieval_models:NoSuchModel", progress=False)
    with pytest.raises(FileNotFoundError, match="missing_caps.jsonl"):
        cli_teach_retrieval(tmp_path / "x.zarr", d["videos"], tmp_path / "missing_caps.jsonl", env["ckpt"], progress=False)
    with pytest.raises(FileNotFoundError, match="no_videos_here"):
        cli_teach_retrieval(tmp_path / "x.zarr", tmp_path / "no_videos_here", d["captions_train"], env["ckpt"],
                            progress=False)
    assert not (tmp_path / "x.zarr").exists()
    with pytest.raises(FileNotFoundError, match="missing_eval.jsonl"):
        cli_train_retrieval(env["store"], d["videos"], eval_captions=tmp_path / "missing_eval.jsonl", progress=False)
    with pytest.raises(ValueError, match="online"):
        cli_train_retrieval(env["store"], d["videos"], mode="online", progress=False)
    with pytest.raises(StoreError, match="no_store.zarr"):
        cli_train_retrieval(tmp_path / "no_store.zarr", d["videos"], progress=False)
    with pytest.raises(ValueError, match="differ from the store"):
        cli_train_retrieval(env["store"], d["videos"], d["captions_test"], epochs=1, batch_size=B, progress=False)


@pytest.mark.parametrize("loss,teaching", [(None, "both"), ("cgt", "cgt"), ("fgt", "fgt")])
def test_train_entry_point_loss_selects_teaching(env, tmp_path, loss, teaching):
    """`labelstore train --task retrieval --loss cgt|fgt|teachclip` through the registry's entry point."""
    from labelstore.cli_options import TrainCommon
    from labelstore.errors import ConfigError
    from labelstore.trainers.retrieval_options import RetrievalTrainOptions
    from labelstore.trainers.tasks import entry_point

    train = entry_point("retrieval", "train")
    c = TrainCommon(store_path=str(env["store"]), data_spec=str(env["d"]["videos"]), loss=loss, epochs=1, batch_size=B,
                    out=str(tmp_path / "o"))
    m, line = train(c, RetrievalTrainOptions(), print)
    assert m["teaching"] == teaching and f"({teaching})" in line
    assert set(m["parts"][0]) == ({"infonce", "cgt", "fgt"} if teaching == "both" else {"infonce", teaching})
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["teaching"] == teaching
    with pytest.raises(ConfigError, match="--loss 'fkd'.*cgt"):
        train(dataclasses.replace(c, loss="fkd"), RetrievalTrainOptions(), print)
