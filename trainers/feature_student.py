"""Students of the feature losses (feat-mse, simkd, srrl; trainers/losses/features.py).

A FeatureStudent wraps a classification student that exposes its penultimate feature
(`features(x) -> [B, D_s]`, `head(f) -> [B, C]`, as every model of trainers/models.py does) with

    projector     Linear(D_s, D_t): the student feature in the teacher's feature space
    teacher_head  the teacher's classifier Linear(D_t, C), read from the store, frozen (simkd, srrl)

and predicts with the student's own head (feat-mse, srrl) or, for simkd, with the reused teacher
head on the projected feature: logits = teacher_head(projector(features(x))). Its state dict (the
student's checkpoint) holds all three, so a simkd student predicts without the store.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from labelstore.errors import ConfigError

FEATURE_LOSSES = ("feat-mse", "simkd", "srrl")


class FeatureStudent(nn.Module):
    """student + projector (+ the frozen teacher head); forward(x) -> logits [B, C], and with
    with_features=True -> (logits [B, C], projected feature [B, D_t])."""

    def __init__(self, student: nn.Module, d_teacher: int, head: nn.Linear | None = None,
                 predict_with_head: bool = False):
        super().__init__()
        if not (callable(getattr(student, "features", None)) and isinstance(getattr(student, "head", None), nn.Module)):
            raise ConfigError(f"the student {type(student).__name__} has no features(x) / head(f) split: the feature "
                              "losses need its penultimate feature (see trainers/models.py)")
        self.student = student
        d_s = _feature_width(student)
        self.projector = nn.Linear(d_s, d_teacher)  # D_s -> D_t
        if head is not None and head.in_features != d_teacher:
            raise ConfigError(f"the teacher head takes {head.in_features} features, the teacher's recorded ones "
                              f"have {d_teacher}")
        if predict_with_head and head is None:
            raise ConfigError("predicting through the teacher head (simkd) needs the head")
        self.teacher_head = head
        for p in head.parameters() if head is not None else ():
            p.requires_grad_(False)
        self.predict_with_head = predict_with_head
        if predict_with_head:  # the student's own head is never used (and must not wait for gradients under DDP)
            for p in student.head.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        f_s = self.student.features(x)  # [B, D_s]
        projected = self.projector(f_s)  # [B, D_t]
        logits = self.teacher_head(projected) if self.predict_with_head else self.student.head(f_s)  # [B, C]
        return (logits, projected) if with_features else logits


def _feature_width(student: nn.Module) -> int:
    """D_s: the student's num_features (every model of trainers/models.py has it)."""
    d = getattr(student, "num_features", None)
    if isinstance(d, int):
        return d
    raise ConfigError(f"the student {type(student).__name__} does not say its feature width (num_features)")


def feature_student(student: nn.Module, store, loss: str) -> FeatureStudent:
    """The FeatureStudent of `loss` for a store with teacher features; ConfigError naming the store
    when it has none (it needs `labelstore teach --features NAME`)."""
    from labelstore.pipeline.features import feature_attrs, feature_name, load_head

    if loss not in FEATURE_LOSSES:
        raise ConfigError(f"loss {loss!r} is not a feature loss ({', '.join(FEATURE_LOSSES)})")
    name = feature_name(store)
    if name is None:
        raise ConfigError(f"--loss {loss} needs teacher features in the store, and {store.path} has none: teach it "
                          "with `labelstore teach --features penultimate`")
    d_teacher = int(feature_attrs(store)["dim"])
    if loss == "feat-mse":  # FitNets: any recorded module; no head needed
        return FeatureStudent(student, d_teacher)
    head = load_head(store)
    if head.in_features != d_teacher:
        raise ConfigError(f"--loss {loss} reuses the teacher head on the projected feature, but the features of "
                          f"{store.path} ({name!r}, {d_teacher} values) are not its input ({head.in_features}): "
                          "teach with `--features penultimate`")
    return FeatureStudent(student, d_teacher, head, predict_with_head=loss == "simkd")
