"""The dense testbed of `labelstore experiment adl`: images with a few small objects on a grid of cells,
the teacher stage that stores a teacher's per-cell sigmoid outputs, and the mAP that scores a student.

Data (`make_cells_folder`): square RGB images of G x G cells (default 64 x 64 pixels, 8 x 8 cells of
8 pixels) on a smooth colour-noise background. An object fills most of one cell; its class is one of
5 shapes (square, disc, triangle, cross, ring) x 2 colour families (warm, cool): C = 10. Distractors
(the same shapes in green or grey) are no class. An image of kind "objects" holds 1-6 objects and
0-3 distractors in distinct cells, so about 3.5 of its G·G·C = 640 (cell, class) outputs are positive
(99.5 % negatives); kind "empty" is background only, kind "distractors" holds distractors only. Each
folder is real PNG files plus `labels.json` ({"files", "objects": [[cell_y, cell_x, class], ...] per
file, "kinds", "grid", "classes"}).

Store (`CellTask`, run by `labelstore.pipeline.stage.run_stage`): one epoch (no augmentation), per image
the teacher's sigmoid outputs `cell_probs` [1, N, G, G, C] float16 and the sample table `sample_id`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from labelstore import schema, writer
from labelstore.errors import DataError
from labelstore.integrity import json_digest
from labelstore.pipeline.stage import Item, check_teacher_output
from labelstore.pipeline.teacher import weights_hash

SHAPES = ("square", "disc", "triangle", "cross", "ring")
WARM = np.array([[210, 60, 40], [230, 120, 30], [200, 40, 110]], np.float32)
COOL = np.array([[40, 80, 210], [30, 160, 220], [100, 60, 200]], np.float32)
DISTRACT = np.array([[60, 190, 60], [150, 150, 150], [170, 200, 60]], np.float32)
NUM_CLASSES = 2 * len(SHAPES)  # class = 2 * shape + family (0 warm, 1 cool)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def _shape_mask(shape: str, size: int, cell: int, oy: float, ox: float) -> np.ndarray:
    """bool [cell, cell]: `shape` of side `size` pixels centred at (cell/2 + oy, cell/2 + ox)."""
    yy, xx = np.mgrid[0:cell, 0:cell].astype(np.float32) + 0.5
    dy, dx = (yy - cell / 2 - oy) / (size / 2), (xx - cell / 2 - ox) / (size / 2)  # in [-1, 1] inside
    if shape == "square":
        return (np.abs(dy) <= 1) & (np.abs(dx) <= 1)
    if shape == "disc":
        return dy * dy + dx * dx <= 1
    if shape == "triangle":
        return (dy <= 1) & (dy >= -1) & (np.abs(dx) <= (dy + 1) / 2)
    if shape == "cross":
        return ((np.abs(dy) <= 0.34) & (np.abs(dx) <= 1)) | ((np.abs(dx) <= 0.34) & (np.abs(dy) <= 1))
    r = dy * dy + dx * dx
    return (r <= 1) & (r >= 0.3)


def render_image(g: np.random.Generator, kind: str, grid: int, cell: int) -> tuple[np.ndarray, list[list[int]]]:
    """uint8 [H, W, 3] (H = W = grid * cell) and its objects [[cell_y, cell_x, class], ...] (see module doc)."""
    size = grid * cell
    coarse = g.uniform(70, 180, (4, 4, 3)).astype(np.float32)
    bg = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32)
    img = bg + g.normal(0, 14, bg.shape).astype(np.float32)
    n_obj = int(g.integers(1, 7)) if kind == "objects" else 0
    n_dis = int(g.integers(0, 4)) if kind == "objects" else (int(g.integers(1, 5)) if kind == "distractors" else 0)
    cells = g.choice(grid * grid, n_obj + n_dis, replace=False)
    objects = []
    for j, c in enumerate(cells):
        cy, cx = divmod(int(c), grid)
        s = int(g.integers(len(SHAPES)))
        if j < n_obj:
            fam = int(g.integers(2))
            colour = (WARM if fam == 0 else COOL)[g.integers(3)]
            objects.append([cy, cx, 2 * s + fam])
        else:
            colour = DISTRACT[g.integers(3)]
        side = g.uniform(0.6, 0.95) * cell
        jitter = (cell - side) / 2
        mask = _shape_mask(SHAPES[s], side, cell, g.uniform(-jitter, jitter), g.uniform(-jitter, jitter))
        patch = img[cy * cell:(cy + 1) * cell, cx * cell:(cx + 1) * cell]
        patch[mask] = colour + g.normal(0, 18, (int(mask.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8), objects


def make_cells_folder(root: str | Path, n: int, seed: int, kinds: dict[str, float] | None = None, grid: int = 8,
                      cell: int = 8) -> Path:
    """Write n images (PNG) and labels.json to `root` (made atomically: a finished folder is reused).

    kinds: fraction of each image kind ("objects", "empty", "distractors"); default all "objects".
    """
    root = Path(root)
    if (root / "labels.json").exists():
        return root
    kinds = kinds or {"objects": 1.0}
    g = np.random.default_rng(seed)
    names = list(kinds)
    drawn = g.choice(len(names), n, p=np.asarray([kinds[k] for k in names]) / sum(kinds.values()))
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files, objects, kind_of = [], [], []
    for i in range(n):
        img, objs = render_image(g, names[drawn[i]], grid, cell)
        name = f"{i:05d}.png"
        Image.fromarray(img).save(tmp / name)
        files.append(name)
        objects.append(objs)
        kind_of.append(names[drawn[i]])
    meta = {"files": files, "objects": objects, "kinds": kind_of, "grid": grid, "classes": NUM_CLASSES}
    (tmp / "labels.json").write_text(json.dumps(meta))
    os.replace(tmp, root)
    return root


class CellsFolder:
    """A folder written by make_cells_folder: images read from their files, targets from labels.json."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / "labels.json"
        try:
            self.meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: cannot read the cell labels ({e})") from e
        self.files, self.grid, self.classes = self.meta["files"], int(self.meta["grid"]), int(self.meta["classes"])

    def __len__(self) -> int:
        return len(self.files)

    def images(self, rows: np.ndarray | None = None) -> np.ndarray:
        """uint8 [n, H, W, 3] of `rows` (all when None), decoded from the PNG files."""
        rows = np.arange(len(self)) if rows is None else rows
        out = []
        for r in rows:
            path = self.root / self.files[int(r)]
            try:
                with Image.open(path) as im:
                    out.append(np.asarray(im.convert("RGB")))
            except OSError as e:
                raise DataError(f"{path}: cannot decode the image ({e})") from e
        return np.stack(out)

    def targets(self) -> np.ndarray:
        """float32 [N, G, G, C]: 1 at every (cell, class) with an object."""
        y = np.zeros((len(self), self.grid, self.grid, self.classes), np.float32)
        for i, objs in enumerate(self.meta["objects"]):
            for cy, cx, c in objs:
                y[i, cy, cx, c] = 1
        return y

    def digest(self) -> str:
        return json_digest(self.meta)


