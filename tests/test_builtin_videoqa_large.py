"""make_videoqa_dataset(vocab="large"): a VideoQA task with hundreds of compositional answers and
several correct answers per question (RADI as its paper means it), written as real video files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from labelstore.pipeline import builtin_video as bv
from labelstore.pipeline.videoqa_data import prepare_questions
from labelstore.pipeline.text import AnswerVocab, Tokenizer, read_questions
from labelstore.pipeline.video import VideoFolder

ARGS = dict(n_train=40, n_test=8, frames=8, size=32, seed=4, vocab="large")


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    return bv.make_videoqa_dataset(tmp_path_factory.mktemp("large"), **ARGS)


def _digests(root) -> dict[str, str]:
    """sha256 of every generated file except meta.json (it records the generation time)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "meta.json"}


def test_vocabulary_is_large_and_compositional():
    vocab = bv.large_answer_vocabulary()
    assert len(vocab) == len(set(vocab)) == 400  # 30 + 150 + 210 + 5 + 5
    assert "small red circle moving left" in vocab and "big white triangle staying still" in vocab
    assert "red circle then blue square" in vocab and "red circle then red circle" not in vocab
    small = set(bv.COLOURS) | set(bv.SHAPES) | set(bv.MOTIONS[:4]) | {"still"}
    assert not small & set(vocab)  # no single-word colour/shape/direction answers


def test_answer_sets(large):
    vocab = set(bv.large_answer_vocabulary())
    qs = read_questions(large["questions_train"]) + read_questions(large["questions_test"])
    assert len(qs) == 4 * (ARGS["n_train"] + ARGS["n_test"])
    assert all(q.answer in q.answers and set(q.answers) <= vocab for q in qs)
    assert len({a for q in qs for a in q.answers}) >= 150  # hundreds over a full-size set
    multi = [q for q in qs if len(q.answers) > 1]
    assert len(multi) >= len(qs) // 4
    by_type = {}
    for q in qs:
        by_type.setdefault(q.extra["type"], []).append(q)
    assert set(by_type) == {"object_of_motion", "describe", "order", "motion_of_object", "count_shape"}
    for q in by_type["describe"]:  # four objects with distinct looks -> four distinct descriptions
        assert len(q.answers) == 4
    for q in by_type["order"]:  # "A then B": A and B are different objects of the clip
        for a in q.answers:
            first, second = a.split(" then ")
            assert first != second
    # every object named in "which object moves d?" is described as moving d in the same clip
    rows = [json.loads(line) for line in open(large["questions_train"])]
    desc = {r["video_id"]: set(r["answers"]) for r in rows if r["type"] == "describe"}
    for r in rows:
        if r["type"] == "object_of_motion" and r["video_id"] in desc:
            d = r["question"].split()[-1].rstrip("?")
            assert all(f"{a} moving {d}" in desc[r["video_id"]] for a in r["answers"])


def test_deterministic_bytes(large, tmp_path):
    again = bv.make_videoqa_dataset(tmp_path / "again", **ARGS)
    a, b = _digests(large["root"]), _digests(again["root"])
    assert len(a) == ARGS["n_train"] + ARGS["n_test"] + 2 and a == b
    other = bv.make_videoqa_dataset(tmp_path / "other", **{**ARGS, "seed": 5, "n_train": 4, "n_test": 1})
    assert _digests(other["root"])["videos/train_00000.mp4"] != a["videos/train_00000.mp4"]
    # the small vocabulary is a different dataset: same seed, other questions
    small = bv.make_videoqa_dataset(tmp_path / "small", **{**ARGS, "vocab": "small", "n_train": 4, "n_test": 1})
    assert _digests(small["root"])["questions_train.jsonl"] != a["questions_train.jsonl"]
    with pytest.raises(ValueError, match="vocab"):
        bv.make_videoqa_dataset(tmp_path / "bad", **{**ARGS, "vocab": "huge"})


def _generate_in_process(root, perturb: int) -> dict[str, str]:
    """Digests of the ARGS dataset generated in a fresh Python process; glibc's MALLOC_PERTURB_
    fills its heap with other garbage than the caller's (x264's macroblock tree once read it)."""
    env = {**os.environ, "MALLOC_PERTURB_": str(perturb)}
    code = ("import sys; from labelstore.pipeline import builtin_video as bv\n"
            f"bv.make_videoqa_dataset(sys.argv[1], **{ARGS!r})\n")
    subprocess.run([sys.executable, "-c", code, str(root)], env=env, check=True)
    return _digests(root)


def test_deterministic_bytes_across_processes(large, tmp_path):
    """Two other processes, with differently filled heaps, write the same bytes as this one."""
    here = _digests(large["root"])
    assert _generate_in_process(tmp_path / "p85", 85) == here
    assert _generate_in_process(tmp_path / "p170", 170) == here


def test_rgb_to_yuv_integer_formula():
    """BT.601 limited range: black, white and pure colours; 4:2:0 chroma is the rounded 2x2 mean."""
    rgb = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255]], np.uint8).reshape(1, 2, 2, 3)
    y, u, v = bv.rgb_to_yuv(rgb)
    assert y.ravel().tolist() == [16, 235, 82, 41]
    assert u.ravel().tolist() == [128, 128, 90, 240] and v.ravel().tolist() == [128, 128, 240, 110]
    y4, u4, v4 = bv.rgb_to_yuv(rgb, "420")
    assert y4.shape == (1, 2, 2) and u4.shape == v4.shape == (1, 1, 1)
    assert (int(u4[0, 0, 0]), int(v4[0, 0, 0])) == ((128 + 128 + 90 + 240 + 2) >> 2, (128 + 128 + 240 + 110 + 2) >> 2)


def test_prepare_questions_accepts_it(large):
    videos = VideoFolder(large["videos"])
    qs = read_questions(large["questions_train"])
    tok = Tokenizer.build(q.question for q in qs)
    vocab = AnswerVocab(bv.large_answer_vocabulary())
    qa = prepare_questions(videos, large["questions_train"], tok, vocab)
    assert len(qa.gt) == len(qs) and (qa.gt >= 0).all() and len(np.unique(qa.gt)) >= 60
    assert videos.load_frames(int(qa.video_rows[0]), [0, 7]).shape == (2, 32, 32, 3)
