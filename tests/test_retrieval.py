"""Retrieval label stores: replay identity, teacher recomputation, resume, clear errors, students, inspect."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import labelstore
from labelstore.integrity import view_digest
from labelstore.trainers.tasks import inspect_store
from labelstore.pipeline import builtin_video as bv
from labelstore.pipeline.retrieval_data import plan_batches
from labelstore.pipeline.teach_retrieval import RetrievalTeachConfig, dense_similarity, teach_retrieval
from labelstore.pipeline.text import CaptionsError, Tokenizer, read_captions
from labelstore.pipeline.video import FeatureH5, FrameSampler, VideoDecodeError, VideoFolder, VideoPolicy
from labelstore.trainers.retrieval import retrieval_metrics, train_retrieval_student
from labelstore.trainers.retrieval_models import CrossModalTeacher, HolisticStudent

torch.set_num_threads(1)
M = 8  # frames per view


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ret")
    d = bv.make_retrieval_dataset(root / "data", n_train=24, n_test=4, frames=16, size=32, seed=3)
    caps = read_captions(d["captions_train"])
    tok = Tokenizer.build(c.text for c in caps)
    torch.manual_seed(0)
    return {
        "root": root, "d": d, "videos": VideoFolder(d["videos"]), "caps": caps, "tok": tok,
        "policy": VideoPolicy(FrameSampler(M), frame_size=(32, 32)),
        "xclip": CrossModalTeacher(len(tok), dim=32).eval(),
        "dual": HolisticStudent(len(tok), dim=32).eval(),
    }


def _teach(data, path, mode, epochs=2, overwrite=True, **kw):
    teacher = data["dual"] if mode == "embeddings" else data["xclip"]
    run = {k: kw.pop(k) for k in ("resume", "stop_after_units") if k in kw}
    cfg = RetrievalTeachConfig(epochs=epochs, seed=5, mode=mode, batch_size=8, chunk_rows=16, **kw)
    return teach_retrieval(str(path), data["videos"], data["d"]["captions_train"], data["tok"], teacher, data["policy"],
                           cfg, overwrite=overwrite, **run)


@pytest.mark.parametrize("mode", ["dense", "batches", "embeddings"])
def test_replay_reproduces_frames_scores_and_similarities(data, tmp_path, mode):
    stats = _teach(data, tmp_path / "s.zarr", mode)
    assert stats["complete"]
    store = labelstore.open(tmp_path / "s.zarr")
    assert store.task == "retrieval" and store.attrs["similarity_mode"] == mode
    teacher = data["dual"] if mode == "embeddings" else data["xclip"]
    videos, policy, tok = data["videos"], data["policy"], Tokenizer.from_json(store.attrs["tokenizer"])
    sample_ids = [str(s) for s in store.read_array("sample_id")]
    src = np.array([videos.ids.index(s) for s in sample_ids])
    cv = store.read_array("caption_video").astype(np.int64)
    texts = [str(t) for t in store.read_array("caption_text")]
    assert texts == [c.text for c in data["caps"]]
    assert [sample_ids[v].split(".")[0] for v in cv] == [c.video_id for c in data["caps"]]
    ids, mask = tok.encode_batch(texts, store.attrs["text_max_len"])
    with torch.no_grad():
        t = teacher.encode_text(torch.from_numpy(ids), torch.from_numpy(mask))
    for e in range(store.epochs):
        idx = store.read_array("aug/frames/indices", e)  # [Nv, M]
        want = policy.sample(5, e, np.arange(len(src)), videos.src_shapes(src))["frames/indices"]
        np.testing.assert_array_equal(idx, want)
        # replay: decode exactly the stored frames (no cache) and render: the teacher's input, bit for bit
        x = torch.stack([policy.render(videos.load_frames(int(src[v]), idx[v])) for v in range(len(src))])
        np.testing.assert_array_equal(store.read_array("view_digest", e), [view_digest(xi) for xi in x.numpy()])
        with torch.no_grad():
            v = teacher.encode_video(x)
            vc = v[torch.as_tensor(cv)] if isinstance(v, torch.Tensor) else tuple(r[torch.as_tensor(cv)] for r in v)
            fs = teacher.frame_text_scores(vc, t).softmax(-1).numpy()
            sim = dense_similarity(teacher, v, t).numpy()  # [Nc, Nv]
        np.testing.assert_allclose(store.read_array("frame_scores", e).astype(np.float32), fs, rtol=1e-3, atol=1e-3)
        if mode == "dense":
            np.testing.assert_allclose(store.read_array("similarity", e).astype(np.float32), sim, rtol=1e-3, atol=1e-3)
        elif mode == "embeddings":
            s = store.attrs["logit_scale"] * store.read_array("text_emb").astype(np.float32) @ \
                store.read_array("video_emb", e).astype(np.float32).T
            np.testing.assert_allclose(s, sim, atol=0.05)  # product of two float16-rounded unit vectors, x scale
        else:
            plan = store.read_array("batch_captions", e)  # [nb, B]
            np.testing.assert_array_equal(plan, plan_batches(cv, 8, 5, e))
            blocks = store.read_array("batch_similarity", e)
            for b, row in enumerate(plan):
                row = row[row >= 0]
                assert len(set(cv[row].tolist())) == len(row), "a batch repeats a video"
                np.testing.assert_allclose(blocks[b, : len(row), : len(row)].astype(np.float32), sim[np.ix_(row, cv[row])],
                                           rtol=1e-3, atol=1e-3)
    # students read the same targets: a few steps from the store and with the live teacher
    losses = {}
    for train_mode, in_memory in (("cache", 0), ("cache", 1 << 30), ("online", 0)):  # dense: rows per step / whole epoch
        torch.manual_seed(1)
        st = HolisticStudent(len(tok), dim=32)
        h = train_retrieval_student(st, store, videos, mode=train_mode, epochs=1, batch_size=8, max_steps=2,
                                    teacher=teacher if train_mode == "online" else None, dense_in_memory=in_memory)
        assert h["steps"] == 2 and np.isfinite(h["loss"]).all()
        losses[train_mode, in_memory] = h["loss"]
    assert losses["cache", 0] == losses["cache", 1 << 30]
    assert np.allclose(losses["cache", 0], losses["online", 0], rtol=1e-2), losses  # same batches, same targets
    stats = inspect_store(store)[0]
    assert len(stats["per_epoch"]["frame_entropy"]) == store.epochs
    assert sum(stats["histograms"]["argmax_frame"]["counts"]) == store.epochs * len(cv)


@pytest.mark.parametrize("mode", ["dense", "batches"])
def test_resume_gives_identical_arrays(data, tmp_path, mode):
    _teach(data, tmp_path / "full.zarr", mode, epochs=4)
    part = _teach(data, tmp_path / "part.zarr", mode, epochs=4, stop_after_units=2)
    assert not part["complete"]
    with pytest.raises(labelstore.integrity.StoreError, match="not finished"):
        labelstore.open(tmp_path / "part.zarr")
    assert labelstore.open(tmp_path / "part.zarr", allow_incomplete=True).progress() == (2, 4)
    with pytest.raises(labelstore.integrity.StoreError, match="resume"):
        _teach(data, tmp_path / "part.zarr", mode, epochs=4, overwrite=False)
    rest = _teach(data, tmp_path / "part.zarr", mode, epochs=4, overwrite=False, resume=True)
    assert rest["units"] == 2 and rest["complete"]
    a, b = labelstore.open(tmp_path / "full.zarr"), labelstore.open(tmp_path / "part.zarr")
    assert a.arrays.keys() == b.arrays.keys()
    for name in a.arrays:
        np.testing.assert_array_equal(a.read_array(name), b.read_array(name), err_msg=name)
    with pytest.raises(labelstore.integrity.StoreMismatch, match="epochs"):
        _teach(data, tmp_path / "part.zarr", mode, epochs=3, overwrite=False, resume=True)


def test_malformed_captions_named(data, tmp_path):
    lines = open(data["d"]["captions_train"]).read().splitlines()
    lines[4] = '{"video_id": "train_00001", "caption": '  # broken JSON on line 5
    bad = tmp_path / "caps.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(CaptionsError, match=r"caps\.jsonl:5: bad JSON"):
        teach_retrieval(str(tmp_path / "x.zarr"), data["videos"], bad, data["tok"], data["xclip"], data["policy"],
                        RetrievalTeachConfig(epochs=1))


def test_missing_video_named(data, tmp_path):
    recs = [json.loads(x) for x in open(data["d"]["captions_train"])]
    recs[7]["video_id"] = "train_09999"
    path = tmp_path / "caps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(CaptionsError, match=r"line 8: video 'train_09999'"):
        teach_retrieval(str(tmp_path / "x.zarr"), data["videos"], path, data["tok"], data["xclip"], data["policy"],
                        RetrievalTeachConfig(epochs=1))


def test_undecodable_video_named(data, tmp_path):
    vids = tmp_path / "videos"
    shutil.copytree(data["d"]["videos"], vids)
    (vids / "train_00002.mp4").write_bytes(b"not a video at all" * 50)
    with pytest.raises(VideoDecodeError, match="train_00002.mp4"):
        teach_retrieval(str(tmp_path / "x.zarr"), VideoFolder(vids), data["d"]["captions_train"], data["tok"],
                        data["xclip"], data["policy"], RetrievalTeachConfig(epochs=1))


def test_features_and_dim_mismatch_named(data, tmp_path):
    h5 = tmp_path / "feats.h5"
    names = bv.make_feature_h5(h5, n_videos=6, frames=(9, 20), dim=24)
    caps = tmp_path / "caps.jsonl"
    caps.write_text("".join(json.dumps({"video_id": n, "caption": f"clip {k} shows {w}"}) + "\n"
                            for k, n in enumerate(names) for w in ("red", "blue")))
    tok = Tokenizer.build(c.text for c in read_captions(caps))
    feats = FeatureH5(h5)
    wrong = CrossModalTeacher(len(tok), dim=16, feature_dim=32)
    with pytest.raises(ValueError, match=r"feats\.h5.*dimension 24.*expects 32"):
        teach_retrieval(str(tmp_path / "x.zarr"), feats, caps, tok, wrong, FrameSampler(4), RetrievalTeachConfig(epochs=1))
    with pytest.raises(ValueError, match=r"takes frames"):
        teach_retrieval(str(tmp_path / "x.zarr"), feats, caps, tok, data["xclip"], FrameSampler(4),
                        RetrievalTeachConfig(epochs=1))
    # the right dimension works, and replaying the stored indices gives the teacher's frame scores back
    right = CrossModalTeacher(len(tok), dim=16, feature_dim=24).eval()
    teach_retrieval(str(tmp_path / "f.zarr"), feats, caps, tok, right, FrameSampler(4),
                    RetrievalTeachConfig(epochs=2, mode="dense", batch_size=4))
    store = labelstore.open(tmp_path / "f.zarr")
    idx = store.read_array("aug/frames/indices", 1)
    x = torch.from_numpy(np.stack([feats.load_frames(v, idx[v]) for v in range(len(names))]))
    ids, mask = tok.encode_batch([str(t) for t in store.read_array("caption_text")], 32)
    cv = torch.as_tensor(store.read_array("caption_video").astype(np.int64))
    with torch.no_grad():
        fs = right.frame_text_scores(right.encode_video(x)[cv], right.encode_text(torch.from_numpy(ids), torch.from_numpy(mask)))
    np.testing.assert_allclose(store.read_array("frame_scores", 1).astype(np.float32), fs.softmax(-1).numpy(), atol=1e-3)


def test_embeddings_mode_needs_dual_encoder(data, tmp_path):
    with pytest.raises(ValueError, match="dual-encoder"):
        teach_retrieval(str(tmp_path / "x.zarr"), data["videos"], data["caps"], data["tok"], data["xclip"], data["policy"],
                        RetrievalTeachConfig(epochs=1, mode="embeddings"))


def test_plan_batches_distinct_videos_and_metrics():
    cv = np.repeat(np.arange(10), 3)  # 3 captions per video
    plan = plan_batches(cv, 8, seed=1, epoch=2)
    assert plan.shape == (3, 8)
    used = plan[plan >= 0]
    assert len(set(used.tolist())) == len(used)
    for row in plan:
        assert len(set(cv[row[row >= 0]].tolist())) == (row >= 0).sum()
    np.testing.assert_array_equal(plan, plan_batches(cv, 8, seed=1, epoch=2))
    sim = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 5.0, 1.0], [2.0, 1.0, 0.5]])  # 4 captions x 3 videos
    m = retrieval_metrics(sim, np.array([0, 1, 2, 0]))
    assert m["t2v_R@1"] == 50.0 and m["t2v_MdR"] == 1.5  # ranks 1, 2, 2, 1
    assert m["v2t_R@1"] == pytest.approx(100 / 3)  # video 0: caption 0 rank 1; video 1: rank 4; video 2: rank 2


# --------------------------------------------------------------------------------------
# TeachCLIP as the official code: frame scores at temperature 1, the CgT-only / FgT-only switch
# --------------------------------------------------------------------------------------


def _epoch_inputs(data, store, e):
    """(x [Nv, M, 3, H, W] the stored view of epoch e, ids, mask, caption_video) replayed from the store."""
    videos, policy = data["videos"], data["policy"]
    src = np.array([videos.ids.index(str(s)) for s in store.read_array("sample_id")])
    idx = store.read_array("aug/frames/indices", e)
    x = torch.stack([policy.render(videos.load_frames(int(src[v]), idx[v])) for v in range(len(src))])
    ids, mask = data["tok"].encode_batch([str(t) for t in store.read_array("caption_text")], store.attrs["text_max_len"])
    return x, torch.from_numpy(ids), torch.from_numpy(mask), torch.as_tensor(store.read_array("caption_video").astype(np.int64))


def test_frame_scores_are_softmax_of_cosines_at_temperature_one(data, tmp_path):
    """frame_scores = softmax over frames of cos(sentence, frame), recomputed from the teacher's own features."""
    _teach(data, tmp_path / "s.zarr", "dense", epochs=1)
    store = labelstore.open(tmp_path / "s.zarr")
    assert store.attrs["frame_score_temperature"] == 1.0
    x, ids, mask, cv = _epoch_inputs(data, store, 0)
    teacher = data["xclip"]
    with torch.no_grad():
        frames = teacher.temporal(teacher.frames(x))[cv]  # [Nc, M, D] frame features of each caption's video
        sent = teacher.text(ids, mask)  # [Nc, D]
        cos = torch.nn.functional.cosine_similarity(frames, sent[:, None, :], dim=-1)  # [Nc, M]
    stored = store.read_array("frame_scores", 0).astype(np.float32)
    np.testing.assert_allclose(stored, cos.softmax(-1).numpy(), atol=1e-3)
    old = (cos / teacher.tau).softmax(-1).numpy()  # the former convention (teacher relevance <t, f> / 0.1)
    assert np.abs(stored - old).max() > 0.05


