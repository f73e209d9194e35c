"""Tests for labelstore.trainers.models, labelstore.trainers.spec, labelstore.pipeline.teacher and labelstore.trainers.fit (CPU, ~10 s)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn as nn

from labelstore.trainers.fit import TensorBatches, evaluate, train_classifier
from labelstore.trainers.loop import lr_factor, seed_everything
from labelstore.trainers.models import MODELS, ResNetS, SmallCNN, build_model, count_flops, count_params
from labelstore.pipeline.teacher import autocast_context, has_dropout, mc_forward, pick_device, set_mc_dropout, weights_hash
from labelstore.errors import ConfigError
from labelstore.trainers.spec import load_checkpoint, load_model, save_checkpoint
from conftest import user_module

torch.set_num_threads(2)


def small_resnet(dropout: float = 0.5, num_classes: int = 5) -> ResNetS:
    torch.manual_seed(0)
    return ResNetS(widths=(8, 16), blocks=(1, 1), num_classes=num_classes, dropout=dropout)


class Plain(nn.Module):
    """Hides .features/.head so mc_forward must run the full model every pass."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# -----------------------------------------------------------------------------
# models


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shapes_and_split(name):
    torch.manual_seed(0)
    m = build_model(name, num_classes=7).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = m(x)
        feats = m.features(x)
        assert out.shape == (3, 7)
        assert feats.shape == (3, m.num_features)
        torch.testing.assert_close(m.head(feats), out, rtol=0, atol=0)
        # global average pooling: other (non-square) resolutions work too
        assert m(torch.randn(2, 3, 24, 40)).shape == (2, 7)
    assert isinstance(m.head[0], nn.Dropout) and isinstance(m.head[-1], nn.Linear)


def test_sizes_flops_and_dropout_defaults():
    p = {n: count_params(build_model(n)) for n in MODELS}
    f = {n: count_flops(build_model(n), (3, 32, 32)) for n in MODELS}
    assert 20_000 <= p["cnn-tiny"] <= 50_000
    assert 100_000 <= p["resnet-s"] <= 300_000
    assert f["resnet-m"] / f["resnet-s"] >= 4
    assert f["resnet-l"] > f["resnet-m"] and p["resnet-l"] > p["resnet-m"]
    for teacher in ("resnet-m", "resnet-l"):
        m = build_model(teacher)
        assert m.head[0].p >= 0.2 and has_dropout(m)
    assert not has_dropout(build_model("resnet-s"))
    assert build_model("resnet-s", dropout=0.4).head[0].p == 0.4  # kwargs override defaults
    with pytest.raises(KeyError, match="resnet-xxl"):
        build_model("resnet-xxl")


def test_count_flops_exact_and_batch_scaling():
    lin = nn.Linear(10, 4)
    assert count_flops(lin, (1, 10)) == 40
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=2))
    per_img = 8 * 6 * 6 * 3 * 9 + 8 * 6 * 6 * 4 * 9
    assert count_flops(conv, (3, 6, 6)) == per_img
    assert count_flops(conv, (5, 3, 6, 6)) == 5 * per_img
    m = build_model("cnn-tiny").train()
    count_flops(m)
    assert m.training and all(mod.training for mod in m.modules())  # mode restored


# -----------------------------------------------------------------------------
# specs and checkpoints


def test_load_model_builtin_and_callable():
    m = load_model("resnet-s", num_classes=3, dropout=0.1)
    assert isinstance(m, ResNetS) and m.head[-1].out_features == 3 and m.head[0].p == 0.1
    assert load_model("cnn-tiny").head[-1].out_features == 10
    m = load_model("labelstore.trainers.models:SmallCNN", num_classes=4, widths=(8, 16))
    assert isinstance(m, SmallCNN) and m.head[-1].out_features == 4
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def test_load_model_user_module_and_errors(tmp_path, monkeypatch):
    user_module(
        tmp_path,
        monkeypatch,
        "my_teachers",
        """
        import torch.nn as nn

        def linear_teacher(width=6):          # no num_classes argument
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(width))

        def with_classes(num_classes=10, hidden=4):
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))

        def not_a_module():
            return "oops"

        class Holder:
            @staticmethod
            def build(num_classes=10):
                return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))
        """,
    )
    m = load_model("my_teachers:linear_teacher", num_classes=10, width=3)  # num_classes not forwarded
    assert m(torch.randn(2, 3, 4, 4)).shape == (2, 3)
    assert load_model("my_teachers:with_classes", num_classes=5)(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    assert load_model("my_teachers:Holder.build", num_classes=2)(torch.randn(1, 3, 8, 8)).shape == (1, 2)

    with pytest.raises(ConfigError, match="my_teachers:not_a_module.*nn.Module"):
        load_model("my_teachers:not_a_module")
    with pytest.raises(ConfigError, match="my_teachers:nope.*'nope'"):
        load_model("my_teachers:nope")
    with pytest.raises(ConfigError, match="no_such_pkg_xyz:build"):
        load_model("no_such_pkg_xyz:build")
    with pytest.raises(ValueError, match="'resnet-zz'.*resnet-s"):
        load_model("resnet-zz")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="':build'"):
        load_model(":build")


