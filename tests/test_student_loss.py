"""The classification students' objective (trainers/distill.py student_loss), against formulas written
out here independently."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelstore.trainers.distill import DistillConfig, student_loss
from labelstore.trainers.losses import adl_loss, dense_soft_labels


def _targets():
    # 3 views, 4 classes; view 1 is mixed 70/30 with a partner of class 3; view 2 is unlabelled
    return {
        "topk_values": torch.tensor([[0.7, 0.2], [0.5, 0.4], [0.6, 0.3]]),
        "topk_indices": torch.tensor([[0, 1], [2, 3], [1, 0]]),
        "gt": torch.tensor([0, 2, -1]),
        "partner_gt": torch.tensor([-1, 3, -1]),
        "mix_weight": torch.tensor([1.0, 0.7, 1.0], dtype=torch.float64),
        "gt_prob": torch.tensor([0.7, 0.5, float("nan")]),
    }


def _bce(x, y):  # numpy, per element: -(y log σ(x) + (1-y) log(1-σ(x)))
    s = 1 / (1 + np.exp(-x))
    return -(y * np.log(s) + (1 - y) * np.log(1 - s))


def test_adl_binary_with_hard_label_bce():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.3, 0.1, 1.5, -0.7], [-0.2, 0.4, 0.0, 1.0]], dtype=torch.float64)
    t = _targets()
    cfg = DistillConfig(loss="adl", adl_mode="binary", hard_weight=0.5)
    loss, _ = student_loss(logits, t, cfg, num_classes=4)
    q = dense_soft_labels(t["topk_values"], t["topk_indices"], 4, fill="marginal").double()
    x = logits.numpy()
    y = np.array([[1, 0, 0, 0], [0, 0, 0.7, 0.3]])  # labelled views only, partner share on class 3
    hard = _bce(x[:2], y).sum(1).mean()
    expected = float(adl_loss(logits, q, mode="binary")) + 0.5 * hard
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    # the binary mode is not the softmax mode
    soft, _ = student_loss(logits, t, DistillConfig(loss="adl", adl_mode="softmax"), num_classes=4)
    assert float(soft) == pytest.approx(float(adl_loss(logits, q, mode="softmax")), rel=1e-12)
    assert abs(float(soft) - float(adl_loss(logits, q, mode="binary"))) > 1e-3


def test_hard_label_ce_for_the_other_losses():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.3, 0.1, 1.5, -0.7], [-0.2, 0.4, 0.0, 1.0]], dtype=torch.float64)
    t = _targets()
    only_hard, _ = student_loss(logits, t, DistillConfig(mode="none"), num_classes=4)
    x = logits.numpy()
    logp = x - np.log(np.exp(x).sum(1, keepdims=True))
    expected = (-logp[0, 0] + (-0.7 * logp[1, 2] - 0.3 * logp[1, 3])) / 2
    assert float(only_hard) == pytest.approx(expected, rel=1e-12)