def test_frame_temperature_is_recorded_and_used_online(data, tmp_path):
    """A store at T_f = 0.02 records it; the online teacher then gives the store's FgT targets (not T_f = 1);
    a store without the attribute is refused by name in the cache and online modes."""
    fgt = {}
    for T in (0.02, 1.0):
        path = tmp_path / f"t{T}.zarr"
        _teach(data, path, "dense", epochs=1, frame_temperature=T)
        store = labelstore.open(path)
        assert store.attrs["frame_score_temperature"] == T
        for mode in ("cache", "online"):
            torch.manual_seed(1)
            st = HolisticStudent(len(data["tok"]), dim=32)
            with torch.no_grad():
                st.pool.fc2.weight *= 30  # spread the student's frame logits: FgT then depends clearly on its targets
            h = train_retrieval_student(st, store, data["videos"], mode=mode, epochs=1, batch_size=8, max_steps=1,
                                        teacher=data["xclip"] if mode == "online" else None)
            fgt[T, mode] = h["parts"][0]["fgt"]  # the first step: the same student, so only the targets differ
    by_mode = max(abs(fgt[T, "cache"] - fgt[T, "online"]) for T in (0.02, 1.0))
    by_temperature = abs(fgt[0.02, "cache"] - fgt[1.0, "cache"])
    assert by_mode < 0.05 * by_temperature, fgt  # online targets = stored ones up to float16, at the store's T

    import zarr

    g = zarr.open_group(str(tmp_path / "t1.0.zarr"), mode="r+")
    attrs = g.attrs.asdict()
    del attrs["frame_score_temperature"]
    g.attrs.put(attrs)
    with pytest.raises(labelstore.errors.StoreError, match=r"attribute 'frame_score_temperature' is missing"):
        labelstore.open(tmp_path / "t1.0.zarr")  # an edited store is refused at open (metadata checksums) ...
    old = labelstore.open(tmp_path / "t1.0.zarr", check_metadata=False)  # ... and without that check, by name here
    for mode in ("cache", "online"):
        with pytest.raises(labelstore.errors.StoreError, match=r"t1\.0\.zarr.*'frame_score_temperature'"):
            train_retrieval_student(HolisticStudent(len(data["tok"]), dim=32), old, data["videos"], mode=mode, epochs=1,
                                    batch_size=8, max_steps=1, teacher=data["xclip"])
    h = train_retrieval_student(HolisticStudent(len(data["tok"]), dim=32), old, data["videos"], mode="infonce", epochs=1,
                                batch_size=8, max_steps=1)  # InfoNCE needs no frame scores
    assert h["steps"] == 1
    with pytest.raises(ValueError, match="frame_temperature"):
        _teach(data, tmp_path / "bad.zarr", "dense", epochs=1, frame_temperature=0.0)


