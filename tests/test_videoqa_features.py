"""VideoQA token features in the store (`teach --task videoqa --features NAME`): real stores on disk, real
`labelstore` subprocesses.

Checks: teach --features (int8) + verify through the CLI, the stored tokens within the int8 bound written
out here against the teacher's per-frame tokens computed by a plain torch hook; a damaged token fails
verify; `train --loss token-mse` trains for an epoch (finite loss, metrics written) and a store without
features is one `error:` line; a store left incomplete by rank 0 of 2, finished by resume, equals the
uninterrupted one array by array; the token loss with fewer student tokens equals its formula.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import assert_same_arrays

import labelstore
from labelstore.pipeline import builtin_video as bv
from labelstore.pipeline import features
from labelstore.pipeline.teach_videoqa import VideoQATeachConfig, teach_videoqa
from labelstore.pipeline.text import AnswerVocab, Tokenizer, read_questions
from labelstore.pipeline.video import FrameSampler, VideoFolder, VideoPolicy
from labelstore.pipeline.videoqa_data import ClipCache, prepare_questions
from labelstore.trainers.spec import load_model, save_checkpoint
from labelstore.trainers.videoqa_models import VideoQAClassifier

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
M, SIZE, DIM = 8, 32, 16
SPEC = "labelstore.trainers.videoqa_models:VideoQAClassifier"


def cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "labelstore", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if check:
        assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The small built-in VideoQA fixture of test_videoqa_cli.py and an int8 token store taught by the CLI."""
    root = tmp_path_factory.mktemp("vqa_feat")
    d = bv.make_videoqa_dataset(root / "data", n_train=16, n_test=4, frames=8, size=SIZE, seed=0)
    qs = read_questions(d["questions_train"])
    tok = Tokenizer.build(q.question for q in qs)
    vocab = AnswerVocab.build(a for q in qs for a in (q.answers or [q.answer]))
    kwargs = dict(num_tokens=len(tok), num_answers=len(vocab), dim=DIM, width=8, num_frames=M, frame_size=SIZE,
                  dropout=0.3, question_encoder="mean")
    torch.manual_seed(0)
    ckpt = root / "teacher.pt"
    save_checkpoint(ckpt, VideoQAClassifier(**kwargs), SPEC, kwargs,
                    extra={"tokenizer": tok.to_json(), "vocab": vocab.to_json(), "num_frames": M, "frame_size": SIZE})
    teach = ["teach", "--task", "videoqa", "--data", d["videos"], "--questions", d["questions_train"], "--teacher", ckpt,
             "--epochs", "2", "--mc-passes", "2", "--batch-size", "16", "--seed", "1", "--quiet"]
    store = root / "int8.zarr"
    cli(*teach, "--out", store, "--features", "tokens", "--feature-codec", "int8")
    return {**d, "root": root, "tok": tok, "vocab": vocab, "ckpt": ckpt, "store": store, "teach": teach}


def teacher_tokens(env, epoch: int, rows: np.ndarray) -> np.ndarray:
    """float32 [n, m, D]: the teacher's module `tokens` output on the replayed frames, by a plain torch hook."""
    model = load_model(str(env["ckpt"])).eval()
    got = []
    model.tokens.register_forward_hook(lambda mod, args, out: got.append(out.detach()))
    store = labelstore.open(env["store"])
    videos = VideoFolder(env["videos"])
    qa = prepare_questions(videos, env["questions_train"], env["tok"], env["vocab"], strict_answers=False)
    fi = store.read_array("aug/frames/indices", epoch=epoch)[rows]
    x, vi = ClipCache(videos).shared_views(VideoPolicy(FrameSampler(num_frames=M), (SIZE, SIZE)), qa.video_rows[rows], fi)
    with torch.no_grad():
        model(x, torch.as_tensor(qa.q_ids[rows]), torch.as_tensor(qa.q_mask[rows]), vi)
    return got[0].numpy()


