"""The feature losses (trainers/losses/features.py) and the feature students' objective
(trainers/distill.py student_loss, trainers/feature_student.py), against formulas written out
here in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelstore.errors import ConfigError
from labelstore.trainers.distill import DistillConfig, student_loss
from labelstore.trainers.feature_student import FeatureStudent
from labelstore.trainers.losses import feature_mse, query_token_mse, simkd_loss, srrl_loss
from labelstore.trainers.models import build_model

rng = np.random.default_rng(0)
B, DT, C = 4, 6, 5
P = rng.normal(size=(B, DT))  # projected student features [B, D_t]
FT = np.abs(rng.normal(size=(B, DT)))  # teacher features [B, D_t]
W = rng.normal(size=(C, DT))
BIAS = rng.normal(size=C)


def _head() -> torch.nn.Linear:
    h = torch.nn.Linear(DT, C).double()
    with torch.no_grad():
        h.weight.copy_(torch.from_numpy(W))
        h.bias.copy_(torch.from_numpy(BIAS))
    return h


def _log_softmax(z):  # numpy, per row
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _mse(a, b):  # (1 / (B D)) sum (a - b)^2, written out
    total = 0.0
    for i in range(a.shape[0]):
        for d in range(a.shape[1]):
            total += (a[i, d] - b[i, d]) ** 2
    return total / a.size


def test_feature_mse_is_the_mean_square_and_the_teacher_gets_no_gradient():
    p = torch.from_numpy(P).requires_grad_()
    ft = torch.from_numpy(FT).requires_grad_()
    loss = feature_mse(p, ft)
    assert loss.item() == pytest.approx(_mse(P, FT), rel=1e-12)
    loss.backward()
    assert ft.grad is None
    np.testing.assert_allclose(p.grad.numpy(), 2 * (P - FT) / P.size, rtol=1e-12)
    with pytest.raises(ConfigError, match="differ in shape"):
        feature_mse(p, ft[:, :3])


def test_simkd_loss_and_its_prediction_through_the_teacher_head():
    loss, logits = simkd_loss(torch.from_numpy(P), torch.from_numpy(FT), _head())
    assert float(loss) == pytest.approx(_mse(P, FT), rel=1e-12)
    np.testing.assert_allclose(logits.detach().numpy(), P @ W.T + BIAS, rtol=1e-12)


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_srrl_loss_feature_term_plus_ce_through_the_teacher_head(T):
    q = rng.dirichlet(np.ones(C), size=B)  # [B, C] teacher output
    got = srrl_loss(torch.from_numpy(P), torch.from_numpy(FT), _head(), torch.from_numpy(q), alpha=0.5, beta=2.0,
                    temperature=T)
    z = P @ W.T + BIAS  # the teacher head on the projected student feature
    qt = q ** (1 / T) / (q ** (1 / T)).sum(1, keepdims=True)  # the teacher at temperature T
    sr = -(T**2) * (qt * _log_softmax(z / T)).sum(1).mean()
    assert got.item() == pytest.approx(0.5 * _mse(P, FT) + 2.0 * sr, rel=1e-10)


def test_query_token_mse_with_and_without_a_mask():
    Q, D = 3, 4
    s, t = rng.normal(size=(2, Q, D)), rng.normal(size=(2, Q, D))
    mask = np.array([[True, False, True], [False, False, True]])
    got_all = query_token_mse(torch.from_numpy(s), torch.from_numpy(t))
    assert float(got_all) == pytest.approx(((s - t) ** 2).sum() / (2 * Q * D), rel=1e-12)
    got = query_token_mse(torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(mask))
    valid = [(0, 0), (0, 2), (1, 2)]
    expected = sum(((s[b, q] - t[b, q]) ** 2).sum() for b, q in valid) / (len(valid) * D)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    none = query_token_mse(torch.from_numpy(s), torch.from_numpy(t), torch.zeros(2, Q, dtype=torch.bool))
    assert float(none) == 0.0
    with pytest.raises(ConfigError, match=r"\[B, Q, D\]"):
        query_token_mse(torch.from_numpy(s[:, 0]), torch.from_numpy(t[:, 0]))


def _targets():
    # 4 views, 5 classes, top-2; view 3 is unlabelled (its CE(gt) term drops out)
    return {
        "topk_values": torch.tensor([[0.7, 0.2], [0.5, 0.4], [0.6, 0.3], [0.9, 0.05]], dtype=torch.float64),
        "topk_indices": torch.tensor([[0, 1], [2, 3], [1, 0], [4, 2]]),
        "gt": torch.tensor([0, 2, 1, -1]),
        "partner_gt": torch.tensor([-1, -1, -1, -1]),
        "mix_weight": torch.ones(4, dtype=torch.float64),
        "features": torch.from_numpy(FT),
    }


def _dense(t):  # the "marginal" fill, written out: top-k kept, the rest of the mass spread evenly
    v, i = t["topk_values"].numpy(), t["topk_indices"].numpy()
    q = np.repeat(((1 - v.sum(1)) / (C - v.shape[1]))[:, None], C, axis=1)
    for b in range(len(v)):
        q[b, i[b]] = v[b]
    return q


def test_student_loss_of_the_three_feature_losses():
    t = _targets()
    s = rng.normal(size=(B, C))  # the student's own logits
    q = _dense(t)
    logp = _log_softmax(s)
    ce_gt = np.mean([-logp[b, g] for b, g in enumerate(t["gt"].tolist()) if g >= 0])
    fkd = -(q * logp).sum(1).mean()
    z = P @ W.T + BIAS
    sr = -(q * _log_softmax(z)).sum(1).mean()
    args = dict(num_classes=C, projected=torch.from_numpy(P), head=_head())

    got, _ = student_loss(torch.from_numpy(s), t, DistillConfig(loss="feat-mse"), **args)
    assert got.item() == pytest.approx(fkd + _mse(P, FT), rel=1e-10)
    got, _ = student_loss(torch.from_numpy(z), t, DistillConfig(loss="simkd"), **args)
    assert got.item() == pytest.approx(_mse(P, FT), rel=1e-12)
    got, _ = student_loss(torch.from_numpy(z), t, DistillConfig(loss="simkd", hard_weight=0.5), **args)
    ce_z = np.mean([-_log_softmax(z)[b, g] for b, g in enumerate(t["gt"].tolist()) if g >= 0])
    assert got.item() == pytest.approx(_mse(P, FT) + 0.5 * ce_z, rel=1e-10)
    got, _ = student_loss(torch.from_numpy(s), t, DistillConfig(loss="srrl"), **args)
    assert got.item() == pytest.approx(ce_gt + _mse(P, FT) + sr, rel=1e-10)

    with pytest.raises(ConfigError, match="features"):
        student_loss(torch.from_numpy(s), {k: v for k, v in t.items() if k != "features"},
                     DistillConfig(loss="srrl"), **args)


def test_feature_student_predicts_with_its_head_or_the_teacher_head():
    torch.manual_seed(0)
    student = build_model("cnn-micro", num_classes=C).eval()
    head = torch.nn.Linear(DT, C)
    x = torch.randn(2, 3, 16, 16)
    own = FeatureStudent(student, DT, head).eval()
    logits, projected = own(x, with_features=True)
    assert projected.shape == (2, DT)
    torch.testing.assert_close(logits, student(x))
    simkd = FeatureStudent(student, DT, head, predict_with_head=True).eval()
    logits, projected = simkd(x, with_features=True)
    torch.testing.assert_close(logits, head(simkd.projector(student.features(x))))
    torch.testing.assert_close(simkd(x), logits)
    assert not any(p.requires_grad for p in head.parameters())
    assert not any(p.requires_grad for p in student.head.parameters())  # unused by simkd
    with pytest.raises(ConfigError, match="penultimate"):
        FeatureStudent(torch.nn.Linear(3, C), DT, head)
    with pytest.raises(ConfigError, match="takes 6 features"):
        FeatureStudent(build_model("cnn-micro", num_classes=C), DT + 1, head)