def to_input(images: np.ndarray, size: int) -> torch.Tensor:
    """float32 [n, 3, size, size] in about [-1, 1] from uint8 [n, H, W, 3] (area-averaged down to size)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x if x.shape[-1] == size else F.adaptive_avg_pool2d(x, size)


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------


class CellNet(nn.Module):
    """A fully convolutional net: [B, 3, S, S] -> logits [B, G, G, C] (G = S / 2^downs), one sigmoid per
    (cell, class). `width` channels, doubling at each stride-2 conv; BatchNorm + ReLU; the class bias
    starts at log(0.01 / 0.99) as RetinaNet's (every output starts at p = 0.01)."""

    def __init__(self, width: int, downs: int, classes: int = NUM_CLASSES, extra: int = 1):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        ch = width
        for i in range(downs):
            out = width * 2 ** min(i + 1, 2)
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            ch = out
        for _ in range(extra):
            layers += [nn.Conv2d(ch, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(ch, classes, 1)
        nn.init.constant_(self.head.bias, float(np.log(0.01 / 0.99)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).permute(0, 2, 3, 1)  # [B, G, G, C]


# ---------------------------------------------------------------------------------------------
# the teacher stage
# ---------------------------------------------------------------------------------------------


class CellTask:
    """Record the teacher's per-cell sigmoid outputs of every image of a CellsFolder (one epoch, the
    image as it is): cell_probs [1, N, G, G, C] float16; rows in partitions of `shard_rows`."""

    name, count_unit = "dense-cells", "image"
    resume_keys = ("task", "epochs", "seed", "num_samples", "dataset.digest", "teacher.weights_sha256",
                   "teach_config.batch_size", "teach_config.shard_rows", "teach_config.input_size")

    def __init__(self, data: CellsFolder, teacher: nn.Module, *, input_size: int, seed: int = 0,
                 batch_size: int = 64, shard_rows: int = 256):
        self.data, self.teacher, self.input_size = data, teacher.eval(), input_size
        self.batch_size, self.shard_rows = batch_size, shard_rows
        self.attrs = {"task": self.name, "epochs": 1, "seed": seed, "num_samples": len(data),
                      "num_classes": data.classes, "grid": data.grid,
                      "dataset": {"kind": "cells", "root": str(data.root), "digest": data.digest()},
                      "teacher": {"weights_sha256": weights_hash(teacher)},
                      "teach_config": {"batch_size": batch_size, "shard_rows": shard_rows, "input_size": input_size}}
        self._probs: np.ndarray | None = None

    def build(self, at: str) -> None:
        n, G, C = len(self.data), self.data.grid, self.data.classes
        specs = [
            schema.ArraySpec("sample_id", ("sample",), (n,), "str", "image file name", fill_value=""),
            schema.ArraySpec("cell_probs", ("epoch", "sample", "cell_y", "cell_x", "class"), (1, n, G, G, C),
                             "float16", "teacher sigmoid probability of each (cell, class)", units="probability"),
        ]
        group = writer.create(at, specs, self.attrs, chunk_rows=min(64, self.shard_rows), shard_rows=self.shard_rows,
                               epoch_groups=1)
        group["sample_id"][:] = np.asarray(self.data.files, dtype=str)

    def _rows(self, p: int) -> np.ndarray:
        return np.arange(p * self.shard_rows, min(len(self.data), (p + 1) * self.shard_rows))

    def work(self, units) -> int:
        return sum(len(self._rows(p)) for _, p in units)

    def inputs(self, units, pool):
        for g, p in units:
            rows = self._rows(p)
            for j0 in range(0, len(rows), self.batch_size):
                sel = slice(j0, j0 + self.batch_size)
                yield Item("batch", (g, p), 0, rows, (sel, to_input(self.data.images(rows[sel]), self.input_size)))
            yield Item("epoch", (g, p), 0, rows)
            yield Item("unit", (g, p), None, rows)

    def label(self, item: Item):
        if item.kind == "unit":
            return [], 0
        start = int(item.rows[0])
        if item.kind == "epoch":
            probs, self._probs = self._probs, None
            return [("cell_probs", start, probs, 0)], 0
        sel, x = item.data
        if self._probs is None:
            self._probs = np.zeros((len(item.rows), self.data.grid, self.data.grid, self.data.classes), np.float16)
        with torch.inference_mode():
            q = self.teacher(x).sigmoid()  # [b, G, G, C]
        check_teacher_output(q, 0, item.rows[sel], lambda r: self.data.files[r])
        self._probs[sel] = q.numpy()
        return [], len(x)

    def stats(self, count: int, seconds: float) -> dict:
        return {"images": count}


# ---------------------------------------------------------------------------------------------
# the metric
# ---------------------------------------------------------------------------------------------


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Non-interpolated AP of one class: rank by score (descending, ties in input order), then

        AP = (1 / P) Σ_k precision@k · rel_k,    precision@k = (positives in the top k) / k

    over the P positives (NaN when P = 0)."""
    order = np.argsort(-scores, kind="stable")
    rel = labels[order] > 0
    if not rel.any():
        return float("nan")
    hits = np.cumsum(rel)
    return float((hits[rel] / (np.flatnonzero(rel) + 1)).mean())


def cell_map(scores: np.ndarray, labels: np.ndarray) -> float:
    """mAP over (cell, class): scores, labels [N, G, G, C]; per class c the AP over all N·G·G cells of
    the test images, then the mean over the classes that have a positive."""
    C = scores.shape[-1]
    aps = [average_precision(scores[..., c].ravel(), labels[..., c].ravel()) for c in range(C)]
    aps = [a for a in aps if not np.isnan(a)]
    if not aps:
        raise DataError("mAP: no class has a positive in the test labels")
    return float(np.mean(aps))