def test_teach_tokens_within_the_int8_bound_and_verify(env):
    store = labelstore.open(env["store"])
    N = store.num_samples
    a = store.attrs["features"]
    assert (a["name"], a["module"], a["codec"], a["tokens"], a["dim"]) == ("tokens", "tokens", "int8", M, DIM)
    assert store.attrs["teach_config"]["features"] == "tokens"
    assert store.group["features/values"].shape == (2, N, M, DIM) and store.group["features/values"].dtype == np.int8
    assert store.group["features/scale"].shape == (2, N) and store.group["features/scale"].dtype == np.float32
    assert not any(k.startswith("features") for k in store.read(0, np.arange(3)))  # read on request only

    rows = np.arange(N)
    f = teacher_tokens(env, 1, rows)  # [N, m, D]
    got = features.read_features(store, 1, rows)  # [N, m, D]
    bound = np.abs(f).max((1, 2), keepdims=True) / 254  # int8, one scale per view: max|f| / 127 / 2
    assert (np.abs(got - f) <= bound * (1 + 2**-20) + 2**-9 * np.abs(f).max((1, 2), keepdims=True)).all()
    scale = store.read_array("features/scale", epoch=1)
    np.testing.assert_allclose(scale, np.abs(f).max((1, 2)) / 127, rtol=1e-4)

    r = json.loads(cli("verify", env["store"], "--data", env["videos"], "--teacher", env["ckpt"], "--samples", "16",
                       "--json").stdout)
    assert r["ok"] and r["features_checked"] == 16 and r["feature_mismatches"] == 0 and r["teacher_mismatches"] == 0


def test_damaged_token_fails_verify(env):
    bad = env["root"] / "damaged.zarr"
    shutil.copytree(env["store"], bad)
    arr = zarr.open_group(str(bad), mode="r+")["features/values"]
    v = arr[...]
    v[:, :, 0, 0] = np.where(v[:, :, 0, 0] > 60, 0, 127)  # one value of every view, far outside the bound
    arr[...] = v
    p = cli("verify", bad, "--data", env["videos"], "--teacher", env["ckpt"], "--samples", "8", check=False)
    assert p.returncode == 1 and "FAILED" in p.stdout
    assert "features recomputed on 8 views: 8 outside the codec's bound" in p.stdout


