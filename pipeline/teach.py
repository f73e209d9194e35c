"""The teacher stage for image classification: label every (epoch, sample) view once.

For each work unit (epoch group g, partition p) — rows [p*S, (p+1)*S) for epochs
[g*V, (g+1)*V) — the unit's images are decoded once; for each epoch the policy's parameters
are drawn from the counter-based RNG, the views rendered, the teacher run, and
per epoch one whole shard of each array handed to the background writer:

  topk_values [E,N,K] f16 = top-k of softmax(teacher(x))    topk_indices [E,N,K]
  gt_prob     [E,N]   f16 = softmax(teacher(x))[gt]         (NaN when gt = -1)
  mc_values   [E,N,T,K] f16 = softmax(teacher_t(x))[topk_indices], dropout layers only in train mode
  view_digest [E,N]   u16 = low 16 bits of the crc32c of the uint8 view (integrity.view_check)
  aug/<op>/<param> [E,N,...] = the parameters of the view, in their storage dtype (only with
                     store_params; by default a student re-derives them from the counter-based RNG)
  features/values [E,N,D], features/scale [E,N] = the hooked teacher feature of the view, encoded by
                     the store's codec (only with features; pipeline/features.py), and, written at
                     creation, the teacher's classifier features/head/weight [C,D], features/head/bias [C]
Probabilities are written with classification_store.PROB_MANTISSA_BITS mantissa bits (writer.write_block).

Decoding and rendering run on the decode pool, one batch a task, up to one unit ahead of the
teacher (pipeline/teach_views.py); writes run on a background thread. A killed run keeps every
unit it flagged done; `resume=True` redoes the rest
with identical results (all randomness is keyed by seed/epoch/sample, MC masks by
seed/epoch/partition/batch).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import numpy as np
import torch

import labelstore
from labelstore import schema, writer
from labelstore.errors import ConfigError
from labelstore.integrity import json_digest, view_check

from . import classification_store, features, records
from .recycle import Recycler
from .stage import Item, check_teacher_output, open_store, run_stage
from .teach_views import views
from .teacher import autocast_context, mc_forward, pick_device

MC_SEED_BITS = 64  # classification stores seed MC masks with all 64 bits of records.mc_seed


def check_config(cfg: "TeachConfig", num_classes: int) -> None:
    """ConfigError unless cfg fits a teacher of num_classes classes (the rest is checked by TeachConfig itself)."""
    if not 1 <= cfg.top_k <= num_classes:
        raise ConfigError(f"top_k (--top-k) must be in [1, {num_classes}] (the number of classes), got {cfg.top_k}")


@dataclass(frozen=True)
class TeachConfig:
    epochs: int = 4
    seed: int = 0
    top_k: int = 5
    mc_passes: int = 0
    batch_size: int = 256
    views_per_decode: int = 0  # epochs labelled per decode; 0 = all epochs
    shard_rows: int = 8192  # rows per shard = rows per work partition
    chunk_rows: int = 2048  # rows per inner chunk (the read unit)
    skip_bad: bool = False
    digests: bool = True
    store_params: bool = False  # also store the aug/* arrays (by default students re-derive them)
    decode_workers: int = 4
    # where views are rendered (same bytes anywhere): None = the teacher's device; "cpu" = the numba
    # kernels; a torch device ("cuda", "cuda:1") = pipeline/render_torch.py there, the sources uploaded
    # once per image; "torch:<device>" forces the torch path (e.g. "torch:cpu", to check it)
    render_device: str | None = None
    features: str | None = None  # teach --features NAME: record this teacher module's output per view
    feature_codec: str = "float16"  # --feature-codec: float16 or int8 (pipeline/features.py)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs (--epochs) must be >= 1, got {self.epochs}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed (--seed) must be in [0, 2**63), got {self.seed}")
        if self.top_k < 1:
            raise ConfigError(f"top_k (--top-k) must be >= 1, got {self.top_k}")
        if self.mc_passes < 0 or self.views_per_decode < 0:
            raise ConfigError(f"mc_passes (--mc-passes) and views_per_decode (--views-per-decode) must be >= 0, "
                              f"got {self.mc_passes}, {self.views_per_decode}")
        if self.batch_size < 1 or self.decode_workers < 1:
            raise ConfigError(f"batch_size (--batch-size) and decode_workers (--workers) must be >= 1, "
                              f"got {self.batch_size}, {self.decode_workers}")
        if self.feature_codec not in ("float16", "int8"):
            raise ConfigError(f"feature_codec (--feature-codec) must be float16 or int8, got {self.feature_codec!r}")
        if self.chunk_rows < 1 or self.shard_rows < 1 or self.shard_rows % self.chunk_rows:
            raise ConfigError(f"shard_rows (--shard-samples, {self.shard_rows}) must be a positive multiple of "
                              f"chunk_rows (--chunk-samples, {self.chunk_rows})")

    @property
    def group_size(self) -> int:
        return self.views_per_decode if 0 < self.views_per_decode < self.epochs else self.epochs


# Fields a resumed run must share with the store (all of TeachConfig except decode_workers and render_device);
# the feature fields are recorded only in a store with features (a store without stays as it was).
_RESUME_FIELDS = ("epochs", "seed", "top_k", "mc_passes", "batch_size", "views_per_decode", "shard_rows",
                  "chunk_rows", "skip_bad", "digests", "store_params")
_FEATURE_FIELDS = ("features", "feature_codec")


def store_attrs(source, policy, cfg: TeachConfig, teacher_info: dict, num_classes: int,
                features: dict | None = None) -> dict:
    """The root attributes; `features`: the attribute of a store with features (FeatureRecorder.attrs)."""
    pol = policy.to_json()
    fields = _RESUME_FIELDS + (_FEATURE_FIELDS if cfg.features else ())
    extra = {"features": features} if features is not None else {}
    return {
        "task": classification_store.TASK,
        "tool_version": labelstore.__version__,
        "teacher": teacher_info,
        "dataset": {**source.fingerprint(), **source.describe()},
        "policy": {**pol, "digest": json_digest(pol)},
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "num_samples": len(source),
        "num_classes": num_classes,
        "classes": list(source.classes),
        "top_k": cfg.top_k,
        "mc_passes": cfg.mc_passes,
        "teach_config": {k: v for k, v in asdict(cfg).items() if k in fields},
        "aug_params": schema.PARAMS_STORED if cfg.store_params else schema.PARAMS_DERIVED,
        **extra,
    }


RESUME_KEYS = ("task", "num_samples", "num_classes", "top_k", "mc_passes", "epochs", "seed", "dataset.digest",
               "dataset.num_samples", "teacher.weights_sha256", "policy.digest",
               *(f"teach_config.{f}" for f in _RESUME_FIELDS + _FEATURE_FIELDS), "features")


def open_or_create(path: str, source, policy, cfg: TeachConfig, teacher_info: dict, num_classes: int,
                   resume: bool = False, overwrite: bool = False, join: bool = False,
                   teacher: torch.nn.Module | None = None):
    """The zarr group to fill: a new store, or (resume / join) the existing one after checking it matches.
    teacher: needed with cfg.features (the feature's length and the classifier come from it)."""
    task = ClassificationTask(source, policy, cfg, teacher_info, num_classes, teacher, device="cpu")
    return open_store(task, path, resume=resume, overwrite=overwrite, join=join)


def render_device(cfg: TeachConfig, teacher_device) -> torch.device | None:
    """The torch device of the torch render path, or None for the numba kernels (CPU)."""
    want = cfg.render_device if cfg.render_device is not None else str(teacher_device)
    if want.startswith("torch:"):
        return torch.device(want[len("torch:"):])
    try:
        dev = torch.device(want)
    except RuntimeError as e:
        raise ConfigError(f"--render-device {want!r} is not a torch device: {e}") from e
    return None if dev.type == "cpu" else dev


class FeatureRecorder:
    """The hook, length and classifier of `teach --features NAME` (pipeline/features.py) on the teacher."""

    def __init__(self, teacher: torch.nn.Module, name: str, codec: str, num_classes: int,
                 size: tuple[int, int], device, teacher_sha256: str):
        self.hook = features.FeatureHook(teacher, name, num_classes)
        self.dim = features.probe_dim(teacher, self.hook, tuple(size), device)
        found = features.classifier(teacher, num_classes)
        self.head = features.head_arrays(found[1]) if found else None
        head = None
        if self.head is not None:
            head = {"module": found[0], "in_features": int(self.head[0].shape[1]),
                    "sha256": features.head_sha256(teacher_sha256, *self.head)}
        self.attrs = {"name": name, "module": self.hook.module_name, "codec": codec, "dim": self.dim,
                      "flatten": "mean over (H, W) of a 4-D output, else reshape to [B, -1]", "head": head}

    def write_head(self, group) -> None:
        """The classifier's weight [C, D'] and bias [C] (float32), one chunk each, written at creation."""
        if self.head is None:
            return
        from zarr.codecs import Crc32cCodec

        w, b = self.head
        for name, data, dims in ((features.HEAD_WEIGHT, w, ("class", "head_in")), (features.HEAD_BIAS, b, ("class",))):
            arr = group.create_array(name, shape=data.shape, chunks=data.shape, dtype="float32", fill_value=0.0,
                                     compressors=[Crc32cCodec()], dimension_names=dims,
                                     attributes={"meaning": "the teacher's classifier (features.head)", "units": ""})
            arr[...] = data


class ClassificationTask:
    """Rows are images; a unit (epoch group g, partition p) decodes its images once for the group's epochs."""

    name, count_unit, resume_keys = classification_store.TASK, "view", RESUME_KEYS

    def __init__(self, source, policy, cfg: TeachConfig, teacher_info: dict, num_classes: int,
                 teacher: torch.nn.Module | None = None, device: str | None = None, amp: bool | None = None):
        self.source, self.policy, self.cfg, self.num_classes = source, policy, cfg, num_classes
        self.dev = pick_device(device)
        self.render_dev = render_device(cfg, self.dev)  # a bad --render-device fails here, before any work
        self.teacher = teacher.to(self.dev).eval() if teacher is not None else None
        self.amp = amp
        self.features = None
        if cfg.features:
            if self.teacher is None:
                raise ConfigError("features (--features) need the teacher model")  # internal: callers pass it
            self.features = FeatureRecorder(self.teacher, cfg.features, cfg.feature_codec, num_classes,
                                            policy.output_size, self.dev, teacher_info["weights_sha256"])
        self.attrs = store_attrs(source, policy, cfg, teacher_info, num_classes,
                                 self.features.attrs if self.features else None)
        self.specs = classification_store.classification_arrays(
            num_samples=len(source), epochs=cfg.epochs, num_classes=num_classes, top_k=cfg.top_k,
            mc_passes=cfg.mc_passes, aug_spec=policy.param_spec() if cfg.store_params else {}, digests=cfg.digests,
            features=(self.features.dim, cfg.feature_codec) if self.features else None,
        )
        self.gt = np.asarray(source.labels, dtype=np.int64)
        self._records = records.UnitRecords(self.specs)  # the current epoch's records of the unit
        self.recycler = Recycler()  # the memory of decoded images, views and (on a CPU) teacher inputs

    def build(self, at: str) -> None:
        cfg = self.cfg
        groups = -(-cfg.epochs // cfg.group_size)
        group = writer.create(at, self.specs, self.attrs, chunk_rows=cfg.chunk_rows, shard_rows=cfg.shard_rows,
                              epoch_groups=groups)
        group["sample_id"][:] = np.asarray(self.source.ids, dtype=str)
        group["gt"][:] = np.asarray(self.source.labels)
        if self.features is not None:
            self.features.write_head(group)

    def work(self, units) -> int:
        N, S = len(self.source), self.cfg.shard_rows
        return sum(min(N, (p + 1) * S) - p * S for _, p in units) * self.cfg.group_size

    def inputs(self, units, pool):
        return views(self.source, self.policy, self.cfg, units, len(self.source), pool, self.recycler, self.render_dev)

    def label(self, item: Item):
        cfg, rows, e = self.cfg, item.rows, item.epoch
        if item.kind == "epoch":
            if not self._records:  # a unit without batches
                return [], 0
            start = int(rows[0])
            writes = self._records.writes(start, e)
            if cfg.store_params:
                writes += [(f"aug/{key}", start, data, e) for key, data in item.data.items()]
            return writes, 0
        if item.kind == "unit":  # per-row arrays (first epoch group only); the driver then flags the unit done
            hw, skipped = item.data
            if item.unit[0] == 0:
                return [("source_hw", int(rows[0]), hw.astype(np.uint16), None), ("skipped", int(rows[0]), skipped, None)], 0
            return [], 0
        self._records.open(len(rows))
        sel, x, digests = item.data  # x: uint8 Views of rows[sel]; digests: their crc32c uint32 [n] or None
        if not len(sel):  # all of the batch's rows were skipped
            return [], 0
        ids = rows[sel]
        digest = {"view_digest": view_check(digests)} if cfg.digests else {}
        self._records.put(sel, {**digest, **self.targets(x, e, ids)})
        return [], len(ids)

    def targets(self, x, epoch: int, ids: np.ndarray) -> dict[str, torch.Tensor]:
        """The records of one batch of views (records.topk_records): top-k of p = softmax(teacher(x)), p[gt],
        MC top-k values; MC masks seeded records.mc_seed(seed, epoch, ids[0], MC_SEED_BITS)."""
        T, K, dev = self.cfg.mc_passes, self.cfg.top_k, self.dev
        seed = records.mc_seed(self.cfg.seed, epoch, int(ids[0]), MC_SEED_BITS)
        hooked = self.features.hook.capture() if self.features else contextlib.nullcontext()
        # the float input in recycled memory on a CPU (CUDA's caching allocator reuses device memory itself)
        out = torch.from_numpy(self.recycler.empty(tuple(x.x.shape), np.float32)) if dev.type == "cpu" else None
        with torch.inference_mode(), autocast_context(dev, self.amp), hooked:
            logits, mc_logits = mc_forward(self.teacher, self.policy.to_input(x, dev, out), T, seed)
        check_teacher_output(logits, epoch, ids, lambda i: self.source.ids[i], columns=(self.num_classes, "classes"))
        out = records.topk_records(logits, torch.as_tensor(self.gt[ids], device=dev), K, mc_logits)
        if self.features is not None:
            f = self.features.hook.take()
            check_teacher_output(f, epoch, ids, lambda i: self.source.ids[i], what=f"feature {self.cfg.features!r}",
                                 columns=(self.features.dim, "feature values"))
            out.update(features.encode(f, self.cfg.feature_codec))
        return out

    def stats(self, count: int, seconds: float) -> dict:
        return {"views": count, "views_per_s": count / max(seconds, 1e-9)}


def teach(
    out: str,
    source,
    teacher: torch.nn.Module,
    policy,
    cfg: TeachConfig,
    *,
    teacher_info: dict,
    num_classes: int,
    device: str | None = None,
    amp: bool | None = None,
    resume: bool = False,
    overwrite: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> dict:
    """Fill the store at `out`. Returns run statistics (views, seconds, views/s, complete)."""
    check_config(cfg, num_classes)
    task = ClassificationTask(source, policy, cfg, teacher_info, num_classes, teacher, device, amp)
    return run_stage(task, out, resume=resume, overwrite=overwrite, rank=rank, world_size=world_size,
                     decode_workers=cfg.decode_workers, progress=progress)
