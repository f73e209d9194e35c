"""The adversary's list (issue 20, findings 5-10), one row per case, through the real CLI in subprocesses.

Each row: the invocation, the exit code, the words of its one `error:` line; no traceback, and nothing
that was there before (the shared dataset, the shared store, a file in the way) is changed or lost.
One small dataset and one small store serve every row (module fixtures).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_same_arrays, make_teacher_checkpoint
from test_cli import ROOT, assert_user_error, run

SMALL = ["--epochs", "1", "--top-k", "3", "--image-size", "16", "--shard-samples", "8", "--chunk-samples", "8",
         "--workers", "1", "--quiet"]


def tree_digest(path: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `path` (or of `path` itself)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)) if p != path else ".": hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    from labelstore.pipeline.images import make_shapes_dataset

    w = tmp_path_factory.mktemp("adversary")
    data, _ = make_shapes_dataset(w / "d", n_train=24, n_test=2, seed=0)
    ckpt = make_teacher_checkpoint(w / "t.pt")
    store = w / "s.zarr"
    run("teach", "--data", data, "--teacher", ckpt, "--out", store, *SMALL)
    (w / "shape_teachers.py").write_text(textwrap.dedent("""
        import torch

        class Pooled(torch.nn.Module):
            def __init__(self, num_classes=10, out="ok"):
                super().__init__()
                self.fc, self.out = torch.nn.Linear(3, num_classes), out

            def forward(self, x):  # [B, 3, H, W] -> [B, C], or the wrong shape asked for
                y = self.fc(x.mean((2, 3)))
                return {"ok": y, "flat": y[:, 0], "extra": y[:, :, None]}[self.out]

        def flat(num_classes=10):
            return Pooled(num_classes, "flat")

        def extra(num_classes=10):
            return Pooled(num_classes, "extra")
    """))
    (w / "a_file").write_text("keep me\n")
    return {"w": w, "data": data, "ckpt": ckpt, "store": store}


def _copy_data(env, name: str) -> Path:
    d = env["w"] / name
    if not d.exists():
        shutil.copytree(env["data"], d)
    return d


def _non_utf8(env) -> Path:
    d = _copy_data(env, "d_bytes")
    first = sorted((d / "circle").iterdir())[0]
    os.rename(os.fsencode(first), os.fsencode(d / "circle") + b"/bad\xff.png")
    return d


def _symlink_loop(env) -> Path:
    d = _copy_data(env, "d_loop")
    (d / "circle" / "loop").symlink_to("..")
    return d


def _empty_class(env) -> Path:
    d = _copy_data(env, "d_empty")
    (d / "zzz_empty").mkdir()
    return d


def _int32_image(env) -> Path:
    """A file named .png holding 32-bit integer pixels (a TIFF): no 8-bit scale is implied."""
    from PIL import Image

    d = _copy_data(env, "d_int32")
    Image.fromarray(np.full((20, 20), 70_000, np.int32), mode="I").save(d / "circle" / "deep.png", format="TIFF")
    return d


def _flipped_progress(env) -> Path:
    """An unfinished store (the state `info` reads the progress flags in) with a flipped byte in one
    progress chunk. A complete store's state says every unit is done, and info does not read them."""
    bad = env["w"] / "bad_progress.zarr"
    if not bad.exists():
        shutil.copytree(env["store"], bad)
        zarr.open_group(str(bad), mode="r+").attrs["state"] = "running"
        chunk = sorted(p for p in (bad / "progress" / "c").rglob("*") if p.is_file())[0]
        b = bytearray(chunk.read_bytes())
        b[len(b) // 2] ^= 0xFF
        chunk.write_bytes(bytes(b))
    return bad


def _teach(env, *args, data=None, teacher=None, out=None):
    return ["teach", "--data", data or env["data"], "--teacher", teacher or env["ckpt"],
            "--out", out or env["w"] / "new.zarr", *SMALL, *args]


def _resume(env, *args):
    return ["teach", "--data", env["data"], "--teacher", env["ckpt"], "--out", env["store"], "--resume", *SMALL, *args]


def _train(env, *args):
    return ["train", "--store", env["store"], "--data", env["data"], "--out", env["w"] / "student", *args]


CASES = {  # name: (finding, invocation(env), words of the error line)
    "non-utf8-file-name": (6, lambda e: _teach(e, data=_non_utf8(e)), ["not valid UTF-8", "bad\\xff.png"]),
    "seed-negative": (6, lambda e: _teach(e, "--seed", "-1"), ["--seed", "-1"]),
    "seed-2**70": (6, lambda e: _teach(e, "--seed", str(2**70)), ["--seed", str(2**70)]),
    "teacher-1d": (6, lambda e: _teach(e, teacher="shape_teachers:flat"), ["teacher returned", "shape [8]", "[8, 10]"]),
    "teacher-BC1": (6, lambda e: _teach(e, teacher="shape_teachers:extra"), ["teacher returned", "shape [8, 10, 1]"]),
    "out-is-a-file": (6, lambda e: _teach(e, out=e["w"] / "a_file"), ["--out", "a_file", "existing file"]),
    "out-is-a-file-overwrite": (6, lambda e: _teach(e, "--overwrite", out=e["w"] / "a_file"), ["--out", "a_file"]),
    "out-is-a-file-resume": (6, lambda e: _teach(e, "--resume", out=e["w"] / "a_file"), ["--out", "a_file"]),
    "train-batch-size-0": (6, lambda e: _train(e, "--batch-size", "0"), ["--batch-size", "0"]),
    "train-out-is-a-file": (6, lambda e: ["train", "--store", e["store"], "--data", e["data"], "--out", e["w"] / "a_file"],
                            ["--out", "a_file", "existing file"]),
    "train-student-fewer-classes": (6, lambda e: _train(
        e, "--student", "labelstore.trainers.models:build_model?name=cnn-tiny&num_classes=6"),
        ["--student", "6 classes", "10 classes"]),
    "verify-samples-negative": (6, lambda e: ["verify", e["store"], "--data", e["data"], "--samples", "-3"],
                                ["--samples", "-3"]),
    "info-flipped-progress-byte": (6, lambda e: ["info", _flipped_progress(e)], ["bad_progress.zarr", "'progress'"]),
    "int32-pixels-named-png": (7, lambda e: _teach(e, data=_int32_image(e)), ["deep.png", "mode I", "8-bit"]),
    "top-k-0": (7, lambda e: _teach(e, "--top-k", "0"), ["--top-k", "0"]),
    "train-epochs-negative": (7, lambda e: _train(e, "--epochs", "-1"), ["--epochs", "-1"]),
    "train-seed-negative": (7, lambda e: _train(e, "--seed", "-1"), ["--seed", "-1"]),
    "symlink-loop": (8, lambda e: _teach(e, data=_symlink_loop(e)), ["symlink loop", "circle/loop"]),
    "empty-class-folder": (8, lambda e: _teach(e, data=_empty_class(e)), ["zzz_empty", "no images", "11 class folders"]),
    "resume-other-crop-scale": (8, lambda e: _resume(e, "--crop-scale", "0.5", "1.0"),
                                ["s.zarr", "--crop-scale", "[0.08, 1.0]", "[0.5, 1.0]"]),
    "resume-other-image-size": (8, lambda e: _resume(e, "--image-size", "24"),
                                ["--image-size", "[16, 16]", "[24, 24]"]),
    "resume-other-policy": (8, lambda e: _resume(e, "--policy", "crop-flip-jitter"), ["--policy", "ColorJitter"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_adversary_row(env, name, monkeypatch):
    finding, invocation, words = CASES[name]
    monkeypatch.setenv("PYTHONPATH", str(env["w"]))  # run() prepends the repo root to this
    before = {k: tree_digest(env[k]) for k in ("data", "store")} | {"a_file": tree_digest(env["w"] / "a_file")}
    args = invocation(env)
    p = run(*args, check=False)
    assert_user_error(p, *words)
    after = {k: tree_digest(env[k]) for k in ("data", "store")} | {"a_file": tree_digest(env["w"] / "a_file")}
    assert after == before, f"finding {finding}, {name}: something pre-existing changed"
    assert not (env["w"] / "student").exists()
    # nothing was created before the inputs were checked; for the rows found while labelling (teacher-1d,
    # teacher-BC1, int32-pixels-named-png) the store was created, its first unit failed, and a store
    # holding nothing is removed again
    assert not (env["w"] / "new.zarr").exists()


# --------------------------------------------------------------------------- finding 5: full / read-only disk

def _mount_tmpfs(where: Path, size_k: int) -> None:
    where.mkdir(exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_k}k", "tmpfs", str(where)], capture_output=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.decode().strip()}")


def _umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], check=True)


def _tmpfs_used_k(where: Path) -> int:
    st = os.statvfs(where)
    return (st.f_blocks - st.f_bfree) * st.f_frsize // 1024


@pytest.fixture
def tmpfs(env):
    where = env["w"] / "mnt"
    yield where
    if os.path.ismount(where):
        _umount(where)


def test_full_disk_is_one_line_and_resumes_identically(env, tmpfs):
    """ENOSPC mid-run (a real tmpfs too small for the store): one error line naming the store and
    --resume; with room again, --resume finishes a store identical to an uninterrupted run."""
    _mount_tmpfs(tmpfs, 8192)
    shutil.copytree(env["store"], tmpfs / "probe.zarr")
    need = _tmpfs_used_k(tmpfs)  # what the whole store takes on this file system
    _umount(tmpfs)
    _mount_tmpfs(tmpfs, max(4, int(need * 0.72) // 4 * 4))
    out = tmpfs / "s.zarr"
    p = run("teach", "--data", env["data"], "--teacher", env["ckpt"], "--out", out, *SMALL, check=False)
    line = assert_user_error(p, str(out), "No space left on device", "--resume")
    assert "kept" in line
    subprocess.run(["mount", "-o", "remount,size=8192k", str(tmpfs)], check=True)
    run("teach", "--data", env["data"], "--teacher", env["ckpt"], "--out", out, "--resume", *SMALL)
    assert_same_arrays(out, env["store"])


def test_read_only_store_resume_and_overwrite(env, tmpfs):
    """teach --resume / --overwrite on a store on a read-only file system: one error line, store intact."""
    _mount_tmpfs(tmpfs, 8192)
    out = tmpfs / "s.zarr"
    shutil.copytree(env["store"], out)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    before = tree_digest(out)
    p = run("teach", "--data", env["data"], "--teacher", env["ckpt"], "--out", out, "--overwrite", *SMALL, check=False)
    assert_user_error(p, str(out), "Read-only file system")
    assert tree_digest(out) == before
    # --resume of a complete store has nothing to write: it says so and touches nothing, read-only or not
    p = run("teach", "--data", env["data"], "--teacher", env["ckpt"], "--out", out, "--resume", *SMALL)
    assert "already complete" in p.stdout and "Traceback" not in p.stderr
    assert tree_digest(out) == before
    assert json.loads(run("info", out, "--json").stdout)["state"] == "complete"


# --------------------------------------------------------------------------- findings 7, 9, 10


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    """A 16-bit grayscale PNG becomes v // 257 in 8 bits (not min(v, 255))."""
    from PIL import Image

    from labelstore.pipeline.images import ImageFolder

    (tmp_path / "a").mkdir()
    v = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(v).save(tmp_path / "a" / "x.png")
    img = ImageFolder(tmp_path).load(0)
    assert img.dtype == np.uint8 and np.array_equal(img[:, :, 0], (v // 257).astype(np.uint8))


def _code(*dirs: str):
    for d in dirs:
        for p in sorted((ROOT / d).rglob("*.py")):
            yield p, p.read_text().splitlines()


def test_every_bare_value_error_is_an_internal_invariant():
    """Finding 9: user-facing raises are typed (labelstore.errors); a ValueError left is marked as an
    internal invariant, and the CLI no longer guesses from tracebacks."""
    bare = [f"{p.relative_to(ROOT)}:{i + 1}" for p, lines in _code("labelstore", "pipeline", "trainers")
            for i, line in enumerate(lines) if "raise ValueError" in line and "internal invariant" not in line]
    assert bare == []
    assert "_raised_in_labelstore" not in (ROOT / "labelstore" / "cli.py").read_text()


def test_an_internal_error_keeps_its_traceback(env, monkeypatch):
    """Finding 9: a ValueError from a teacher's own code is a bug report, not an `error:` line."""
    (env["w"] / "raising_teacher.py").write_text(textwrap.dedent("""
        import torch

        class Raises(torch.nn.Module):
            def forward(self, x):
                raise ValueError("a bug inside the teacher")

        def build(num_classes=10):
            return Raises()
    """))
    monkeypatch.setenv("PYTHONPATH", str(env["w"]))
    p = run(*_teach(env, teacher="raising_teacher:build", out=env["w"] / "raises.zarr"), check=False)
    assert p.returncode == 1 and "Traceback" in p.stderr and "a bug inside the teacher" in p.stderr
    assert not any(line.startswith("error: ") for line in p.stderr.splitlines())


def test_no_subprocess_in_the_tests_has_a_time_limit():
    """Finding 10: a loaded 2-core machine is slow; subprocesses in tests run without a timeout."""
    timed = [f"{p.relative_to(ROOT)}:{i + 1}" for p, lines in _code("tests") for i, line in enumerate(lines)
             if re.search(r"(subprocess\.run|communicate|check_output)\(.*timeout=", line)
             or re.match(r"\s+timeout=\d+\)", line)]
    assert timed == []
