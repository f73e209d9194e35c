"""`module:callable?key=value&...` specs (a timm-style factory) and `python -m labelstore`."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
import torch

from labelstore.errors import ConfigError
from labelstore.trainers.spec import load_model, spec_arguments
from conftest import user_module

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
    return user_module(tmp_path, monkeypatch, "timm_like_models", FACTORY)


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


# --------------------------------------------------------------------------------------------
# arguments are arguments; weights files (--teacher-weights ...); zoos

USER = textwrap.dedent('''
    import torch
    import torch.nn as nn

    SEEN = []

    class Net(nn.Module):
        def __init__(self, num_classes=10, weights=None, tag="x"):
            super().__init__()
            SEEN.append({"weights": weights, "tag": tag})
            self.body = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
            self.head = nn.Linear(4, num_classes)
            if weights is not None:
                self.load_state_dict(torch.load(weights, weights_only=True))

        def forward(self, x):
            return self.head(self.body(x))

    def no_weights(num_classes=10):
        return nn.Linear(3, num_classes)
''')


@pytest.fixture
def user_mod(tmp_path, monkeypatch):
    return user_module(tmp_path, monkeypatch, "byot_user_mod", USER)


def test_spec_kinds_decide_before_any_path_test(tmp_path):
    from labelstore.trainers.spec import spec_kind

    assert [spec_kind(s) for s in ("cnn-tiny", "mymod:Net", "my.pkg:Holder.build?weights=/abs/net.pt&x=a/b.pt",
                                   "hf:/abs/dir", "hf:org/name", "timm:resnet18", "torchvision:resnet18",
                                   "runs/teacher.pt", "teacher.pth", ":build", "resnet-zz", "a:b/c")] == [
        "builtin", "callable", "callable", "zoo", "zoo", "zoo", "zoo", "checkpoint", "checkpoint", "unknown",
        "unknown", "checkpoint"]


def test_path_arguments_are_handed_to_the_callable(user_mod, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "sub dir" / "net.pt"
    path.parent.mkdir()
    ref = user_mod.Net(num_classes=5)
    torch.save(ref.state_dict(), path)
    m = load_model(f"byot_user_mod:Net?weights={path}&tag=a/b.pt", num_classes=5)  # an absolute .pt path
    assert user_mod.SEEN[-1] == {"weights": str(path), "tag": "a/b.pt"}
    from labelstore.pipeline.teacher import weights_hash

    assert weights_hash(m) == weights_hash(ref)
    with pytest.raises(ConfigError, match="no_weights takes no `weights` argument.*--teacher-weights"):
        load_model(f"byot_user_mod:no_weights?weights={path}", num_classes=5)


def test_teacher_weights_load_state_dicts_and_name_what_does_not_fit(user_mod, tmp_path):
    from labelstore.pipeline.teacher import weights_hash
    from labelstore.trainers.spec import load_teacher, load_weights

    torch.manual_seed(1)
    ref = user_mod.Net(num_classes=5)
    state = ref.state_dict()
    files = {"plain.pt": state, "ckpt.pt": {"state_dict": state, "epoch": 3}, "model.pt": {"model": state},
             "ddp.pt": {f"module.{k}": v for k, v in state.items()}}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        model, info = load_teacher("byot_user_mod:Net", 5, str(tmp_path / name))
        assert info["weights_sha256"] == weights_hash(ref) and info["weights_file"] == str(tmp_path / name), name
    assert "weights_file" not in load_teacher("byot_user_mod:Net", 5)[1]
    # a built-in name takes a state_dict file too (then it is not untrained)
    from labelstore.trainers.models import build_model

    tiny = build_model("cnn-micro", num_classes=5)
    torch.save(tiny.state_dict(), tmp_path / "micro.pt")
    assert load_teacher("cnn-micro", 5, str(tmp_path / "micro.pt"))[1]["weights_sha256"] == weights_hash(tiny)

    other = {"body.2.weight": torch.zeros(4, 3), "extra.bias": torch.zeros(2), "head.weight": torch.zeros(7, 4)}
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ConfigError) as e:
        load_weights(user_mod.Net(num_classes=5), str(tmp_path / "other.pt"), "--teacher-weights", "byot_user_mod:Net")
    msg = str(e.value)
    assert "--teacher-weights" in msg and "other.pt" in msg and "'byot_user_mod:Net'" in msg
    assert "missing keys: body.2.bias, head.bias" in msg and "unexpected keys: extra.bias" in msg
    assert "head.weight [7, 4] (the model has [5, 4])" in msg
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="list.pt: not a state_dict"):
        load_weights(user_mod.Net(), str(tmp_path / "list.pt"), "--student-weights", "byot_user_mod:Net")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="junk.pt: cannot read it with torch.load"):
        load_weights(user_mod.Net(), str(tmp_path / "junk.pt"), "--teacher-weights", "byot_user_mod:Net")
    with pytest.raises(FileNotFoundError, match="--teacher-weights .*nowhere.pt: weights file not found"):
        load_weights(user_mod.Net(), str(tmp_path / "nowhere.pt"), "--teacher-weights", "byot_user_mod:Net")


def test_timm_and_torchvision_name_the_missing_package():
    for spec, package in (("timm:resnet18", "timm"), ("torchvision:resnet18?weights=null", "torchvision")):
        with pytest.raises(ConfigError, match=f"{re.escape(repr(spec))}.*needs the {package} package.*pip install {package}"):
            load_model(spec, num_classes=10)
    with pytest.raises(ConfigError, match="expected 'timm:NAME'"):
        load_model("timm:", num_classes=10)


def test_hf_without_transformers_names_the_extra():
    code = ("import sys; sys.modules['transformers'] = None\n"  # as if transformers were not installed
            "from labelstore.trainers.spec import load_model\n"
            "try:\n    load_model('hf:/some/dir', num_classes=3)\n"
            "except ValueError as e:\n    print(e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "'hf:/some/dir' needs the transformers package" in p.stdout and "labelstore[hf]" in p.stdout


def save_tiny_hf(path, num_labels: int = 3, processor: bool = True):
    """A tiny ResNetForImageClassification (and a ViT-style image processor config) saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                    layer_type="basic", num_labels=num_labels)
    model = transformers.ResNetForImageClassification(cfg)
    model.save_pretrained(path)
    if processor:
        transformers.ViTImageProcessor(size={"height": 24, "width": 24}, image_mean=[0.5, 0.4, 0.3],
                                       image_std=[0.2, 0.25, 0.3], resample=3).save_pretrained(path)
    return model