def test_checkpoint_roundtrip_and_hash(tmp_path):
    m = small_resnet(num_classes=5)
    # make BN running stats non-trivial so buffers matter
    m.train()
    with torch.no_grad():
        m(torch.randn(8, 3, 16, 16))
    m.eval()
    path = tmp_path / "ckpt" / "teacher.pt"
    kwargs = {"widths": (8, 16), "blocks": (1, 1), "num_classes": 5, "dropout": 0.5}
    digest = save_checkpoint(path, m, "labelstore.trainers.models:ResNetS", kwargs, extra={"epochs": 3, "acc": 0.9})
    assert digest == weights_hash(m)

    ckpt = load_checkpoint(path)
    assert ckpt["extra"] == {"epochs": 3, "acc": 0.9} and ckpt["spec"] == "labelstore.trainers.models:ResNetS"
    m2 = load_model(str(path))
    assert weights_hash(m2) == weights_hash(m) and not m2.training
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x), rtol=0, atol=0)
    assert load_model(str(path), num_classes=5).head[-1].out_features == 5
    with pytest.raises(ValueError, match="num_classes=5.*num_classes=7"):
        load_model(str(path), num_classes=7)

    # builtin spec round trip
    b = build_model("cnn-tiny", num_classes=4)
    save_checkpoint(tmp_path / "tiny.pt", b, "cnn-tiny", {"num_classes": 4})
    assert weights_hash(load_model(str(tmp_path / "tiny.pt"))) == weights_hash(b)

    # a tampered state_dict is detected
    ckpt["state_dict"]["head.1.bias"] = ckpt["state_dict"]["head.1.bias"] + 1
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt.*weights_sha256"):
        load_model(str(tmp_path / "bad.pt"))


def test_weights_hash_sensitivity():
    m = small_resnet()
    h = weights_hash(m)
    assert len(h) == 64 and h == weights_hash(small_resnet())  # same init -> same hash
    # memory format does not matter, values do
    m.to(memory_format=torch.channels_last)
    assert weights_hash(m) == h
    with torch.no_grad():
        m.stages[1][0].conv1[0].weight[0, 0, 0, 0] += 1e-6
    assert weights_hash(m) != h
    # buffers and dtype are part of it
    m2 = small_resnet()
    m2.stem[1].running_mean.add_(0.5)
    assert weights_hash(m2) != h
    assert weights_hash(small_resnet().double()) != h


# -----------------------------------------------------------------------------
# MC dropout


def test_set_mc_dropout_modes():
    m = small_resnet().train()
    set_mc_dropout(m, True)
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    drops = [mod for mod in m.modules() if isinstance(mod, nn.Dropout)]
    assert bns and drops
    assert not m.training and all(not b.training for b in bns) and all(d.training for d in drops)
    set_mc_dropout(m, False)
    assert not any(mod.training for mod in m.modules())


