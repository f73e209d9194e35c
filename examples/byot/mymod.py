"""A teacher written in plain PyTorch, outside labelstore: images [B, 3, H, W] -> logits [B, num_classes].

labelstore builds it from the spec 'mymod:Net' (this folder on PYTHONPATH), handing it num_classes;
'mymod:Net?weights=/abs/net.pt' hands it the path as well, and it loads the file itself.
"""

import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 10, weights: str | None = None):
        super().__init__()

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

        self.features = nn.Sequential(*block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2),
                                      *block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(64, num_classes)
        if weights is not None:
            self.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