def test_hf_model_from_a_local_directory(tmp_path):
    from labelstore.pipeline.teacher import weights_hash
    from labelstore.trainers.spec import load_teacher, load_weights

    ref = save_tiny_hf(tmp_path / "tiny")
    model, info = load_teacher(f"hf:{tmp_path / 'tiny'}", 3)
    assert info["preprocessing"] == {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "input_size": [24, 24],
                                     "resample": "bicubic", "source": info["preprocessing"]["source"]}
    assert info["preprocessing"]["source"].startswith("image processor config")
    model.eval()
    ref.eval()
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(pixel_values=x).logits)
    # --teacher-weights: the transformers model's own state_dict loads into the wrapped model
    torch.manual_seed(5)
    other = save_tiny_hf(tmp_path / "other")
    torch.save(other.state_dict(), tmp_path / "other.pt")
    load_weights(model, str(tmp_path / "other.pt"), "--teacher-weights", "hf:tiny")
    assert weights_hash(model.wrapped) == weights_hash(other)
    with pytest.raises(ConfigError, match="3 labels \\(config.num_labels\\), but 10 classes.*num_labels=10"):
        load_model(f"hf:{tmp_path / 'tiny'}", num_classes=10)
    fresh = load_model(f"hf:{tmp_path / 'tiny'}?num_labels=10&ignore_mismatched_sizes=true", num_classes=10)
    assert fresh(x).shape == (2, 10)
    save_tiny_hf(tmp_path / "bare", processor=False)  # no image processor config: nothing to record
    assert "preprocessing" not in load_teacher(f"hf:{tmp_path / 'bare'}", 3)[1]
    with pytest.raises(ConfigError, match="hf:.*nowhere.*cannot load"):
        load_model(f"hf:{tmp_path / 'nowhere'}", num_classes=3)