def test_teaching_switch_removes_the_other_term():
    """Loss level: "cgt" ignores the frame targets and gives the frame logits no gradient; "fgt" ignores the
    teacher similarities; "both" is the full objective."""
    from labelstore.trainers.losses.teachclip import infonce_sym, teachclip_cgt_loss, teachclip_fgt_loss, teachclip_loss

    g = torch.Generator().manual_seed(0)
    S = (3 * torch.randn(6, 6, generator=g)).requires_grad_()
    w = torch.randn(6, M, generator=g).requires_grad_()
    Q, Q2 = 5 * torch.randn(6, 6, generator=g), 5 * torch.randn(6, 6, generator=g)
    Fs, Fs2 = torch.rand(6, M, generator=g).softmax(-1), torch.rand(6, M, generator=g).softmax(-1)
    nce, cgt, fgt = infonce_sym(S), teachclip_cgt_loss(S, Q), teachclip_fgt_loss(w, Fs)

    total, parts = teachclip_loss(S, w, [Q], [Fs], teaching="cgt")
    assert set(parts) == {"infonce", "cgt"}
    assert total.item() == pytest.approx((0.2 * nce + 1.0 * cgt).item(), rel=1e-6)
    assert teachclip_loss(S, w, [Q], [Fs2], teaching="cgt")[0].item() == total.item()
    gS, gw = torch.autograd.grad(total, [S, w], allow_unused=True)
    assert gw is None and gS.abs().sum() > 0

    total, parts = teachclip_loss(S, w, [Q], [Fs], teaching="fgt")
    assert set(parts) == {"infonce", "fgt"}
    assert total.item() == pytest.approx((0.2 * nce + 2.0 * fgt).item(), rel=1e-6)
    assert teachclip_loss(S, w, [Q2], [Fs], teaching="fgt")[0].item() == total.item()
    gS = torch.autograd.grad(total, S)[0]
    torch.testing.assert_close(gS, torch.autograd.grad(0.2 * infonce_sym(S), S)[0])  # nothing from CgT reaches S

    total, parts = teachclip_loss(S, w, [Q], [Fs])
    assert set(parts) == {"infonce", "cgt", "fgt"}
    assert total.item() == pytest.approx((0.2 * nce + cgt + 2.0 * fgt).item(), rel=1e-6)
    with pytest.raises(ValueError, match="teaching"):
        teachclip_loss(S, w, [Q], [Fs], teaching="none")


