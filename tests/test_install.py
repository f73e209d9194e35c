"""The wheel in a clean venv: installs labelstore.pipeline / labelstore.trainers and no top-level
`pipeline` or `trainers`, so a user's own pipeline.py (here also a teacher given as module:callable)
works next to every command.  (rename_imports: skip -- this file names the old imports on purpose)

The venv gets the wheel (no dependencies) and sees the test interpreter's site-packages for torch,
zarr, ... through a .pth line (no network, seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = '"labelstore.pipeline" = "pipeline"' in (ROOT / "pyproject.toml").read_text()
pytestmark = pytest.mark.skipif(not MAPPED, reason="install names: run tools/rename_imports.py first")

USER_PIPELINE = textwrap.dedent('''
    """A user's own module named pipeline, with the teacher they want to record."""
    import torch.nn as nn

    def teacher(num_classes, width=4):
        return nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
''')


@pytest.fixture(scope="session")
def clean_venv(tmp_path_factory) -> Path:
    """A fresh venv with only the built wheel installed; returns its python."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp,
                    ROOT], check=True, capture_output=True)
    (wheel,) = tmp.glob("labelstore-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"labelstore", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, tops
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
                    wheel], check=True, capture_output=True)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True,
                          capture_output=True, text=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")  # torch, zarr, ... of this interpreter
    return python


def test_wheel_installs_no_generic_top_level_names(clean_venv, tmp_path):
    (tmp_path / "pipeline.py").write_text(USER_PIPELINE)
    code = textwrap.dedent('''
        import json, importlib.util
        import labelstore, labelstore.pipeline.teach, labelstore.trainers.spec
        import pipeline
        print(json.dumps({"labelstore": labelstore.__file__, "lp": labelstore.pipeline.__file__,
                          "user": pipeline.__file__, "trainers": importlib.util.find_spec("trainers") is None}))
    ''')
    p = subprocess.run([clean_venv, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    site = str(clean_venv.parents[1])
    assert r["labelstore"].startswith(site) and r["lp"].startswith(site)  # from the wheel, not the checkout
    assert r["user"] == str(tmp_path / "pipeline.py")  # the user's own module, not ours
    assert r["trainers"]  # no top-level trainers


def test_users_pipeline_py_does_not_break_commands(clean_venv, tmp_path):
    (tmp_path / "pipeline.py").write_text(USER_PIPELINE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    labelstore = [str(clean_venv), "-m", "labelstore"]

    def run(*args):
        p = subprocess.run(labelstore + list(map(str, args)), cwd=tmp_path, env=env, capture_output=True, text=True)
        assert p.returncode == 0, f"{args}\n{p.stdout}\n{p.stderr[-3000:]}"
        return p.stdout

    run("data", "shapes", "--out", "data", "--train", "20", "--test", "2")
    run("teach", "--data", "data/train", "--teacher", "pipeline:teacher?width=6", "--out", "labels.zarr",
        "--epochs", "1", "--image-size", "16", "--shard-samples", "8", "--chunk-samples", "8", "--workers", "1",
        "--quiet")
    info = json.loads(run("info", "labels.zarr", "--json"))
    assert info["state"] == "complete" and info["teacher"]["name"] == "pipeline:teacher?width=6"
    assert info["teacher"]["params"] == 3 * 6 * 9 + 6 + 6 * 10 + 10  # the user's teacher, built with width=6
