"""`module:callable?key=value&...` specs (a timm-style factory) and `python -m labelstore`."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from labelstore.errors import ConfigError
from labelstore.trainers.spec import load_model, spec_arguments

FACTORY = textwrap.dedent('''
    import torch.nn as nn

    CALLS = []

    def create_model(name, pretrained=False, num_classes=1000, **kw):
        """timm-style: the architecture by name, options as keywords."""
        CALLS.append({"name": name, "pretrained": pretrained, "num_classes": num_classes, **kw})
        depth = kw.get("depth", 1)
        return nn.Sequential(nn.Flatten(), *[nn.Identity() for _ in range(depth)], nn.LazyLinear(num_classes))
''')


@pytest.fixture
def timm_like(tmp_path, monkeypatch):
    (tmp_path / "timm_like_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("timm_like_models", None)
    import timm_like_models

    yield timm_like_models
    sys.modules.pop("timm_like_models", None)


def test_spec_arguments_parse_json_values_else_strings():
    assert spec_arguments("name=resnet18&depth=2&drop=0.5&pretrained=false&cfg=null&sizes=[1,2]&tag=a b") == {
        "name": "resnet18", "depth": 2, "drop": 0.5, "pretrained": False, "cfg": None, "sizes": [1, 2], "tag": "a b"}
    assert spec_arguments("") == {}
    with pytest.raises(ValueError):
        spec_arguments("no-equals-sign")


def test_timm_style_factory_with_arguments(timm_like):
    model = load_model("timm_like_models:create_model?name=resnet18&depth=3&pretrained=false", num_classes=7)
    assert timm_like.CALLS[-1] == {"name": "resnet18", "pretrained": False, "num_classes": 7, "depth": 3}
    assert sum(isinstance(m, torch.nn.Identity) for m in model) == 3
    assert model(torch.zeros(2, 3, 4, 4)).shape == (2, 7)
    load_model("timm_like_models:create_model?name=vit&depth=1", num_classes=5, depth=2)  # keywords win
    assert timm_like.CALLS[-1]["depth"] == 2 and timm_like.CALLS[-1]["name"] == "vit"
    with pytest.raises(ConfigError, match="timm_like_models:create_model.*name"):  # the factory's required argument is missing
        load_model("timm_like_models:create_model", num_classes=5)
    with pytest.raises(ValueError, match="after '\\?'"):
        load_model("timm_like_models:create_model?oops", num_classes=5)


def test_python_dash_m_labelstore():
    p = subprocess.run([sys.executable, "-m", "labelstore", "--help"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "Usage: labelstore" in p.stdout and "teach" in p.stdout
    p = subprocess.run([sys.executable, "-m", "labelstore", "info", "/nonexistent/x.zarr"], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "x.zarr" in p.stderr