def test_mc_forward_determinism_and_rng_isolation():
    m = small_resnet(dropout=0.5).train()
    x = torch.randn(6, 3, 16, 16)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    logits, mc = mc_forward(m, x, passes=4, generator_seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert m.training and all(mod.training for mod in m.modules())  # flags restored
    assert logits.shape == (6, 5) and mc.shape == (6, 4, 5) and mc.dtype == torch.float32

    with torch.no_grad():
        torch.testing.assert_close(logits, m.eval()(x), rtol=0, atol=0)
    _, mc_again = mc_forward(m, x, passes=4, generator_seed=7)
    assert torch.equal(mc, mc_again)
    _, mc_other = mc_forward(m, x, passes=4, generator_seed=8)
    assert not torch.allclose(mc, mc_other)
    assert not torch.allclose(mc[:, 0], mc[:, 1])  # passes differ from each other
    assert (mc - logits[:, None]).abs().amax() > 0
    # pass t does not depend on T
    _, mc2 = mc_forward(m, x, passes=2, generator_seed=7)
    assert torch.equal(mc2, mc[:, :2])
    # works under inference_mode (as used by the teacher stage); zero passes -> [B, 0, C]
    with torch.inference_mode():
        l0, mc0 = mc_forward(m, x, passes=0, generator_seed=7)
    assert mc0.shape == (6, 0, 5) and torch.equal(l0, logits)


def test_mc_forward_zero_dropout_has_no_spread():
    m = small_resnet(dropout=0.0)
    assert not has_dropout(m)
    x = torch.randn(4, 3, 16, 16)
    logits, mc = mc_forward(m, x, passes=3, generator_seed=1)
    assert torch.equal(mc, logits[:, None].expand_as(mc))
    assert mc.std(dim=1).max().item() == 0.0


def test_mc_forward_head_only_equals_full_model():
    m = small_resnet(dropout=0.3)
    x = torch.randn(5, 3, 16, 16)
    stem_calls = count_calls(m.stem)
    logits_split, mc_split = mc_forward(m, x, passes=5, generator_seed=42)
    assert stem_calls[0] == 1  # backbone ran once for the deterministic pass and all MC passes
    logits_full, mc_full = mc_forward(Plain(m), x, passes=5, generator_seed=42)
    assert stem_calls[0] == 1 + 1 + 5  # full path: backbone every time
    torch.testing.assert_close(logits_split, logits_full, rtol=0, atol=0)
    torch.testing.assert_close(mc_split, mc_full, rtol=0, atol=0)


def test_mc_forward_dropout_outside_head_uses_full_model():
    m = small_resnet(dropout=0.0)
    m.stem.append(nn.Dropout(0.5))  # dropout in the backbone: head-only would be wrong
    stem_calls = count_calls(m.stem)
    x = torch.randn(3, 3, 16, 16)
    logits, mc = mc_forward(m, x, passes=3, generator_seed=0)
    assert stem_calls[0] == 1 + 3
    assert (mc - logits[:, None]).abs().amax() > 0


# -----------------------------------------------------------------------------
# devices


def test_devices_and_autocast():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert isinstance(autocast_context("cpu"), contextlib.nullcontext)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            pick_device("cuda")


# -----------------------------------------------------------------------------
# training


def test_tensor_batches_and_schedule():
    x, y = torch.arange(10).float()[:, None], torch.arange(10)
    tb = TensorBatches(x, y, batch_size=4, shuffle=True, seed=3)
    assert len(tb) == 3
    e0 = torch.cat([b for _, b in tb(0)])
    assert sorted(e0.tolist()) == list(range(10))
    assert torch.equal(e0, torch.cat([b for _, b in tb(0)]))  # same (seed, epoch) -> same order
    assert not torch.equal(e0, torch.cat([b for _, b in tb(1)]))
    assert len(TensorBatches(x, y, 4, drop_last=True)) == 2
    assert torch.equal(torch.cat([b for _, b in TensorBatches(x, y, 4, shuffle=False)]), y)
    assert lr_factor(0.0) == pytest.approx(0.1) and lr_factor(0.15) == pytest.approx(1.0)
    assert lr_factor(1.0) == pytest.approx(0.0, abs=1e-12) and lr_factor(0.5) > lr_factor(0.9)


def _separable(n: int, seed: int):
    """4 classes: which colour channel is bright, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 3, 12, 12, generator=g) * 0.8
    for c in range(3):
        x[y == c, c] += 1.0
    x[y == 3] -= 0.7
    return x, y


def test_train_classifier_learns_separable_problem():
    seed_everything(0)
    xtr, ytr = _separable(384, 0)
    xte, yte = _separable(256, 1)
    ytr[:16] = -1  # ignored rows
    m = build_model("cnn-tiny", num_classes=4)
    logs = []
    res = train_classifier(m, TensorBatches(xtr, ytr, 64, shuffle=True, seed=0), epochs=3, device="cpu", progress=False, log=logs.append)
    assert [r["epoch"] for r in logs] == [1, 2, 3]
    assert len(res["loss"]) == 3 and res["loss"][-1] < res["loss"][0]
    assert res["samples"] == 3 * 384 and res["steps"] == 3 * 6 and res["seconds"] > 0
    assert not m.training
    yte[:6] = -1
    ev = evaluate(m, TensorBatches(xte, yte, 100, shuffle=False), device="cpu")
    assert ev["n"] == 250
    assert ev["accuracy"] >= 0.95, ev