@pytest.mark.parametrize("teaching", ["cgt", "fgt"])
def test_trainer_teaching_switch(data, tmp_path, teaching):
    """Trainer level: the ablation's loss is 0.2 InfoNCE + its own term only, and the result does not depend
    on the dropped term's targets (a store whose other targets differ trains the same weights)."""
    _teach(data, tmp_path / "s.zarr", "dense", epochs=1)
    store = labelstore.open(tmp_path / "s.zarr")
    weights = {}
    for T in (1.0, 0.25):  # T changes the FgT targets only; the online teacher changes neither similarity
        runs = {}
        for mode in ("cache", "online"):
            torch.manual_seed(1)
            st = HolisticStudent(len(data["tok"]), dim=32)
            h = train_retrieval_student(st, store, data["videos"], mode=mode, teaching=teaching, epochs=1, batch_size=8,
                                        max_steps=3, teacher=data["xclip"] if mode == "online" else None)
            p = h["parts"][0]
            assert set(p) == {"infonce", teaching}
            assert h["loss"][0] == pytest.approx(0.2 * p["infonce"] + (1.0 if teaching == "cgt" else 2.0) * p[teaching],
                                                 rel=1e-5)
            runs[mode] = torch.cat([q.detach().flatten() for q in st.parameters()])
        weights[T] = runs
        if T == 1.0:
            _teach(data, tmp_path / "s.zarr", "dense", epochs=1, frame_temperature=0.25)
            store = labelstore.open(tmp_path / "s.zarr")
    if teaching == "cgt":  # CgT only: the frame targets (T_f) change nothing
        torch.testing.assert_close(weights[1.0]["cache"], weights[0.25]["cache"], rtol=0, atol=0)
    else:
        assert not torch.equal(weights[1.0]["cache"], weights[0.25]["cache"])
    with pytest.raises(ValueError, match="teaching"):
        train_retrieval_student(HolisticStudent(len(data["tok"]), dim=32), store, data["videos"], teaching="both-ish",
                                epochs=1, max_steps=1)


def test_student_decodes_in_workers(data, tmp_path):
    """The student's frames are decoded and rendered by DataLoader workers (RetrievalReplay): 0 and 2
    workers train the same weights, bit for bit, over epochs that wrap around the store's (an
    embeddings store: its similarity block is made in the training process)."""
    _teach(data, tmp_path / "w.zarr", "embeddings")
    store = labelstore.open(tmp_path / "w.zarr")
    weights, losses = {}, {}
    for workers in (0, 2):
        torch.manual_seed(1)
        st = HolisticStudent(len(data["tok"]), dim=32)
        h = train_retrieval_student(st, store, data["videos"], mode="cache", epochs=3, batch_size=8, num_workers=workers)
        weights[workers] = torch.cat([p.detach().flatten() for p in st.parameters()])
        losses[workers] = (h["loss"], h["parts"])
    assert h["steps"] == 3 * (len(data["caps"]) // 8)
    assert losses[0] == losses[2] and torch.equal(weights[0], weights[2])