def test_train_token_mse_one_epoch(env, tmp_path):
    out = tmp_path / "run"
    cli("train", "--task", "videoqa", "--store", env["store"], "--data", env["videos"], "--questions",
        env["questions_train"], "--eval-questions", env["questions_test"], "--loss", "token-mse", "--epochs", "1",
        "--batch-size", "32", "--out", out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "token-mse" and len(m["loss"]) == 1 and np.isfinite(m["loss"]).all()
    assert 0 <= m["acc_annotated"] <= m["acc_any"] <= 1
    load_model(str(out / "student.pt"))  # the student alone (the projector is not part of it)


def test_token_mse_without_features_is_one_error_line(env, tmp_path):
    plain = tmp_path / "plain.zarr"
    cli(*env["teach"], "--out", plain)
    assert "features" not in labelstore.open(plain).attrs and "features/values" not in labelstore.open(plain).arrays
    p = cli("train", "--task", "videoqa", "--store", plain, "--data", env["videos"], "--questions",
            env["questions_train"], "--loss", "token-mse", "--epochs", "1", "--out", tmp_path / "run", check=False)
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert str(plain) in lines[0] and "teach --task videoqa --features" in lines[0]
    assert not (tmp_path / "run").exists()
    p = cli(*env["teach"], "--out", tmp_path / "x.zarr", "--feature-codec", "int8", check=False)
    assert p.returncode == 2 and "--feature-codec int8 goes with --features NAME" in p.stderr


def test_rank_split_store_resumed_equals_uninterrupted(env, tmp_path):
    """Rank 0 of 2 writes half the work units; resume finishes them; equal to one uninterrupted run."""
    videos = VideoFolder(env["videos"])
    teacher = load_model(str(env["ckpt"]))
    cfg = VideoQATeachConfig(epochs=2, seed=3, mc_passes=2, batch_size=8, shard_rows=16, chunk_rows=8,
                             frame_size=(SIZE, SIZE), strict_answers=False, features="tokens", feature_codec="int8")
    args = (videos, env["questions_train"], env["tok"], env["vocab"], teacher, FrameSampler(num_frames=M), cfg)
    whole, part = tmp_path / "whole.zarr", tmp_path / "part.zarr"
    assert teach_videoqa(str(whole), *args)["complete"]
    assert not teach_videoqa(str(part), *args, rank=0, world_size=2)["complete"]
    flags = zarr.open_group(str(part), mode="r")["progress"][...]
    assert 0 < flags.sum() < flags.size
    assert teach_videoqa(str(part), *args, resume=True)["complete"]
    assert_same_arrays(part, whole)  # every array, the tokens and their scales included, bitwise


def test_token_loss_with_fewer_student_tokens(env):
    """A student module with a [B, D_s] output (Q_s = 1) against the teacher's m tokens: the tokens are
    averaged to one, L_tok = mean_{b,d} (P(s)_{b,d} - mean_q t_{b,q,d})^2."""
    from labelstore.trainers.videoqa_models import videoqa_student
    from labelstore.trainers.videoqa_tokens import TokenStudent

    store = labelstore.open(env["store"])
    torch.manual_seed(0)
    student = videoqa_student(len(env["tok"]), len(env["vocab"]), num_frames=M, frame_size=SIZE).eval()
    model = TokenStudent(student, store, M, (SIZE, SIZE), 16, module="answer_head.2")
    assert model.num_tokens == 1 and model.projector.in_features == 32 and model.projector.out_features == DIM
    videos = VideoFolder(env["videos"])
    qa = prepare_questions(videos, env["questions_train"], env["tok"], env["vocab"], strict_answers=False)
    rows = np.arange(5)
    fi = store.read_array("aug/frames/indices", epoch=0)[rows]
    x, vi = ClipCache(videos).shared_views(VideoPolicy(FrameSampler(num_frames=M), (SIZE, SIZE)), qa.video_rows[rows], fi)
    q_ids, q_mask = torch.as_tensor(qa.q_ids[rows]), torch.as_tensor(qa.q_mask[rows])
    model(x, q_ids, q_mask, vi)
    loss = model.token_loss(0, rows)
    s = student.answer_head[:3](student.features(x, q_ids, q_mask, vi))  # [B, 32]: the ReLU after the first Linear
    t = torch.from_numpy(features.read_features(store, 0, rows)).mean(1)  # [B, D]
    want = ((model.projector(s) - t) ** 2).mean()
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert model.projector.weight.grad.abs().sum() > 0


def test_token_arrays_match_documented_format(env):
    """The feature rows of docs/store-format.md, section "Arrays (task `videoqa`)": dimensions, shapes, dtypes."""
    import re

    from test_store import _doc_section, _table_rows

    doc = {r[0].strip("`"): r for r in _table_rows(_doc_section("## Arrays (task `videoqa`)"))
           if r[0].startswith("`features/")}
    store = labelstore.open(env["store"])
    assert set(doc) == {n for n in store.arrays if n.startswith("features/")} == {"features/values", "features/scale"}
    sym = {"E": 2, "N": store.num_samples, "Q": M, "D": DIM}
    for name, (_, dims, shape, dtype, *_) in doc.items():
        arr = store.group[name]
        assert tuple(arr.metadata.dimension_names) == tuple(d.strip() for d in dims.strip("`").split(",")), name
        assert arr.shape == tuple(sym[s.strip()] for s in shape.split("×")), name
        assert arr.dtype.name in re.findall(r"`(\w+)`", dtype), (name, arr.dtype, dtype)
