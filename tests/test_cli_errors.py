"""Every user error through the real `labelstore` CLI: one `error:` line naming the item, exit 2, no traceback.

Also: warnings for likely mistakes (untrained built-in teacher, MC passes without dropout, tiny top-k
mass), `verify` listing every damaged array and carrying on, and `--json` printing only JSON.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import make_teacher_checkpoint
from test_cli import assert_user_error, run

SMALL = ["--epochs", "1", "--top-k", "3", "--image-size", "16", "--shard-samples", "8", "--chunk-samples", "8",
         "--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    w = tmp_path_factory.mktemp("errs")
    p = run("data", "shapes", "--out", w / "d", "--train", "24", "--test", "2", "--json")
    d = json.loads(p.stdout)  # --json: nothing but JSON on stdout
    ckpt = make_teacher_checkpoint(w / "t.pt")
    store = w / "s.zarr"
    run("teach", "--data", d["train"], "--teacher", ckpt, "--out", store, "--mc-passes", "2", *SMALL)
    (w / "bad_teachers.py").write_text(textwrap.dedent("""
        def broken(num_classes=10):
            raise RuntimeError("weights server unreachable")
    """))
    (w / "fails_import.py").write_text("import no_such_dependency_xyz\n")
    return {"w": w, "data": d["train"], "ckpt": ckpt, "store": store}


def teach(env, *args, teacher=None, out="x.zarr"):
    return run("teach", "--data", env["data"], "--teacher", teacher or env["ckpt"], "--out", env["w"] / out,
               *SMALL, *args, check=False)


def test_unknown_model_name(env):
    assert_user_error(teach(env, teacher="resnet-zz"), "resnet-zz", "unknown model spec")
    assert not (env["w"] / "x.zarr").exists()


def test_builtin_name_as_teacher_needs_opt_in(env):
    assert_user_error(teach(env, teacher="cnn-micro"), "cnn-micro", "--allow-untrained-teacher")
    p = run("verify", env["store"], "--data", env["data"], "--teacher", "cnn-tiny", check=False)
    assert_user_error(p, "cnn-tiny", "untrained")
    # with the opt-in it runs, and says what is likely wrong: identical MC passes, little top-k mass
    p = teach(env, "--allow-untrained-teacher", "--mc-passes", "2", "--json", teacher="cnn-micro", out="u.zarr")
    assert p.returncode == 0, p.stderr
    assert "no dropout" in p.stderr and "every MC pass will be identical" in p.stderr
    assert "top-3 mass" in p.stderr
    assert json.loads(p.stdout)["complete"] is True


def test_unknown_policy(env):
    assert_user_error(teach(env, "--policy", "crop-flipp"), "--policy", "crop-flipp", "crop-flip-jitter")


def test_module_callable_that_fails_to_import(env):
    assert_user_error(teach(env, teacher="no_such_pkg_xyz:build"), "no_such_pkg_xyz:build", "cannot import")


def test_module_callable_that_raises(env, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(env["w"]))  # run() prepends the repo root to this
    assert_user_error(teach(env, teacher="fails_import:build"), "fails_import:build", "no_such_dependency_xyz")
    assert_user_error(teach(env, teacher="bad_teachers:broken"), "bad_teachers:broken", "weights server unreachable")
    assert_user_error(teach(env, teacher="bad_teachers:nope"), "bad_teachers:nope", "'nope'")


def test_missing_data_dir(env):
    p = run("teach", "--data", env["w"] / "nowhere", "--teacher", env["ckpt"], "--out", env["w"] / "x.zarr", *SMALL,
            check=False)
    assert_user_error(p, "nowhere")
    p = run("verify", env["store"], "--data", env["w"] / "nowhere", check=False)
    assert_user_error(p, "nowhere")


def test_malformed_captions_and_questions_and_empty_video_dir(env):
    w = env["w"]
    (w / "vids").mkdir(exist_ok=True)
    (w / "caps.jsonl").write_text('{"video_id": "a", "caption": "ok"}\nnot json\n')
    p = run("teach", "--task", "retrieval", "--data", w / "vids", "--captions", w / "caps.jsonl", "--teacher",
            env["ckpt"], "--out", w / "r.zarr", "--quiet", check=False)
    assert_user_error(p, "caps.jsonl:2")
    p = run("teach", "--task", "videoqa", "--data", w / "vids", "--questions", w / "caps.jsonl", "--teacher",
            env["ckpt"], "--out", w / "q.zarr", "--quiet", check=False)
    assert_user_error(p, "vids")


def test_not_a_store(env):
    for cmd in (["info", env["data"]], ["inspect", env["data"]], ["verify", env["data"], "--data", env["data"]],
                ["train", "--store", env["data"], "--data", env["data"], "--out", env["w"] / "o"]):
        assert_user_error(run(*cmd, check=False), "no label store")


def test_unfinished_store(env):
    out = env["w"] / "half.zarr"
    p = run("teach", "--data", env["data"], "--teacher", env["ckpt"], "--out", out, "--world-size", "2", "--rank", "0",
            *SMALL, check=False)
    assert p.returncode == 0, p.stderr
    assert_user_error(run("inspect", out, check=False), "half.zarr")
    assert_user_error(run("train", "--store", out, "--data", env["data"], "--out", env["w"] / "o", check=False),
                      "half.zarr")
    assert json.loads(run("info", out, "--json").stdout)["state"] != "complete"


def test_bad_option_combinations(env):
    p = run("train", "--store", env["store"], "--data", env["data"], "--out", env["w"] / "o", "--mode", "online",
            check=False)
    assert_user_error(p, "--online-teacher")
    p = run("teach", "--task", "retrieval", "--data", env["data"], "--teacher", env["ckpt"], "--out",
            env["w"] / "r.zarr", check=False)
    assert_user_error(p, "--captions")
    p = run("train", "--store", env["store"], "--data", env["data"], "--out", env["w"] / "o", "--loss", "radi",
            check=False)
    assert_user_error(p, "--loss radi")


def _flip_byte(store: Path, array: str) -> None:
    shard = sorted(p for p in (store / array / "c").rglob("*") if p.is_file())[0]
    b = bytearray(shard.read_bytes())
    b[len(b) // 2] ^= 0xFF
    shard.write_bytes(bytes(b))


def test_damaged_store(env):
    bad = env["w"] / "bad.zarr"
    shutil.copytree(env["store"], bad)
    _flip_byte(bad, "topk_values")
    _flip_byte(bad, "gt_prob")
    p = run("verify", bad, "--data", env["data"], "--json", check=False)
    assert p.returncode == 1, p.stderr
    r = json.loads(p.stdout)  # the full report, and nothing else, on stdout
    assert r["ok"] is False
    damaged = sorted(line.split("[")[0] for line in r["chunk_problems"])
    assert damaged == ["gt_prob", "topk_values"], r["chunk_problems"]
    assert all("0:" in line for line in r["chunk_problems"])  # each names its row range
    assert r["digests_checked"] > 0 or r["replay_problems"]  # it carried on past the damage
    p = run("verify", bad, "--data", env["data"], check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "topk_values[" in p.stdout and "gt_prob[" in p.stdout and "FAILED" in p.stdout
    assert_user_error(run("inspect", bad, check=False), "bad.zarr", "damaged", "topk_values[")
    assert_user_error(run("train", "--store", bad, "--data", env["data"], "--out", env["w"] / "o", "--epochs", "1",
                          check=False), "bad.zarr", "verify")


@pytest.mark.parametrize("args, words", [
    (["teach", "--epochs", "abc"], ["labelstore teach", "--epochs", "'abc' is not a valid integer"]),
    (["teach", "--teacher", "t.pt", "--out", "x.zarr"], ["labelstore teach", "Missing option", "--data"]),
    (["teach", "--task", "segmentation"], ["--task", "'segmentation'"]),
    (["inspect", "s.zarr", "--bogus"], ["labelstore inspect", "No such option", "--bogus"]),
    (["info"], ["labelstore info", "Missing argument", "STORE_PATH"]),
    (["teachh"], ["No such command", "'teachh'"]),
    (["train", "--store", "s.zarr", "--data", "d", "--out", "o", "--crop-scale", "1"], ["--crop-scale"]),
])
def test_click_usage_errors(args, words):
    """Bad option values, missing options / arguments, unknown options / commands: one line, no usage dump."""
    line = assert_user_error(run(*args, check=False), *words)
    assert "Usage:" not in line


def test_help_and_version_still_exit_0():
    assert run("--version").stdout.startswith("labelstore, version")
    assert "Usage: labelstore inspect" in run("inspect", "--help").stdout


@pytest.fixture(scope="module")
def videos(env) -> Path:
    from labelstore.pipeline import builtin_video as bv

    d = bv.make_videoqa_dataset(env["w"] / "vqa", n_train=3, n_test=1, frames=4, size=16, seed=0)
    return Path(d["videos"])


VQA_TEACHER = "labelstore.trainers.videoqa_models:VideoQAClassifier"


@pytest.fixture(scope="module")
def ret_ckpt(env) -> str:
    import torch

    from labelstore.pipeline.text import Tokenizer
    from labelstore.trainers.retrieval_cli import TEACHER_SPEC, save_retrieval_checkpoint
    from labelstore.trainers.retrieval_models import CrossModalTeacher

    tok = Tokenizer.build(["a red square"])
    kw = {"vocab_size": len(tok), "dim": 16, "frame_size": 16, "num_frames": 4}
    torch.manual_seed(0)
    return save_retrieval_checkpoint(env["w"] / "ret.pt", CrossModalTeacher(**kw), TEACHER_SPEC, kw, tok, 4, 16)


@pytest.mark.parametrize("name, text, words", [
    ("q_bad.jsonl", '{"video_id": "train_00000.mp4", "question": "what?", "answer": "red"}\n{oops\n', ["q_bad.jsonl:2"]),
    ("q_cols.csv", "video_id,question\ntrain_00000.mp4,what colour?\n", ["q_cols.csv", "answer"]),
    ("q_answers.jsonl", '{"video_id": "train_00000.mp4", "question": "what?", "answer": "red", "answers": ["blue"]}\n',
     ["q_answers.jsonl:1", "'red'"]),
    ("q_video.jsonl", '{"video_id": "no_such_video.mp4", "question": "what?", "answer": "red"}\n',
     ["q_video.jsonl", "no_such_video.mp4"]),
    ("q_empty.jsonl", "", ["q_empty.jsonl", "no questions"]),
])
def test_malformed_questions_file_through_teach(env, videos, name, text, words):
    (env["w"] / name).write_text(text)
    p = run("teach", "--task", "videoqa", "--data", videos, "--questions", env["w"] / name, "--teacher", VQA_TEACHER,
            "--out", env["w"] / "qa.zarr", "--epochs", "1", "--quiet", check=False)
    assert_user_error(p, *words)
    assert not (env["w"] / "qa.zarr").exists()


@pytest.mark.parametrize("name, text, words", [
    ("c_bad.csv", "video_id,caption\ntrain_00000.mp4,a red square\ntrain_00001.mp4\n", ["c_bad.csv:3"]),
    ("c_cols.jsonl", '{"video": "train_00000.mp4", "caption": "a red square"}\n', ["c_cols.jsonl:1", "video_id"]),
    ("c_video.jsonl", '{"video_id": "missing.mp4", "caption": "a red square"}\n', ["c_video.jsonl", "missing.mp4"]),
    ("c_none.jsonl", None, ["c_none.jsonl", "does not exist"]),
])
def test_malformed_captions_file_through_teach(env, videos, ret_ckpt, name, text, words):
    if text is not None:
        (env["w"] / name).write_text(text)
    p = run("teach", "--task", "retrieval", "--data", videos, "--captions", env["w"] / name, "--teacher",
            ret_ckpt, "--out", env["w"] / "ret.zarr", "--epochs", "1", "--quiet", check=False)
    assert_user_error(p, *words)
    assert not (env["w"] / "ret.zarr").exists()


def test_unknown_teacher_for_a_video_task(env, videos):
    (env["w"] / "c_ok.jsonl").write_text('{"video_id": "train_00000.mp4", "caption": "a red square"}\n')
    p = run("teach", "--task", "retrieval", "--data", videos, "--captions", env["w"] / "c_ok.jsonl", "--teacher",
            "no-such-model", "--out", env["w"] / "ret.zarr", "--quiet", check=False)
    assert_user_error(p, "teacher 'no-such-model'", "unknown model spec")


def test_inspect_gallery_errors(env, videos):
    r = env["w"] / "r.html"
    assert_user_error(run("inspect", env["store"], "--data", env["data"], check=False), "--data", "--report")
    p = run("data", "shapes", "--out", env["w"] / "other", "--train", "12", "--test", "1", "--json")
    other = json.loads(p.stdout)["train"]
    assert_user_error(run("inspect", env["store"], "--report", r, "--data", other, check=False),
                      "s.zarr", "built from another dataset")
    assert_user_error(run("inspect", env["store"], "--report", r, "--data", env["w"] / "nowhere", check=False), "nowhere")


def test_json_on_bench():
    p = run("bench", "--images", "16", "--only-image", "--json")
    r = json.loads(p.stdout)  # stdout: the JSON alone; the log went to stderr
    assert r["images"] == 16 and r["teacher_stage"]["ratio"] > 0
    assert "1. teacher stage" in p.stderr
