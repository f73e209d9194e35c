"""The README's Python block runs as written, against a real store in the paths it names.

The block is taken from README.md itself (the first ```python fence after "Python in one screen"),
so the README cannot drift from the API. `student` is the one name the README leaves to the user.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from labelstore.pipeline.images import ImageFolder
from conftest import NUM_CLASSES, teach_store

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python() -> str:
    text = README.read_text()
    section = text.split("## Python in one screen", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_python_block_runs(tmp_path, monkeypatch, shapes_dir, teacher):
    shutil.copytree(shapes_dir, tmp_path / "data" / "shapes" / "train")
    monkeypatch.chdir(tmp_path)
    teach_store(tmp_path / "labels.zarr", ImageFolder(tmp_path / "data" / "shapes" / "train"), teacher,
                policy="crop-flip", epochs=4, top_k=3, mc_passes=2, image_size=16)
    seen = []

    class Student(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 16 * 16, NUM_CLASSES)

        def forward(self, x):  # x: float [B, 3, 16, 16]
            seen.append(tuple(x.shape))
            return self.fc(x.flatten(1))

    code = readme_python().replace("num_workers=2", "num_workers=0").replace(
        "persistent_workers=True", "persistent_workers=False")  # workers are covered by test_replay
    scope = {"student": Student()}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["rec"]["topk_values"].shape == (3, 3)
    assert torch.isfinite(scope["loss"]) and scope["loss"].requires_grad
    assert len(seen) == 4 * 1 and seen[0] == (48, 3, 16, 16)  # 4 epochs x one batch of all 48 samples
