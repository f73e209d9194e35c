"""Small image classifiers for the built-in teachers and students.

Every model maps float images [B, in_ch, H, W] to logits [B, num_classes] and is
split in two so that MC dropout can reuse the backbone:

    features(x) -> [B, F]        backbone + global average pool (no dropout)
    head(f)     -> [B, C]        Dropout(p) -> Linear(F, C)
    forward(x)  =  head(features(x))

`labelstore.pipeline.teacher.mc_forward` runs `features` once and `head` T times.

Registry (FLOPs are multiply-accumulates for one 3x32x32 image, see count_flops):

    name       kind     widths          blocks     dropout  params  MACs
    cnn-micro  student  8, 16, 32       1 conv/st  0.0      ~6.4k   ~0.8M
    cnn-tiny   student  16, 32, 64      1 conv/st  0.0      ~24k    ~2.8M
    resnet-s   student  16, 32, 64      2, 2, 2    0.0      ~0.17M  ~27M
    resnet-m   teacher  32, 64, 128     2, 2, 3    0.3      ~0.99M  ~125M  (4.7x resnet-s)
    resnet-l   teacher  64, 128, 256    2, 2, 2    0.3      ~2.8M   ~421M

(exact numbers: `python -m labelstore.trainers.models`)
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from labelstore.errors import ConfigError

# -----------------------------------------------------------------------------
# building blocks


class ConvBN(nn.Sequential):
    """3x3 (or kxk) conv without bias -> BatchNorm -> optional ReLU."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, act: bool = True):
        layers = [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with a residual connection.

    The shortcut is the identity, or a strided 1x1 conv + BN when the shape changes.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = ConvBN(cin, cout, 3, stride, act=True)
        self.conv2 = ConvBN(cout, cout, 3, 1, act=False)
        self.shortcut = nn.Identity() if (stride == 1 and cin == cout) else ConvBN(cin, cout, 1, stride, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


def classifier_head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Dropout -> Linear. The Dropout module is always present (p may be 0) so the
    module tree and state_dict do not depend on the dropout rate."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    # Kaiming for convs; the Linear keeps PyTorch's default init. (A tiny N(0, 0.01)
    # classifier init and zero-init residuals both slowed the first ~100 steps a lot on
    # the built-in shapes data, and short CPU schedules are all we have.)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        # each residual branch starts as zero, so every block starts as the identity
        for m in model.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.conv2[1].weight)


# -----------------------------------------------------------------------------
# models


class ResNetS(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, one stage per width (stride 2 from the second
    stage on), `blocks[i]` BasicBlocks per stage, global average pool, Dropout, Linear."""

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64),
        blocks: Sequence[int] = (2, 2, 2),
        num_classes: int = 10,
        dropout: float = 0.0,
        in_ch: int = 3,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ConfigError(f"widths {tuple(widths)} and blocks {tuple(blocks)} must be non-empty and the same length")
        self.stem = ConvBN(in_ch, widths[0], 3, 1)
        stages, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(cin, w, stride)] + [BasicBlock(w, w, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.head = classifier_head(cin, num_classes, dropout)
        _init_weights(self, zero_init_residual)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # [B, F]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """Plain CNN: per width one ConvBN(3x3) followed by 2x2 max-pool (none after the
    last), global average pool, Dropout, Linear."""

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64),
        num_classes: int = 10,
        dropout: float = 0.0,
        in_ch: int = 3,
    ):
        super().__init__()
        layers, cin = [], in_ch
        for i, w in enumerate(widths):
            layers.append(ConvBN(cin, w, 3, 1))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.body = nn.Sequential(*layers)
        self.num_features = cin
        self.head = classifier_head(cin, num_classes, dropout)
        _init_weights(self, zero_init_residual=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# -----------------------------------------------------------------------------
# registry


def cnn_micro(num_classes: int = 10, **kw) -> nn.Module:
    """Smallest student (~6k params, ~1/4 of cnn-tiny's FLOPs)."""
    return SmallCNN(**{"widths": (8, 16, 32), "num_classes": num_classes, **kw})


def cnn_tiny(num_classes: int = 10, **kw) -> nn.Module:
    """Very small student (~24k params)."""
    return SmallCNN(**{"widths": (16, 32, 64), "num_classes": num_classes, **kw})


def resnet_s(num_classes: int = 10, **kw) -> nn.Module:
    """Student ResNet-14-ish (~0.17M params)."""
    return ResNetS(**{"widths": (16, 32, 64), "blocks": (2, 2, 2), "num_classes": num_classes, **kw})


def resnet_m(num_classes: int = 10, **kw) -> nn.Module:
    """Teacher: 2x the width of resnet-s plus one extra block in the last (cheap, 8x8)
    stage -> ~4.7x its FLOPs; dropout 0.3 before the classifier for MC dropout."""
    return ResNetS(**{"widths": (32, 64, 128), "blocks": (2, 2, 3), "num_classes": num_classes, "dropout": 0.3, **kw})


def resnet_l(num_classes: int = 10, **kw) -> nn.Module:
    """Bigger teacher: 4x the width of resnet-s (~16x its FLOPs)."""
    return ResNetS(**{"widths": (64, 128, 256), "blocks": (2, 2, 2), "num_classes": num_classes, "dropout": 0.3, **kw})


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn-micro": cnn_micro,
    "cnn-tiny": cnn_tiny,
    "resnet-s": resnet_s,
    "resnet-m": resnet_m,
    "resnet-l": resnet_l,
}


def build_model(name: str, num_classes: int = 10, **kw) -> nn.Module:
    """Build a registered model by name; extra kwargs (e.g. dropout=0.5) override its defaults."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; built-in models: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, **kw)


# -----------------------------------------------------------------------------
# cost accounting


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: Sequence[int] = (3, 32, 32)) -> int:
    """Multiply-accumulates of all Conv/Linear layers for one forward pass of an input of
    `input_shape` (a 3-tuple C,H,W means a single image; a 4-tuple includes the batch).
    Measured with forward hooks on a zero tensor in eval mode; other ops (BN, ReLU,
    pooling, additions) are not counted. The model's train/eval state is restored."""
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    total = 0

    def conv_hook(m: nn.modules.conv._ConvNd, inp, out):
        nonlocal total
        k = 1
        for s in m.kernel_size:
            k *= s
        total += out.numel() * (m.in_channels // m.groups) * k

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    modes = {m: m.training for m in model.modules()}
    try:
        p = next(iter(model.parameters()), None)
        x = torch.zeros(shape, device=p.device if p is not None else "cpu", dtype=p.dtype if p is not None else torch.float32)
        model.eval()
        model(x)
    finally:
        for h in hooks:
            h.remove()
        for m, t in modes.items():
            m.training = t
    return int(total)


if __name__ == "__main__":
    for name in MODELS:
        m = build_model(name)
        print(f"{name:10s} params {count_params(m):>10,d}  MACs/img {count_flops(m, (3, 32, 32)):>13,d}")
