"""`labelstore inspect --report` on video stores: retrieval heat maps / similarity block, VideoQA answer rankings.

Small real stores written by the real teacher stages (as in test_retrieval_cli.py / test_videoqa_cli.py);
the report runs through the real CLI, its numbers are checked against the arrays read with zarr.
"""

from __future__ import annotations

import html

import numpy as np
import pytest
import torch
from conftest import read_arrays
from test_cli import run
from test_report import _pngs

import labelstore
from labelstore.pipeline import builtin_video as bv
from labelstore.pipeline.retrieval_inspect import retrieval_details
from labelstore.pipeline.text import AnswerVocab, Tokenizer, read_captions, read_questions
from labelstore.pipeline.videoqa_inspect import videoqa_details
from labelstore.trainers.retrieval_cli import TEACHER_SPEC, cli_teach_retrieval, save_retrieval_checkpoint
from labelstore.trainers.retrieval_models import CrossModalTeacher
from labelstore.trainers.spec import save_checkpoint
from labelstore.trainers.videoqa_cli import cli_teach_videoqa
from labelstore.trainers.videoqa_models import VideoQAClassifier

torch.set_num_threads(1)
M, SIZE = 8, 32


@pytest.fixture(scope="module")
def retrieval_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep_ret")
    d = bv.make_retrieval_dataset(root / "data", n_train=16, n_test=2, frames=M, size=SIZE, seed=1)
    tok = Tokenizer.build(c.text for c in read_captions(d["captions_train"]))
    kw = {"vocab_size": len(tok), "dim": 32, "frame_size": SIZE, "num_frames": M}
    torch.manual_seed(0)
    ckpt = save_retrieval_checkpoint(root / "teacher.pt", CrossModalTeacher(**kw), TEACHER_SPEC, kw, tok, M, SIZE)
    stores = {}
    for mode in ("dense", "batches"):
        stores[mode] = root / f"{mode}.zarr"
        cli_teach_retrieval(stores[mode], d["videos"], d["captions_train"], ckpt, epochs=2, batch_size=8, mode=mode,
                            progress=False)
    return stores


@pytest.fixture(scope="module")
def videoqa_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep_vqa")
    d = bv.make_videoqa_dataset(root / "data", n_train=16, n_test=2, frames=M, size=SIZE, seed=0)
    qs = read_questions(d["questions_train"])
    tok = Tokenizer.build(q.question for q in qs)
    vocab = AnswerVocab.build(a for q in qs for a in (q.answers or [q.answer]))
    kw = dict(num_tokens=len(tok), num_answers=len(vocab), dim=16, width=8, num_frames=M, frame_size=SIZE,
              dropout=0.3, question_encoder="mean")
    torch.manual_seed(0)
    ckpt = root / "teacher.pt"
    save_checkpoint(ckpt, VideoQAClassifier(**kw), "labelstore.trainers.videoqa_models:VideoQAClassifier", kw,
                    extra={"tokenizer": tok.to_json(), "vocab": vocab.to_json(), "num_frames": M, "frame_size": SIZE})
    store = root / "store.zarr"
    cli_teach_videoqa(store, d["videos"], d["questions_train"], str(ckpt), epochs=2, num_frames=M, frame_size=SIZE,
                      top_k=8, mc_passes=2, batch_size=32, seed=1, progress=False)
    return store


@pytest.mark.parametrize("mode", ["dense", "batches"])
def test_retrieval_report(retrieval_store, mode, tmp_path):
    path = retrieval_store[mode]
    out = tmp_path / "r.html"
    run("inspect", path, "--report", out, "--quiet")
    text = out.read_text()
    figs = _pngs(text)
    assert list(figs) == ["per_epoch", "frame_scores", "similarity_block", "argmax_frame"]
    for alt, im in figs.items():
        assert im.std() > 10, alt

    a = read_arrays(path)
    d = retrieval_details(labelstore.open(path), videos=3, block=12)
    cv, ids = a["caption_video"], a["sample_id"]
    assert len(d["heatmaps"]) == 3
    for h in d["heatmaps"]:
        v = ids.tolist().index(h["video"])
        caps = np.flatnonzero(cv == v)
        np.testing.assert_array_equal(np.asarray(h["scores"]), a["frame_scores"][0, caps].astype(np.float64))
        np.testing.assert_allclose(np.asarray(h["scores"]).sum(1), 1.0, atol=1e-2)  # a softmax over the frames
        assert h["frames"] == a["aug/frames/indices"][0, v].tolist()
        for c in caps:  # the captions table lists every caption of the heat maps
            assert f"<td>{html.escape(str(a['caption_text'][c]))}</td>" in text
    b = d["block"]
    s = np.asarray(b["similarity"])
    rows = [a["caption_text"].tolist().index(c) for c in b["captions"]]
    assert [ids[cv[c]] for c in rows] == b["videos"]  # column j = the video of caption j: matches on the diagonal
    if mode == "dense":
        cols = [ids.tolist().index(v) for v in b["videos"]]
        np.testing.assert_array_equal(s, a["similarity"][0][np.ix_(rows, cols)].astype(np.float64))
    else:
        n = len(b["captions"])
        assert a["batch_captions"][0, 0, :n].tolist() == rows
        np.testing.assert_array_equal(s, a["batch_similarity"][0, 0, :n, :n].astype(np.float64))


def test_videoqa_report(videoqa_store, tmp_path):
    out = tmp_path / "q.html"
    run("inspect", videoqa_store, "--report", out, "--quiet")
    text = out.read_text()
    figs = _pngs(text)
    assert list(figs) == ["per_epoch", "answer_distributions"]
    for alt, im in figs.items():
        assert im.std() > 10, alt

    a = read_arrays(videoqa_store)
    store = labelstore.open(videoqa_store)
    names = store.attrs["classes"]
    d = videoqa_details(store, n=3)
    gt = a["gt"].astype(int)
    valid = gt >= 0
    idx = a["topk_indices"].astype(int)  # [E, N, K]
    K = idx.shape[-1]
    hit = idx == gt[None, :, None]
    rank = np.where(hit.any(-1), hit.argmax(-1), K)[:, valid]
    assert d["gt_rank_hist"]["counts"] == np.bincount(rank.ravel(), minlength=K + 1).tolist()
    gp = a["gt_prob"].astype(np.float64)[:, valid]
    assert d["gt_prob_hist"]["counts"] == np.histogram(gp, bins=20, range=(0, 1))[0].tolist()
    order = np.flatnonzero(valid)[np.argsort(a["gt_prob"][0][valid].astype(np.float64), kind="stable")]
    assert [r["row"] for r in d["rankings"][:3]] == order[:3].tolist()
    for r in d["rankings"]:
        q = r["row"]
        want = [(names[int(c)], float(p)) for c, p in zip(a["topk_indices"][0, q, :5], a["topk_values"][0, q, :5])]
        assert r["top"] == want and r["answer"] == names[gt[q]]
        # the HTML table row: picked by, question, video, annotated answer, gt_prob, ranked answers (probability)
        cells = [r["kind"], str(q), r["video"], r["answer"], f"{r['gt_prob']:.4f}", *(f"{n} ({p:.3f})" for n, p in want)]
        assert "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" in text
