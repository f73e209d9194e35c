"""Train mymod.Net on an ImageFolder in plain PyTorch (PIL, numpy, torch; no labelstore) and save its state_dict.

    python train_teacher.py TRAIN_DIR OUT.pt [EPOCHS]

Inputs as labelstore gives them to a teacher: RGB, [3, 32, 32] floats (pixel / 255 - MEAN) / STD, classes
in sorted folder order. MEAN/STD are this teacher's own (not ImageNet's): `labelstore teach --mean 0.5,0.5,0.5
--std 0.25,0.25,0.25` records them in the store's policy, and every student then sees its views the same way.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import mymod

SIZE = 32
BATCH = 32
MEAN = np.array([0.5, 0.5, 0.5], np.float32)
STD = np.array([0.25, 0.25, 0.25], np.float32)


def load(root: str, rng: np.random.Generator, crops: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image resized whole, plus `crops` random crops of 50-100 % of its area: x [N, 3, 32, 32], y [N]."""
    classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((Path(root) / name).iterdir()):
            im = Image.open(f).convert("RGB")
            W, H = im.size
            boxes = [(0, 0, W, H)]
            for _ in range(crops):
                s = np.sqrt(rng.uniform(0.5, 1.0))
                w, h = max(1, int(W * s)), max(1, int(H * s))
                x0, y0 = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
                boxes.append((x0, y0, x0 + w, y0 + h))
            for box in boxes:
                a = np.asarray(im.crop(box).resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255.0
                xs.append(((a - MEAN) / STD).transpose(2, 0, 1))
                ys.append(label)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


def main(train_dir: str, out: str, epochs: int = 12) -> None:
    torch.manual_seed(0)
    x, y = load(train_dir, np.random.default_rng(0))
    net = mymod.Net(num_classes=int(y.max()) + 1)
    steps = epochs * -(-len(x) // BATCH)
    opt = torch.optim.AdamW(net.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    for _ in range(epochs):
        net.train()
        for b in torch.randperm(len(x)).split(BATCH):
            loss = torch.nn.functional.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean().item()
    torch.save(net.state_dict(), out)
    print(f"trained mymod.Net for {epochs} epochs on {len(x)} images: training accuracy {acc:.3f} -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:4]))
