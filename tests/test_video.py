"""Video data layer: frame sampling, decoding, feature files, captions/questions, generators."""

from __future__ import annotations

import json
import pickle
import shutil

import h5py
import numpy as np
import pytest
import torch

from labelstore.pipeline import builtin_video as bv
from labelstore.pipeline.text import (
    AnswerVocab,
    Caption,
    CaptionsError,
    Question,
    QuestionsError,
    Tokenizer,
    check_answers,
    check_videos,
    read_captions,
    read_questions,
)
from labelstore.pipeline.video import FeatureH5, FrameSampler, VideoDecodeError, VideoFolder, VideoPolicy, video_index

# --------------------------------------------------------------------------------------
# FrameSampler
# --------------------------------------------------------------------------------------

LENGTHS = [1, 2, 3, 7, 8, 9, 16, 17, 100, 1001, 32768]


@pytest.mark.parametrize("mode", FrameSampler.MODES)
def test_sampler_indices_in_range_sorted_one_per_segment(mode):
    m = 8
    s = FrameSampler(num_frames=m, mode=mode)
    n = np.array(LENGTHS, dtype=np.int64)
    ids = np.arange(len(n), dtype=np.int64) * 7 + 3
    for epoch in range(5):
        idx = s.sample(123, epoch, ids, n[:, None], num_samples=1000)["indices"]
        assert idx.dtype == np.int16 and idx.shape == (len(n), m)
        idx = idx.astype(np.int64)
        for row, nf in zip(idx, n):
            assert row.min() >= 0 and row.max() < nf
            assert np.all(np.diff(row) >= 0), row
            if nf >= m:
                j = np.arange(m)
                assert np.all(row >= j * nf // m) and np.all(row < (j + 1) * nf // m), (nf, row)
                assert len(set(row.tolist())) == m
            else:  # fewer frames than samples: every frame used, repeats only
                assert set(row.tolist()) == set(range(nf))


def test_sampler_random_offset_covers_each_segment():
    s = FrameSampler(8, "random-offset")
    seen = [set() for _ in range(8)]
    for epoch in range(300):
        row = s.sample(0, epoch, np.array([5]), np.array([[80]]))["indices"][0]
        for j, k in enumerate(row):
            seen[j].add(int(k))
    assert all(seen[j] == set(range(10 * j, 10 * j + 10)) for j in range(8))


def test_sampler_uniform_is_segment_middle_and_epoch_independent():
    s = FrameSampler(4, "uniform")
    ids = np.arange(6)
    n = np.array([[16], [4], [2], [9], [100], [1]])
    a = s.sample(0, 0, ids, n)["indices"]
    np.testing.assert_array_equal(a[0], [1, 5, 9, 13])  # segments of 4 frames: offset (4-1)//2
    np.testing.assert_array_equal(a[1], [0, 1, 2, 3])
    np.testing.assert_array_equal(a[2], [0, 0, 1, 1])
    for seed, epoch in [(0, 1), (7, 0), (99, 12345)]:
        np.testing.assert_array_equal(s.sample(seed, epoch, ids, n)["indices"], a)


def test_sampler_random_offset_epoch_dependence_and_reproducibility():
    s = FrameSampler(8)
    ids = np.arange(64)
    n = np.full((64, 1), 64)
    e0 = s.sample(3, 0, ids, n)["indices"]
    np.testing.assert_array_equal(e0, s.sample(3, 0, ids, n)["indices"])
    e1 = s.sample(3, 1, ids, n)["indices"]
    other_seed = s.sample(4, 0, ids, n)["indices"]
    assert (e0 != e1).any(axis=1).mean() > 0.9
    assert (e0 != other_seed).any(axis=1).mean() > 0.9


def test_sampler_batch_independent_bitwise():
    s = FrameSampler(6)
    rs = np.random.default_rng(0)
    ids = rs.permutation(200)[:40].astype(np.int64)
    n = rs.integers(1, 300, size=(40, 1))
    whole = s.sample(11, 4, ids, n, num_samples=200)["indices"]
    single = np.concatenate([s.sample(11, 4, ids[i : i + 1], n[i : i + 1], 200)["indices"] for i in range(40)])
    assert whole.tobytes() == single.tobytes()
    perm = rs.permutation(40)
    np.testing.assert_array_equal(s.sample(11, 4, ids[perm], n[perm], 200)["indices"], whole[perm])


def test_sampler_validation_and_json():
    with pytest.raises(ValueError, match="mode"):
        FrameSampler(4, "middle")
    with pytest.raises(ValueError, match="num_frames"):
        FrameSampler(0)
    s = FrameSampler(4)
    with pytest.raises(ValueError, match="int16"):
        s.sample(0, 0, np.array([0]), np.array([[40000]]))
    with pytest.raises(ValueError, match="at least one frame"):
        s.sample(0, 0, np.array([0]), np.array([[0]]))
    with pytest.raises(ValueError, match="sample ids"):
        s.sample(0, 0, np.array([5]), np.array([[10]]), num_samples=5)
    assert s.param_spec() == {"indices": ("int16", (4,))}
    assert FrameSampler.from_json(s.to_json()) == s
    assert FrameSampler.from_json(json.dumps(s.to_json())) == s
    assert s.config() == {"num_frames": 4, "mode": "random-offset"}


def test_video_policy_spec_sample_render_json():
    p = VideoPolicy(FrameSampler(4, "uniform"), frame_size=(8, 12), mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert p.param_spec() == {"frames/indices": ("int16", (4,))}
    out = p.sample(0, 0, np.array([0, 1]), np.array([[16], [3]]))
    assert set(out) == {"frames/indices"} and out["frames/indices"].shape == (2, 4)
    assert VideoPolicy.from_json(p.to_json()) == p
    assert VideoPolicy.from_json(json.dumps(p.to_json())) == p
    frames = np.full((4, 8, 12, 3), 255, np.uint8)
    x = p.render(frames)
    assert x.dtype == torch.float32 and x.shape == (4, 3, 8, 12)
    torch.testing.assert_close(x[:, :, 0, 0], torch.tensor([[2.0, 1.0, 0.5]] * 4))
    big = np.zeros((2, 4, 16, 24, 3), np.uint8)  # batch of clips at another size -> resized
    y = p.render(big)
    assert y.shape == (2, 4, 3, 8, 12)
    torch.testing.assert_close(y, torch.full_like(y, -2.0) * torch.tensor([1.0, 0.5, 0.25]).view(3, 1, 1))
    with pytest.raises(ValueError, match="uint8"):
        p.render(frames.astype(np.float32))


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------

BITS = 10


def _numbered_clip(n: int, side: int = 48) -> np.ndarray:
    """Frame k: top half = k in binary (white/black stripes of 4 px), bottom half = a colour of its own."""
    frames = np.zeros((n, side, side, 3), np.uint8)
    for k in range(n):
        for b in range(BITS):
            if (k >> b) & 1:
                frames[k, : side // 2, 4 * b : 4 * b + 4] = 255
        frames[k, side // 2 :] = ((k * 53) % 200 + 40, (k * 97) % 200 + 40, (k * 151) % 200 + 40)
    return frames


def _read_number(frame: np.ndarray) -> int:
    row = frame[frame.shape[0] // 4, :, 1].astype(int)
    return sum(1 << b for b in range(BITS) if row[4 * b + 2] > 128)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    short = _numbered_clip(24)
    long = _numbered_clip(300)
    (root / "sub").mkdir()
    bv.write_video(root / "short.mp4", short)
    bv.write_video(root / "sub" / "long.mp4", long, gop=12)
    return root, {"short.mp4": short, "sub/long.mp4": long}


def _assert_frames(got, truth, indices):
    assert got.dtype == np.uint8 and got.shape == (len(indices),) + truth.shape[1:]
    for g, k in zip(got, indices):
        assert _read_number(g) == k
        assert np.abs(g.astype(int) - truth[k].astype(int)).mean() < 10


def test_decode_exact_frames_short(clips):
    root, truth = clips
    vf = VideoFolder(root)
    assert vf.ids == ["short.mp4", "sub/long.mp4"]
    assert vf.src_shape(0) == (24,) and vf.src_shape(1) == (300,)
    assert vf.src_shapes().tolist() == [[24], [300]] and vf.describe()["num_samples"] == 2
    idx = np.array([23, 0, 5, 5, 11, 1])  # unsorted, repeated
    _assert_frames(vf.load_frames(0, idx), truth["short.mp4"], idx)
    sampled = FrameSampler(8).sample(0, 3, np.array([0]), np.array([vf.src_shape(0)]))["indices"][0]
    _assert_frames(vf.load_frames(0, sampled), truth["short.mp4"], sampled)


def test_decode_with_seeking_matches_sequential(clips):
    root, truth = clips
    seeking = VideoFolder(root, seek_threshold=16)
    sequential = VideoFolder(root, seek_threshold=10**9)
    idx = np.array([290, 3, 150, 151, 299, 77, 78, 200, 12, 150])
    seeking._decode_sequential = None  # the seeking path must not fall back
    a = seeking.load_frames(1, idx)
    assert seeking._ptsidx[1] is not None
    b = sequential.load_frames(1, idx)
    _assert_frames(a, truth["sub/long.mp4"], idx)
    assert np.array_equal(a, b)


def test_decode_resize_and_pickle(clips):
    root, _ = clips
    vf = pickle.loads(pickle.dumps(VideoFolder(root, frame_size=(16, 24))))
    out = vf.load_frames(0, [0, 3])
    assert out.shape == (2, 16, 24, 3) and out.dtype == np.uint8


def test_decode_errors_name_the_file(clips, tmp_path):
    root, _ = clips
    shutil.copy(root / "short.mp4", tmp_path / "good.mp4")
    (tmp_path / "garbage.mp4").write_bytes(b"this is not a video" * 50)
    data = (root / "short.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "notes.txt").write_text("ignored")
    vf = VideoFolder(tmp_path)
    assert vf.ids == ["garbage.mp4", "good.mp4", "truncated.mp4"]
    for i, name in [(0, "garbage.mp4"), (2, "truncated.mp4")]:
        with pytest.raises(VideoDecodeError, match=name):
            vf.src_shape(i)
        with pytest.raises(VideoDecodeError, match=name):
            vf.load_frames(i, [0])
    with pytest.raises(IndexError, match=r"\[0, 24\)"):
        vf.load_frames(1, [24])
    (tmp_path / "good.mp4").unlink()
    with pytest.raises(VideoDecodeError, match="good.mp4.*missing"):
        vf.load_frames(1, [0])
    assert issubclass(VideoDecodeError, ValueError)
    with pytest.raises(ValueError, match="no videos"):
        VideoFolder(tmp_path, exts=(".webm",))


def test_folder_fingerprint_and_index(clips, tmp_path):
    root, _ = clips
    fp = VideoFolder(root).fingerprint()
    assert fp["kind"] == "video_folder" and fp["num_samples"] == 2 and len(fp["digest"]) == 64
    assert VideoFolder(root).fingerprint() == fp
    shutil.copytree(root, tmp_path / "copy")
    with open(tmp_path / "copy" / "short.mp4", "ab") as f:
        f.write(b"\0")
    assert VideoFolder(tmp_path / "copy").fingerprint()["digest"] != fp["digest"]
    assert VideoFolder(root).index() == {"short": 0, "long": 1}
    assert video_index(["a/x.mp4", "b/y.avi", "index:3"]) == {"x": 0, "y": 1, "index:3": 2}
    with pytest.raises(ValueError, match="ambiguous.*'x'"):
        video_index(["a/x.mp4", "b/x.mkv"])


# --------------------------------------------------------------------------------------
# Feature files
# --------------------------------------------------------------------------------------


def test_feature_h5_load_dim_fingerprint(tmp_path):
    path = tmp_path / "feats.h5"
    names = bv.make_feature_h5(path, n_videos=5, frames=(3, 20), dim=32, seed=1)
    src = FeatureH5(path)
    assert src.ids == names and len(src) == 5 and src.dim == 32
    with h5py.File(path) as f:
        ref = f[names[2]][()]
    assert src.src_shape(2) == (len(ref),) and src.src_shapes([2]).tolist() == [[len(ref)]]
    assert src.describe()["dim"] == 32
    idx = np.array([2, 0, 2, len(ref) - 1])
    out = src.load_frames(2, idx)
    assert out.dtype == np.float32 and out.shape == (4, 32)
    np.testing.assert_array_equal(out, ref[idx])
    src.check_dim(32)
    with pytest.raises(ValueError) as e:
        src.check_dim(512)
    assert str(path) in str(e.value) and names[0] in str(e.value) and "32" in str(e.value) and "512" in str(e.value)
    fp = src.fingerprint()
    assert fp["kind"] == "feature_h5" and fp["num_samples"] == 5
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone.load_frames(2, idx), out)
    src.close()
    clone.close()
    with h5py.File(path, "a") as f:
        f[names[0]][0, 0] += 1.0
    assert FeatureH5(path).fingerprint()["digest"] != fp["digest"]
    assert FeatureH5(path).index()[names[4]] == 4


def test_feature_h5_inconsistent_dims(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["a"] = np.zeros((4, 16), np.float32)
        f["b"] = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match=r"bad\.h5.*'b'.*8.*16"):
        FeatureH5(path)


# --------------------------------------------------------------------------------------
# Captions / questions
# --------------------------------------------------------------------------------------


def test_read_captions_jsonl_and_csv(tmp_path):
    j = tmp_path / "caps.jsonl"
    j.write_text(
        '{"video_id": "v1", "caption": "a red circle moves left", "frames_visible": [1, 2]}\n'
        "\n"
        '{"video_id": "v1", "caption": "  Something else "}\n'
        '{"video_id": 7, "caption": "numeric id"}\n'
    )
    caps = read_captions(j)
    assert caps == [Caption("v1", "a red circle moves left"), Caption("v1", "Something else"), Caption("7", "numeric id")]
    assert caps[0].extra == {"frames_visible": [1, 2]} and caps[1].line == 3
    c = tmp_path / "caps.csv"
    c.write_text('video_id,caption\nv1,"a red, circle"\nv2,a blue square\n')
    assert read_captions(c) == [Caption("v1", "a red, circle"), Caption("v2", "a blue square")]


@pytest.mark.parametrize(
    "content,line,what",
    [
        ('{"video_id": "v1", "caption": "ok"}\n{"video_id": "v1", "caption": "x"\n', 2, "bad JSON"),
        ('{"video_id": "v1", "caption": "ok"}\n\n{"caption": "no id"}\n', 3, "missing field 'video_id'"),
        ('{"video_id": "v1", "caption": "   "}\n', 1, "empty caption"),
        ('["v1", "list"]\n', 1, "JSON object"),
    ],
)
def test_read_captions_errors_name_file_and_line(tmp_path, content, line, what):
    p = tmp_path / "caps.jsonl"
    p.write_text(content)
    with pytest.raises(CaptionsError) as e:
        read_captions(p)
    assert f"{p}:{line}:" in str(e.value) and what in str(e.value)
    assert e.value.errors[0][0] == line


def test_read_captions_csv_errors(tmp_path):
    p = tmp_path / "caps.csv"
    p.write_text("video,caption\nv1,x\n")
    with pytest.raises(CaptionsError, match=r"caps\.csv:1:.*video_id"):
        read_captions(p)
    p.write_text("video_id,caption\nv1,x\nv2,\nv3,a,b\n")
    with pytest.raises(CaptionsError) as e:
        read_captions(p)
    assert f"{p}:3: empty caption" in str(e.value) and f"{p}:4:" in str(e.value) and "2 malformed" in str(e.value)


def test_check_videos_lists_missing(tmp_path):
    caps = [Caption(f"v{i}", f"caption {i}", line=i + 1) for i in range(15)]
    ids = ["v0.mp4", "v1.mp4", "sub/v2.mp4"]
    assert check_videos(caps[:3], ids, "caps.jsonl") == [0, 1, 2]
    with pytest.raises(CaptionsError) as e:
        check_videos(caps, ids, "caps.jsonl")
    msg = str(e.value)
    assert "12 of 15" in msg and "'v3'" in msg and "line 4" in msg and "and 2 more" in msg and "caps.jsonl" in msg


def test_read_questions_jsonl_csv_and_errors(tmp_path):
    j = tmp_path / "q.jsonl"
    j.write_text(
        '{"video_id": "v1", "question": "what colour?", "answer": "red", "answers": ["red", "blue"]}\n'
        '{"video_id": "v2", "question": "what shape?", "answer": "circle"}\n'
    )
    qs = read_questions(j)
    assert qs == [Question("v1", "what colour?", "red", ["red", "blue"]), Question("v2", "what shape?", "circle", None)]
    c = tmp_path / "q.csv"
    c.write_text("video_id,question,answer,answers\nv1,what colour?,blue,red|blue\nv2,how many?,two,\n")
    assert read_questions(c) == [Question("v1", "what colour?", "blue", ["red", "blue"]), Question("v2", "how many?", "two", None)]
    j.write_text('{"video_id": "v1", "question": "q", "answer": "green", "answers": ["red", "blue"]}\n')
    with pytest.raises(QuestionsError, match=r"q\.jsonl:1:.*'green' is not among answers"):
        read_questions(j)
    j.write_text('{"video_id": "v1", "question": "q", "answer": "red"}\n{"video_id": "v1", "question": "q"}\n')
    with pytest.raises(QuestionsError, match=r"q\.jsonl:2: missing field 'answer'"):
        read_questions(j)
    c.write_text("video_id,question\nv1,q\n")
    with pytest.raises(QuestionsError, match=r"q\.csv:1:.*answer"):
        read_questions(c)


def test_tokenizer_round_trip():
    tok = Tokenizer.build(["A red circle moves left.", "a red square", "the BLUE square-moves"], min_count=1)
    assert tok.words[:5] == ["a", "moves", "red", "square", "blue"]  # by frequency, ties alphabetical
    assert len(tok) == len(tok.words) + 2
    ids, mask = tok.encode("Red circle jumps", max_len=5)
    assert ids.dtype == np.int64 and mask.dtype == bool
    assert ids.tolist() == [tok.token_id("red"), tok.token_id("circle"), Tokenizer.UNK, 0, 0]
    assert mask.tolist() == [True, True, True, False, False]
    ids2, mask2 = tok.encode("a red circle moves left", max_len=2)
    assert mask2.all() and tok.decode(ids2) == "a red"
    bi, bm = tok.encode_batch(["a", "red square"], 4)
    assert bi.shape == (2, 4) and bm.sum() == 3
    tok2 = Tokenizer.from_json(json.dumps(tok.to_json()))
    np.testing.assert_array_equal(tok2.encode("blue moves", 4)[0], tok.encode("blue moves", 4)[0])
    assert len(Tokenizer.build(["a a b"], min_count=2)) == 3


def test_answer_vocab_and_check_answers():
    v = AnswerVocab.build(["red", "blue", "Red", "green", "blue", "yellow", "circle"], top_n=3)
    assert v.answers == ["blue", "red", "circle"]  # counts 2, 2, then ties by name
    assert v.index("RED ") == 1 and v.index("yellow") == -1 and "blue" in v
    assert v.multi_hot(["red", "circle", "purple"]).tolist() == [False, True, True]
    assert AnswerVocab.from_json(json.dumps(v.to_json())).answers == v.answers
    qs = [Question("v1", "q1", "red", line=1), Question("v2", "q2", "purple", line=2), Question("v3", "q3", "blue", line=3)]
    assert check_answers(qs, v) == [1]
    with pytest.raises(QuestionsError, match=r"(?s)1 of 3 .*line 2.*'purple'"):
        check_answers(qs, v, "q.jsonl", strict=True)


# --------------------------------------------------------------------------------------
# Built-in generators
# --------------------------------------------------------------------------------------


def _colour_pixels(frame: np.ndarray, rgb) -> int:
    return int((np.abs(frame.astype(int) - np.asarray(rgb)).max(axis=-1) < 50).sum())


def test_retrieval_generator(tmp_path):
    out = bv.make_retrieval_dataset(tmp_path / "ret", n_train=6, n_test=3, frames=8, size=32, seed=5)
    assert out["codec"] in ("libx264", "mpeg4")
    vf = VideoFolder(out["videos"])
    assert len(vf) == 9
    train, test = read_captions(out["captions_train"]), read_captions(out["captions_test"])
    assert len(train) == 18 and len(test) == 9  # 2 objects + 1 combined caption per video
    check_videos(train + test, vf.index(), out["root"])
    assert {c.video_id for c in train}.isdisjoint({c.video_id for c in test})
    checked = 0
    index = vf.index()
    for cap in train + test:
        objs = cap.extra["objects"]
        assert cap.extra["frames_visible"] == sorted(set().union(*[o["frames"] for o in objs]))
        assert all(set(o["frames"]) <= set(o["frames_drawn"]) for o in objs)
        if len(objs) != 1:
            continue
        ob = objs[0]
        assert ob["colour"] in cap.text and ob["shape"] in cap.text
        others = [c for c in train + test if c.video_id == cap.video_id and len(c.extra["objects"]) == 1 and c is not cap]
        if any(o.extra["objects"][0]["colour"] == ob["colour"] for o in others):
            continue  # same colour twice in the clip: cannot tell them apart by colour
        frames = vf.load_frames(index[cap.video_id], np.arange(8))
        vis = set(cap.extra["frames_visible"])
        assert 0 < len(vis) < 8
        for t in range(8):
            n = _colour_pixels(frames[t], bv.COLOURS[ob["colour"]])
            if t in vis:
                assert n >= 4, (cap, t, n)
            elif t not in ob["frames_drawn"]:
                assert n == 0, (cap, t, n)
        checked += 1
    assert checked >= 6
    again = bv.make_retrieval_dataset(tmp_path / "ret2", n_train=6, n_test=3, frames=8, size=32, seed=5)
    assert again["captions_train"].read_bytes() == out["captions_train"].read_bytes()
    assert (again["videos"] / "test_00002.mp4").read_bytes() == (out["videos"] / "test_00002.mp4").read_bytes()
    assert bv.make_retrieval_dataset(tmp_path / "ret", n_train=6, n_test=3, frames=8, size=32, seed=5)["seconds"] == 0.0


def test_videoqa_generator(tmp_path):
    out = bv.make_videoqa_dataset(tmp_path / "qa", n_train=10, n_test=4, frames=8, size=32, seed=2)
    vf = VideoFolder(out["videos"])
    train, test = read_questions(out["questions_train"]), read_questions(out["questions_test"])
    check_videos(train, vf.index(), out["questions_train"])
    check_videos(test, vf.index(), out["questions_test"])
    assert all(q.answers and q.answer in q.answers for q in train + test)
    multi = [q for q in train if len(q.answers) > 1]
    assert len(multi) >= 5  # several correct answers, one annotated
    allowed = set(bv.COLOURS) | set(bv.SHAPES) | set(bv.MOTIONS[:4]) | {"still"} | set(bv.COUNT_WORDS)
    assert {a for q in train + test for a in q.answers} <= allowed
    assert len({q.extra["type"] for q in train}) >= 4
    vocab = AnswerVocab.build([q.answer for q in train])
    assert vf.load_frames(0, [0, 7]).shape == (2, 32, 32, 3)
    assert len(check_answers(train, vocab)) == 0
