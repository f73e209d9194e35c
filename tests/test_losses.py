"""Tests for labelstore.trainers.losses.

Expected values are computed independently with plain Python / numpy loops over the
formulas in docs/losses.md, never by calling the code under test.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from labelstore.trainers.losses import (
    AttentionalFrameAggregation,
    adl_loss,
    adl_select_images,
    adl_select_unlabeled,
    bce_distillation,
    bench_sinkhorn,
    dense_soft_labels,
    ferkd_targets,
    focal_distillation_loss,
    infonce_sym,
    kd_kl,
    mc_pair_uncertainty,
    radi_listwise_loss,
    radi_objective,
    radi_pairwise_loss,
    sample_cold_full_ranking,
    sigmoid_focal_loss,
    sinkhorn_margins,
    soft_label_ce,
    soften,
    teachclip_cgt_loss,
    teachclip_fgt_loss,
    teachclip_loss,
    teachclip_objective,
)

F64 = torch.float64


def rand64(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=F64) * scale).requires_grad_()


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def xlogx(v: float) -> float:
    return 0.0 if v == 0 else v * math.log(v)


def assert_finite_grad(loss: torch.Tensor, *inputs: torch.Tensor) -> None:
    assert torch.isfinite(loss).all(), loss
    grads = torch.autograd.grad(loss, inputs)
    for g in grads:
        assert torch.isfinite(g).all(), g


# ---------------------------------------------------------------------------
# FKD / FerKD

VALS = [[0.6, 0.2], [0.5, 0.3]]
IDX = [[1, 3], [0, 4]]


def expected_dense(vals, idx, C, fill):
    out = []
    for v, ix in zip(vals, idx):
        if fill == "marginal":
            rest = max(0.0, 1.0 - sum(v)) / (C - len(v))
            row = [rest] * C
            for p, i in zip(v, ix):
                row[i] = p
        else:
            row = [0.0] * C
            for p, i in zip(v, ix):
                row[i] = p / sum(v)
        out.append(row)
    return np.array(out)


@pytest.mark.parametrize("fill", ["marginal", "renorm"])
def test_dense_soft_labels_values(fill):
    q = dense_soft_labels(torch.tensor(VALS), torch.tensor(IDX), 5, fill=fill)
    assert q.shape == (2, 5) and q.dtype == torch.float32
    np.testing.assert_allclose(q.numpy(), expected_dense(VALS, IDX, 5, fill), atol=1e-7)
    np.testing.assert_allclose(q.sum(1).numpy(), [1.0, 1.0], atol=1e-6)


def test_dense_soft_labels_fp16_overshoot_and_full_k():
    # fp16 rounding: 0.7 + 0.3105 > 1 -> missing mass clamped to 0, never negative
    v = torch.tensor([[0.7, 0.3105]], dtype=torch.float16)
    q = dense_soft_labels(v, torch.tensor([[2, 0]]), 4)
    assert q.dtype == torch.float32
    assert (q >= 0).all() and q[0, 1] == 0 and q[0, 3] == 0
    assert q[0, 2].item() == pytest.approx(0.7, abs=1e-3)
    # K == C: nothing to spread, q is exactly the scattered values
    q = dense_soft_labels(torch.tensor([[0.5, 0.3, 0.2]]), torch.tensor([[2, 0, 1]]), 3)
    np.testing.assert_allclose(q.numpy(), [[0.3, 0.2, 0.5]], atol=1e-7)
    with pytest.raises(ValueError):
        dense_soft_labels(torch.tensor(VALS), torch.tensor(IDX), 5, fill="bogus")


@pytest.mark.parametrize("fill,temperature", [("marginal", 1.0), ("renorm", 2.0)])
def test_soft_label_ce_value(fill, temperature):
    logits = rand64(2, 5, seed=1)
    vals = torch.tensor(VALS, dtype=F64)
    loss = soft_label_ce(logits, vals, torch.tensor(IDX), fill=fill, temperature=temperature)
    q = expected_dense(VALS, IDX, 5, fill)
    qt = np.where(q > 0, q, 0.0) ** (1.0 / temperature)
    qt = qt / qt.sum(1, keepdims=True)  # Hinton's softened teacher q^(1/T) / sum q^(1/T)
    logp = np_log_softmax(logits.detach().numpy() / temperature)
    expected = np.mean([-(qt[b] * logp[b]).sum() for b in range(2)]) * temperature**2
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_soften_is_hinton_temperature():
    """soften(softmax(z), T) = softmax(z / T); zeros stay zero; T = 1 is the identity."""
    z = rand64(3, 6, seed=9).detach()
    for T in (0.5, 2.0, 4.0):
        torch.testing.assert_close(soften(z.softmax(1), T), (z / T).softmax(1), rtol=1e-12, atol=1e-14)
    q = torch.tensor([[0.6, 0.4, 0.0]], dtype=F64)
    np.testing.assert_allclose(soften(q, 2.0).numpy(), [[0.6**0.5 / (0.6**0.5 + 0.4**0.5), 0.4**0.5 / (0.6**0.5 + 0.4**0.5), 0.0]])
    assert soften(q, 1.0) is q
    with pytest.raises(ValueError, match="temperature"):
        soften(q, 0.0)


def test_soft_label_ce_full_topk_has_hinton_gradient():
    """With every class stored (K = C), soft_label_ce at T has the gradient of Hinton's
    T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) with respect to the student logits."""
    zt, zs = rand64(4, 5, seed=11).detach(), rand64(4, 5, seed=12)
    vals, idx = zt.softmax(1).topk(5, dim=1)
    T = 3.0
    soft_label_ce(zs, vals, idx, temperature=T).backward()
    ref = zs.detach().clone().requires_grad_(True)
    qt = (zt / T).softmax(1)
    (T * T * (qt * (qt.log() - F.log_softmax(ref / T, 1))).sum(1).mean()).backward()
    torch.testing.assert_close(zs.grad, ref.grad, rtol=1e-10, atol=1e-12)


def test_soft_label_ce_gradcheck_and_saturation():
    v, i = torch.tensor(VALS, dtype=F64), torch.tensor(IDX)
    assert gradcheck(lambda z: soft_label_ce(z, v, i, temperature=1.5), (rand64(2, 5, seed=2),))
    z = torch.tensor([[1e4, -1e4, 0.0, 3.0, -1e4], [-1e4] * 5], requires_grad=True)
    assert_finite_grad(soft_label_ce(z, v.half(), i), z)  # fp16 labels too
    z1 = torch.randn(1, 5, requires_grad=True)  # batch size 1
    assert_finite_grad(soft_label_ce(z1, v[:1], i[:1]), z1)


def test_ferkd_targets_bands():
    C, eps = 4, 0.1
    gt_prob = torch.tensor([0.01, 0.99, 0.05, 0.3, 0.5, 0.7, 0.95, 0.99, 0.01])
    gt = torch.tensor([0, 1, 2, 3, 0, 1, 2, -1, -1])
    B = len(gt)
    vals = torch.tensor([[0.6, 0.3]] * B)
    idx = torch.tensor([[1, 2]] * B)
    targets, keep, counts = ferkd_targets(vals, idx, gt, gt_prob, C, epsilon=eps)
    # mid = 0.5: [0.05, 0.5) softened, [0.5, 0.95] teacher, outside dropped; gt=-1 always teacher
    assert keep.tolist() == [False, False, True, True, True, True, True, True, True]
    assert counts == {"dropped_low": 1, "dropped_high": 1, "softened": 2, "teacher": 5}
    teacher_row = [0.05, 0.6, 0.3, 0.05]
    for b in range(B):
        if b in (2, 3):
            want = [eps / (C - 1)] * C
            want[gt[b]] = 1 - eps
        else:
            want = teacher_row
        np.testing.assert_allclose(targets[b].numpy(), want, atol=1e-6)
    np.testing.assert_allclose(targets.sum(1).numpy(), np.ones(B), atol=1e-6)
    # moving mid moves the soft/teacher boundary
    _, _, counts = ferkd_targets(vals, idx, gt, gt_prob, C, epsilon=eps, mid=0.8)
    assert counts == {"dropped_low": 1, "dropped_high": 1, "softened": 4, "teacher": 3}
    with pytest.raises(ValueError):
        ferkd_targets(vals, idx, gt, gt_prob, C, mid=0.99)


# ---------------------------------------------------------------------------
# KD


def test_kd_kl_value_with_zero_probs():
    z = rand64(3, 4, seed=3)
    q = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.25] * 4, [0.0, 0.0, 1.0, 0.0]], dtype=F64)
    T = 2.0
    logp = np_log_softmax(z.detach().numpy() / T)
    qt = soften(q, T)  # Hinton: the teacher at the same temperature
    expected = np.mean([sum(xlogx(qt[b, c].item()) - qt[b, c].item() * logp[b, c] for c in range(4)) for b in range(3)])
    loss = kd_kl(z, q, temperature=T)
    assert loss.item() == pytest.approx(expected * T * T, rel=1e-10)
    assert gradcheck(lambda x: kd_kl(x, q, temperature=T), (z,))
    # zero exactly when the student's logits are the teacher's (up to a shift), at any T
    zz = torch.log(torch.tensor([[0.1, 0.2, 0.7]], dtype=F64)) + 5.0
    assert kd_kl(zz, torch.tensor([[0.1, 0.2, 0.7]], dtype=F64), T).abs().item() < 1e-12


def test_kd_kl_saturated_finite():
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], requires_grad=True)
    q = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
    assert_finite_grad(kd_kl(z, q), z, q)


# ---------------------------------------------------------------------------
# ADL


def _bce_parts(xi, qi, alpha=0.5):
    """(KL, T, D) of one sigmoid output, from the formulas: p = 1/(1+e^-x), T = -(q log q + (1-q) log(1-q)),
    KL = q log(q/p) + (1-q) log((1-q)/(1-p)), D = -(alpha q log p + (1-alpha)(1-q) log(1-p))."""
    p = 1 / (1 + math.exp(-xi))
    kl = xlogx(qi) - qi * math.log(p) + xlogx(1 - qi) - (1 - qi) * math.log(1 - p)
    ent = -(xlogx(qi) + xlogx(1 - qi))
    d = -(alpha * qi * math.log(p) + (1 - alpha) * (1 - qi) * math.log(1 - p))
    return kl, ent, d


def adl_binary_ref(x, q, gamma, beta, theta, alpha=0.5):
    """The official kernel: Σ (1 - exp(-(KL + beta T)))^gamma · D / max(Σ q^theta, 1)."""
    num, n = 0.0, 0.0
    for xi, qi in zip(x, q):
        kl, ent, d = _bce_parts(xi, qi, alpha)
        num += (1 - math.exp(-(kl + beta * ent))) ** gamma * d
        n += qi**theta
    return num / max(n, 1.0)


def test_adl_binary_value():
    x = [0.3, -1.2, 2.0, 0.0, -0.5, 1.5]
    q = [0.0, 1.0, 0.9, 0.5, 0.2, 1.0]
    for gamma, beta, theta, alpha in [(2.0, 1.0, 1.8, 0.5), (1.5, 0.5, 1.0, 0.25)]:
        loss = adl_loss(torch.tensor(x, dtype=F64), torch.tensor(q, dtype=F64), gamma, beta, theta, alpha)
        assert loss.item() == pytest.approx(adl_binary_ref(x, q, gamma, beta, theta, alpha), rel=1e-10)
    # sum q^theta < 1 -> normaliser is 1
    small = [0.1, 0.2]
    loss = adl_loss(torch.tensor([0.5, -0.5], dtype=F64), torch.tensor(small, dtype=F64))
    assert loss.item() == pytest.approx(adl_binary_ref([0.5, -0.5], small, 2.0, 1.0, 1.8), rel=1e-10)


def test_adl_official_kernel_hand_example():
    """One output written out as the official caffe2 kernel computes it (LOSS_BETA 0, alpha 0.5, gamma 2):
    D_loss = BCE(x, q) + 0 * (q log q + ...);  loss = -(1 - e^-D_loss)^2 (q log p zp + (1-q) log(1-p) zn),
    zp = zn = 0.5 / max(q^1.8, 1). x = 1, q = 0.7: BCE = 0.7 * log(1 + e^-1) + 0.3 * (1 + log(1 + e^-1))."""
    sp = math.log1p(math.exp(-1.0))  # -log sigmoid(1)
    bce = 0.7 * sp + 0.3 * (1.0 + sp)
    want = (1 - math.exp(-bce)) ** 2 * 0.5 * bce / 1.0  # 0.7^1.8 < 1: normaliser 1
    got = adl_loss(torch.tensor([1.0], dtype=F64), torch.tensor([0.7], dtype=F64)).item()
    assert got == pytest.approx(want, rel=1e-12)


def test_adl_softmax_value():
    z = rand64(3, 4, seed=4)
    q = np.array([[0.7, 0.3, 0.0, 0.0], [0.25] * 4, [0.0, 0.0, 1.0, 0.0]])
    logp = np_log_softmax(z.detach().numpy())
    per = []
    for b in range(3):
        ce = -sum(q[b, c] * logp[b, c] for c in range(4))  # KL + T
        per.append((1 - math.exp(-ce)) ** 2.0 * ce)  # beta = 1: exponent KL + T = CE
    loss = adl_loss(z, torch.tensor(q), mode="softmax")
    assert loss.item() == pytest.approx(np.mean(per), rel=1e-10)
    with pytest.raises(ValueError):
        adl_loss(z, torch.tensor(q), mode="nope")


@pytest.mark.parametrize("mode", ["binary", "softmax"])
def test_adl_gradcheck(mode):
    g = torch.Generator().manual_seed(5)
    q = torch.rand(3, 4, generator=g, dtype=F64)
    q[0, 0], q[1, 1] = 0.0, 1.0  # edges inside the gradcheck too
    if mode == "softmax":
        q = q / q.sum(1, keepdim=True)
    x = rand64(3, 4, seed=6)
    assert gradcheck(lambda z: adl_loss(z, q, mode=mode), (x,))
    # (detach_weight=True is deliberately not the true gradient: see the formula test)


def test_adl_gradient_is_the_official_kernels():
    """The full gradient equals the official gradient kernel's, written out (alpha 0.5, gamma 2, beta 1):
    dX = -(-(q-p) γ AT^(γ-1) e^-DL DLoss + AT^γ (α(q-p) - (1-2α)(1-q)p)) / N,
    DL = BCE, AT = 1 - e^-DL, DLoss = α q log p + (1-α)(1-q) log(1-p)."""
    x = rand64(5, seed=7)
    q = torch.tensor([0.0, 1.0, 0.3, 0.8, 0.5], dtype=F64)
    (g_full,) = torch.autograd.grad(adl_loss(x, q), x)
    (g_det,) = torch.autograd.grad(adl_loss(x, q, detach_weight=True), x)
    xs, qs = x.detach().tolist(), q.tolist()
    n, a, gam = max(sum(v**1.8 for v in qs), 1.0), 0.5, 2.0
    for k in range(5):
        p, qk = 1 / (1 + math.exp(-xs[k])), qs[k]
        dl = -(qk * math.log(p) + (1 - qk) * math.log(1 - p))
        at = 1 - math.exp(-dl)
        dloss = a * qk * math.log(p) + (1 - a) * (1 - qk) * math.log(1 - p)
        want = -(-(qk - p) * gam * at ** (gam - 1) * math.exp(-dl) * dloss
                 + at**gam * (a * (qk - p) - (1 - 2 * a) * (1 - qk) * p)) / n
        assert g_full[k].item() == pytest.approx(want, rel=1e-9)
        # weight detached: only ADW * dD/dx = ADW * a * (p - q) at alpha 0.5
        assert g_det[k].item() == pytest.approx(at**gam * a * (p - qk) / n, rel=1e-9)
    assert not torch.allclose(g_det, g_full)


@pytest.mark.parametrize("mode", ["binary", "softmax"])
def test_adl_edges_finite(mode):
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], requires_grad=True)
    if mode == "binary":
        q = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 1.0]], requires_grad=True)
    else:
        q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    loss = adl_loss(x, q, mode=mode)
    assert_finite_grad(loss, x, q)
    # the wrong saturated case: student sure of the opposite of the teacher
    bad = adl_loss(torch.tensor([[-1e4, 1e4]]), torch.tensor([[1.0, 0.0]]), mode=mode)
    assert torch.isfinite(bad) and bad.item() > 1e3
    # perfect agreement at q in {0, 1}: loss 0, not NaN
    ok = adl_loss(torch.tensor([[1e4, -1e4]]), torch.tensor([[1.0, 0.0]]), mode=mode)
    assert ok.item() == pytest.approx(0.0, abs=1e-6)


def test_adl_select_unlabeled():
    probs = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.08, 0.92], [0.5, 0.5], [0.1, 0.9]])
    gt = torch.tensor([1, -1, -1, -1, 0])
    labels, mask = adl_select_unlabeled(probs, gt, threshold=0.9)
    assert labels.dtype == torch.long
    assert mask.tolist() == [True, False, True, False, True]
    assert labels[mask].tolist() == [1, 1, 0]


# ---------------------------------------------------------------------------
# RADI: uncertainty, Sinkhorn, pairwise


def test_mc_pair_uncertainty_value_and_grad():
    s = rand64(2, 5, 4, seed=8)
    U = mc_pair_uncertainty(s)
    a = s.detach().numpy()
    for b in range(2):
        for i in range(4):
            for j in range(4):
                assert U[b, i, j].item() == pytest.approx(np.std(a[b, :, i] - a[b, :, j]), abs=1e-12)
    assert gradcheck(lambda x: mc_pair_uncertainty(x)[:, 0, 1:], (s,))
    # zero std off the diagonal (candidates 0 and 1 move together): finite, zero there
    s2 = torch.randn(1, 6, 3, dtype=F64)
    s2[:, :, 1] = s2[:, :, 0] + 2.0
    s2.requires_grad_()
    U2 = mc_pair_uncertainty(s2)
    assert U2[0, 0, 1].item() == pytest.approx(0.0, abs=1e-7)
    assert_finite_grad(U2.sum(), s2)


def naive_sinkhorn(U: np.ndarray, eps: float, n_iter: int = 5000) -> np.ndarray:
    K = U.shape[0]
    G = np.exp(-U / eps) * (1 - np.eye(K))
    u, v = np.ones(K), np.ones(K)
    for _ in range(n_iter):
        u = (1 / K) / (G @ v)
        v = (1 / K) / (G.T @ u)
    return u[:, None] * G * v[None, :]


def check_plan(M: torch.Tensor, margin: float) -> None:
    K = M.shape[-1]
    W = M / margin
    P = W / (K * (K - 1))
    assert torch.isfinite(M).all()
    assert (P.sum(-1) - 1 / K).abs().max().item() < 1e-6
    assert (P.sum(-2) - 1 / K).abs().max().item() < 1e-6
    assert (W.sum(-1) - (K - 1)).abs().max().item() < 1e-4
    assert M.diagonal(dim1=-2, dim2=-1).abs().max().item() == 0.0


def test_sinkhorn_matches_naive_and_marginals():
    g = torch.Generator().manual_seed(9)
    U = torch.rand(3, 5, 5, generator=g, dtype=F64) * 2
    U = (U + U.transpose(1, 2)) / 2
    U[2] = torch.rand(5, 5, generator=g, dtype=F64) * 3  # asymmetric row too
    for eps in (1.0, 0.3):
        M = sinkhorn_margins(U, margin=0.5, epsilon=eps)
        check_plan(M, 0.5)
        for b in range(3):
            want = 0.5 * 5 * 4 * naive_sinkhorn(U[b].numpy(), eps)
            np.testing.assert_allclose(M[b].numpy(), want, atol=1e-7)


def test_sinkhorn_structure_and_edges():
    # equal uncertainty everywhere -> W = 1 on every off-diagonal pair
    M = sinkhorn_margins(torch.full((1, 4, 4), 0.7, dtype=F64), margin=2.0)
    np.testing.assert_allclose(M[0].numpy(), 2.0 * (1 - np.eye(4)), atol=1e-8)
    # two blocks: pairs inside the low-uncertainty blocks get larger margins than across
    U = torch.full((1, 6, 6), 2.0, dtype=F64)
    U[0, :3, :3] = 0.1
    U[0, 3:, 3:] = 0.1
    M = sinkhorn_margins(U)
    check_plan(M, 1.0)
    assert M[0, 0, 1] > 1.0 > M[0, 0, 4]
    # lowering one pair's uncertainty raises its margin
    g = torch.Generator().manual_seed(10)
    U = torch.rand(1, 7, 7, generator=g, dtype=F64) + 0.5
    U = (U + U.transpose(1, 2)) / 2
    U_low = U.clone()
    U_low[0, 2, 5] = U_low[0, 5, 2] = 0.1
    assert sinkhorn_margins(U_low)[0, 2, 5] > sinkhorn_margins(U)[0, 2, 5]
    # K = 2, batch 1, float32 in -> float32 out
    M = sinkhorn_margins(torch.tensor([[[0.0, 3.0], [0.2, 0.0]]]), margin=1.5)
    assert M.dtype == torch.float32
    np.testing.assert_allclose(M[0].numpy(), [[0, 1.5], [1.5, 0]], atol=1e-6)
    # small epsilon: exp(-U / eps) underflows to exactly 0 everywhere, a plain float64
    # Sinkhorn would divide by zero; the log-potential form stays exact
    U = 8.0 + 0.05 * torch.rand(2, 8, 8, generator=g, dtype=F64)
    assert torch.exp(-U / 0.01).max().item() == 0.0
    M = sinkhorn_margins(U, epsilon=0.01)
    check_plan(M, 1.0)
    with pytest.raises(ValueError):
        sinkhorn_margins(torch.zeros(1, 1, 1))


def test_sinkhorn_warns_when_not_converged():
    # U / eps spans 600: Sinkhorn converges slowly; the result is finite, columns exact
    U = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(11), dtype=F64) * 6
    with pytest.warns(RuntimeWarning, match="not converged"):
        M = sinkhorn_margins(U, epsilon=0.01, iters=200)
    assert torch.isfinite(M).all() and (M >= 0).all()
    P = M / (8 * 7)
    assert (P.sum(-2) - 1 / 8).abs().max().item() < 1e-12
    assert (P.sum(-1) - 1 / 8).abs().max().item() < 0.05


def test_bench_sinkhorn_smoke():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = bench_sinkhorn(batch=4, k=10, repeats=2)
    assert r["batch"] == 4 and r["k"] == 10 and 0 < r["seconds_per_call"] < 5


def pairwise_ref(s, t, m):
    total, n = 0.0, 0
    for b in range(len(s)):
        K = len(s[b])
        for i in range(K):
            for j in range(K):
                if t[b][i] > t[b][j]:
                    mij = m if isinstance(m, float) else m[b][i][j]
                    total += max(0.0, mij - (s[b][i] - s[b][j]))
                    n += 1
    return total / n if n else 0.0


def test_radi_pairwise_value_ties_and_margins():
    s = [[0.5, 1.7, -0.3, 0.2], [2.0, 0.1, 0.1, -1.0]]
    t = [[0.9, 0.1, 0.1, 0.4], [0.3, 0.3, 0.2, 0.8]]  # ties in both rows
    st, tt = torch.tensor(s, dtype=F64), torch.tensor(t, dtype=F64)
    assert radi_pairwise_loss(st, tt, 1.0).item() == pytest.approx(pairwise_ref(s, t, 1.0), rel=1e-12)
    M = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(12), dtype=F64) * 2
    assert radi_pairwise_loss(st, tt, M).item() == pytest.approx(pairwise_ref(s, t, M.tolist()), rel=1e-12)
    x = rand64(2, 4, seed=13, scale=3.0)
    assert gradcheck(lambda z: radi_pairwise_loss(z, tt, M), (x,))
    # all ties -> |R| = 0 -> loss 0, gradient 0
    z = torch.randn(1, 3, requires_grad=True)
    loss = radi_pairwise_loss(z, torch.ones(1, 3))
    assert loss.item() == 0.0
    (gz,) = torch.autograd.grad(loss, z)
    assert torch.equal(gz, torch.zeros_like(gz))
    # K = 2, saturated scores
    z = torch.tensor([[1e4, -1e4]], requires_grad=True)
    loss = radi_pairwise_loss(z, torch.tensor([[0.1, 0.9]]))
    assert loss.item() == pytest.approx(2e4 + 1.0)
    assert_finite_grad(loss, z)


# ---------------------------------------------------------------------------
# RADI: partial-list sampling


# ---------------------------------------------------------------------------
# RADI: listwise


def listmle_ref(s, t):
    out = []
    for sr, tr in zip(s, t):
        order = sorted(range(len(tr)), key=lambda i: -tr[i])
        sp = [sr[i] for i in order]
        # (1/L) sum_i [log sum_{k >= i} exp(s_pi(k)) - s_pi(i)]: mean per list position
        out.append(sum(math.log(sum(math.exp(x) for x in sp[i:])) - sp[i] for i in range(len(sp))) / len(sp))
    return float(np.mean(out))


def listnet_ref(s, t, T, noise=None):
    out = []
    for b, (sr, tr) in enumerate(zip(s, t)):
        q = np.exp(np.array(tr) / T)
        q /= q.sum()
        z = np.array(sr) / T + (0 if noise is None else noise[b])
        out.append(-(q * np_log_softmax(z)).sum())
    return float(np.mean(out))


def lambda_ref(s, t, sigma=1.0, mu=10.0):
    out = []
    for sr, tr in zip(s, t):
        L = len(sr)
        order = sorted(range(L), key=lambda i: -sr[i])  # student ranking
        ss = [sr[i] for i in order]
        ts = [tr[i] for i in order]
        D = [math.log2(1 + p) for p in range(1, L + 1)]
        max_dcg = sum((2 ** v - 1) / D[p] for p, v in enumerate(sorted(tr, reverse=True)))
        G = [(2 ** v - 1) / max_dcg for v in ts]
        loss = 0.0
        for i in range(L):
            for j in range(L):
                if ts[i] > ts[j]:
                    d = abs(i - j)
                    delta = abs(1 / math.log2(1 + d) - 1 / math.log2(2 + d))
                    rho = abs(1 / D[i] - 1 / D[j])
                    w = (mu * delta + rho) * abs(G[i] - G[j])
                    sig = 1 / (1 + math.exp(-sigma * (ss[i] - ss[j])))
                    loss -= w * math.log2(sig)
        out.append(loss)
    return float(np.mean(out))


S_LIST = [[0.3, -1.0, 2.2, 0.7, 0.1], [1.5, 0.4, -0.2, 0.9, -2.0]]
T_LIST = [[0.05, 0.6, 0.1, 0.2, 0.05], [0.1, 0.15, 0.3, 0.4, 0.05]]  # probabilities, a tie in row 0


def test_listwise_values():
    s, t = torch.tensor(S_LIST, dtype=F64), torch.tensor(T_LIST, dtype=F64)
    assert radi_listwise_loss(s, t, "listmle").item() == pytest.approx(listmle_ref(S_LIST, T_LIST), rel=1e-10)
    for T in (1.0, 0.5):
        got = radi_listwise_loss(s, t, "listnet", temperature=T).item()
        assert got == pytest.approx(listnet_ref(S_LIST, T_LIST, T), rel=1e-10)
    assert radi_listwise_loss(s, t, "lambda").item() == pytest.approx(lambda_ref(S_LIST, T_LIST), rel=1e-10)
    # ST-ListNet = ListNet on s/T + Gumbel noise drawn from the same generator stream
    u = torch.rand(2, 5, dtype=F64, generator=torch.Generator().manual_seed(5)).numpy()
    noise = -np.log(-np.log(u))
    got = radi_listwise_loss(s, t, "stlistnet", 0.5, generator=torch.Generator().manual_seed(5)).item()
    assert got == pytest.approx(listnet_ref(S_LIST, T_LIST, 0.5, noise), rel=1e-10)
    with pytest.raises(ValueError):
        radi_listwise_loss(s, t, "softrank")


def test_lambda_two_items_by_hand():
    # L = 2, student already right: w = (10 * delta + rho) |G1 - G2| with delta = rho = 1 - 1/log2(3)
    s, t = torch.tensor([[2.0, 1.0]], dtype=F64), torch.tensor([[0.9, 0.1]], dtype=F64)
    g1, g2 = 2**0.9 - 1, 2**0.1 - 1
    max_dcg = g1 + g2 / math.log2(3)
    w = 11 * (1 - 1 / math.log2(3)) * (g1 - g2) / max_dcg
    want = -w * math.log2(1 / (1 + math.exp(-1.0)))
    assert radi_listwise_loss(s, t, "lambda").item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("method", ["listmle", "listnet", "stlistnet", "lambda"])
def test_listwise_gradcheck_and_edges(method):
    t = torch.tensor(T_LIST, dtype=F64)

    def f(z):  # reseed so the ST-ListNet noise is identical across gradcheck's calls
        return radi_listwise_loss(z, t, method, 0.7, generator=torch.Generator().manual_seed(6))

    assert gradcheck(f, (rand64(2, 5, seed=15),))
    # saturated scores, ties in the teacher, K = 2, batch 1
    for z, tt in [
        (torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]]), torch.tensor([[0.2, 0.2, 0.6], [0.5, 0.25, 0.25]])),
        (torch.tensor([[0.3, -0.3]]), torch.tensor([[0.5, 0.5]])),
        (torch.tensor([[1e4, -1e4]]), torch.tensor([[0.0, 1.0]])),
    ]:
        z.requires_grad_()
        gen = torch.Generator().manual_seed(0)
        assert_finite_grad(radi_listwise_loss(z, tt, method, generator=gen), z)


def test_listmle_is_a_mean_per_position():
    """At uniform scores ListMLE is (1/L) sum_i log(L - i + 1) = log(L!) / L: it grows like log L, not L log L."""
    for L in (2, 10, 110):
        s, t = torch.zeros(1, L, dtype=F64), torch.linspace(1, 0, L, dtype=F64)[None]
        want = math.lgamma(L + 1) / L
        assert radi_listwise_loss(s, t, "listmle").item() == pytest.approx(want, rel=1e-12)
    assert math.lgamma(111) / 110 < 4  # the 110-answer list of the VideoQA experiment: ~3.7, not ~410


def test_shuffle_within_rows():
    from labelstore.trainers.losses import shuffle_within_rows

    g = torch.Generator().manual_seed(0)
    M = torch.rand(3, 6, 6, dtype=F64, generator=g)
    M.diagonal(dim1=1, dim2=2).fill_(0.0)
    out = shuffle_within_rows(M, torch.Generator().manual_seed(1))
    off = ~torch.eye(6, dtype=torch.bool)
    assert torch.equal(out.diagonal(dim1=1, dim2=2), M.diagonal(dim1=1, dim2=2))
    for b in range(3):
        for i in range(6):  # each row: the same multiset of off-diagonal margins ...
            assert sorted(out[b, i][off[i]].tolist()) == sorted(M[b, i][off[i]].tolist())
    assert not torch.equal(out, M)  # ... in another order
    again = shuffle_within_rows(M, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # seeded
    # uniform over the K-1 places: entry (i, j) lands at each other column about equally often
    K, n = 4, 6000
    base = torch.arange(K * K, dtype=F64).view(1, K, K).expand(n, K, K).clone()
    sh = shuffle_within_rows(base, torch.Generator().manual_seed(2))
    for j in (1, 2, 3):  # row 0: where did M[0, 1] go?
        freq = (sh[:, 0, j] == 1.0).double().mean().item()
        assert abs(freq - 1 / 3) < 5 * math.sqrt((1 / 3) * (2 / 3) / n)


def test_radi_objective():
    out = radi_objective(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), alpha=0.5, pair_weight=2.0, list_weight=4.0)
    assert out.item() == pytest.approx(1.0 + 0.5 * (2 * 2.0 + 4 * 3.0))


# ---------------------------------------------------------------------------
# TeachCLIP


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def pearson_ref(a, b):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-8)


def cgt_ref(s, t):
    Pr, Qr = np_softmax(s, 1), np_softmax(t, 1)
    Pc, Qc = np_softmax(s, 0), np_softmax(t, 0)
    d_rows = np.mean([1 - pearson_ref(Pr[i], Qr[i]) for i in range(s.shape[0])])
    d_cols = np.mean([1 - pearson_ref(Pc[:, j], Qc[:, j]) for j in range(s.shape[1])])
    return d_rows + d_cols


@pytest.mark.parametrize("shape", [(4, 4), (3, 5)])
def test_cgt_value_and_gradcheck(shape):
    s, t = rand64(*shape, seed=16), rand64(*shape, seed=17).detach()
    assert teachclip_cgt_loss(s, t).item() == pytest.approx(cgt_ref(s.detach().numpy(), t.numpy()), rel=1e-10)
    assert gradcheck(lambda z: teachclip_cgt_loss(z, t), (s,))
    # identical distributions -> distance ~0 (the +1e-8 leaves ~1e-8 / var(softmax) per row)
    assert teachclip_cgt_loss(t, t).item() == pytest.approx(0.0, abs=1e-5)


def test_cgt_batch_one_and_saturated():
    z = torch.tensor([[3.0]], requires_grad=True)  # constant softmax: pearson 0 thanks to +1e-8
    loss = teachclip_cgt_loss(z, torch.tensor([[1.0]]))
    assert loss.item() == pytest.approx(2.0)
    assert_finite_grad(loss, z)
    z = torch.tensor([[1e4, -1e4], [-1e4, 1e4]], requires_grad=True)
    assert_finite_grad(teachclip_cgt_loss(z, torch.randn(2, 2)), z)


def test_fgt_value_and_mask():
    s, t = rand64(3, 4, seed=18), torch.rand(3, 4, dtype=F64, generator=torch.Generator().manual_seed(19))
    logw = np_log_softmax(s.detach().numpy())
    want = -(t.numpy() * logw).sum() / 12
    assert teachclip_fgt_loss(s, t).item() == pytest.approx(want, rel=1e-10)
    assert gradcheck(lambda z: teachclip_fgt_loss(z, t), (s,))

    mask = torch.tensor([[True, True, False, False], [True, True, True, True], [False] * 4])
    t_pad = t.clone()
    t_pad[~mask] = float("nan")  # padded scores are garbage and must not leak
    total, n = 0.0, 0
    sn = s.detach().numpy()
    for b in range(3):
        valid = [f for f in range(4) if mask[b, f]]
        if not valid:
            continue
        lw = np_log_softmax(sn[b, valid])
        total += sum(t[b, f].item() * lw[k] for k, f in enumerate(valid))
        n += len(valid)
    loss = teachclip_fgt_loss(s, t_pad, mask)
    assert loss.item() == pytest.approx(-total / n, rel=1e-10)
    assert gradcheck(lambda z: teachclip_fgt_loss(z, t_pad, mask), (s,))
    (g,) = torch.autograd.grad(teachclip_fgt_loss(s, t_pad, mask), s)
    assert torch.isfinite(g).all() and (g[~mask] == 0).all()
    # nothing valid at all -> 0; batch 1
    z = torch.randn(1, 3, requires_grad=True)
    loss = teachclip_fgt_loss(z, torch.rand(1, 3), torch.zeros(1, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    assert_finite_grad(loss, z)


def test_infonce_sym_value():
    sim = rand64(3, 3, seed=20)
    a = sim.detach().numpy()
    rows = -np.mean([np_log_softmax(a[i])[i] for i in range(3)])
    cols = -np.mean([np_log_softmax(a[:, j])[j] for j in range(3)])
    assert infonce_sym(sim).item() == pytest.approx((rows + cols) / 2, rel=1e-10)
    assert gradcheck(infonce_sym, (sim,))


def test_attentional_frame_aggregation():
    torch.manual_seed(0)
    B, m, d = 2, 5, 8
    agg = AttentionalFrameAggregation(d).double()
    x = torch.randn(B, m, d, dtype=F64)
    video, w = agg(x)
    assert video.shape == (B, d) and w.shape == (B, m)
    # independent recomputation from the weights
    W1, b1 = agg.fc1.weight.detach().numpy(), agg.fc1.bias.detach().numpy()
    W2, b2 = agg.fc2.weight.detach().numpy(), agg.fc2.bias.detach().numpy()
    xn = x.numpy()
    w_ref = (np.maximum(xn @ W1.T + b1, 0) @ W2.T + b2)[..., 0]
    np.testing.assert_allclose(w.detach().numpy(), w_ref, atol=1e-10)
    a = np_softmax(w_ref / 0.1, 1)
    frames = xn / np.linalg.norm(xn, axis=-1, keepdims=True)
    v = (a[:, :, None] * frames).sum(1)
    np.testing.assert_allclose(video.detach().numpy(), v / np.linalg.norm(v, axis=-1, keepdims=True), atol=1e-10)

    # masked frames have no influence; an all-masked row gives a finite zero embedding
    mask = torch.tensor([[True, True, True, False, False], [False] * 5])
    x2 = x.clone()
    x2[0, 3:] = torch.randn(2, d, dtype=F64) * 100
    v1, _ = agg(x, mask)
    v2, _ = agg(x2, mask)
    torch.testing.assert_close(v1[0], v2[0])
    a0 = np_softmax(w_ref[0, :3] / 0.1, 0)
    v0 = (a0[:, None] * frames[0, :3]).sum(0)
    np.testing.assert_allclose(v1[0].detach().numpy(), v0 / np.linalg.norm(v0), atol=1e-10)
    assert torch.equal(v1[1], torch.zeros(d, dtype=F64))
    xg = x.clone().requires_grad_()
    ve, we = agg(xg, mask)
    assert_finite_grad(ve.sum() + teachclip_fgt_loss(we, torch.rand(B, m, dtype=F64), mask), xg)


def test_teachclip_objective_and_multi_teacher():
    assert teachclip_objective(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)).item() == pytest.approx(
        0.2 + 2.0 + 6.0
    )
    B, m = 3, 4
    s_sim, s_fr = rand64(B, B, seed=21), rand64(B, m, seed=22)
    t_sims = [torch.randn(B, B, dtype=F64) for _ in range(2)]
    t_frs = [torch.rand(B, m, dtype=F64) for _ in range(2)]
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])
    total, parts = teachclip_loss(s_sim, s_fr, t_sims, t_frs, mask, weights=(0.5, 1.5, 2.5))
    s_np, f_np = s_sim.detach().numpy(), s_fr.detach().numpy()
    cgt = np.mean([cgt_ref(s_np, t.numpy()) for t in t_sims])
    fgt_k = []
    for t in t_frs:
        tot, n = 0.0, 0
        for b in range(B):
            valid = [f for f in range(m) if mask[b, f]]
            lw = np_log_softmax(f_np[b, valid])
            tot += sum(t[b, f].item() * lw[k] for k, f in enumerate(valid))
            n += len(valid)
        fgt_k.append(-tot / n)
    fgt = np.mean(fgt_k)
    nce = (-np.mean([np_log_softmax(s_np[i])[i] for i in range(B)]) - np.mean([np_log_softmax(s_np[:, j])[j] for j in range(B)])) / 2
    assert parts["cgt"].item() == pytest.approx(cgt, rel=1e-10)
    assert parts["fgt"].item() == pytest.approx(fgt, rel=1e-10)
    assert parts["infonce"].item() == pytest.approx(nce, rel=1e-10)
    assert total.item() == pytest.approx(0.5 * nce + 1.5 * cgt + 2.5 * fgt, rel=1e-10)
    assert gradcheck(lambda a, b: teachclip_loss(a, b, t_sims, t_frs, mask)[0], (s_sim, s_fr))
    with pytest.raises(ValueError):
        teachclip_loss(s_sim, s_fr, t_sims, t_frs[:1])


def test_adl_official_form_differs_from_paper_form():
    """docs/losses.md, deviations: adl_loss is the official kernel, ADW · D with D the alpha-balanced BCE
    (alpha 0.5: BCE / 2 = (KL + T(q)) / 2); the paper writes ADW · KL. They differ by
    Σ ADW · (BCE / 2 - KL) / N = Σ ADW · (T(q) - KL) / (2N): the official form is not 0 where the
    student equals the teacher, and its scale is half the paper's where the teacher is sure."""
    x = np.array([2.0, -1.0, 0.5, 0.0])
    q = np.array([0.9, 0.05, 0.3, 0.6])
    p = 1.0 / (1.0 + np.exp(-x))
    bce = -(q * np.log(p) + (1 - q) * np.log(1 - p))
    ent = -(q * np.log(q) + (1 - q) * np.log(1 - q))
    kl = bce - ent
    adw = (1.0 - np.exp(-(kl + ent))) ** 2  # gamma = 2, beta = 1
    n = max((q**1.8).sum(), 1.0)
    paper, official = (adw * kl).sum() / n, (adw * 0.5 * bce).sum() / n
    ours = adl_loss(torch.tensor(x[None]), torch.tensor(q[None])).item()
    assert ours == pytest.approx(official, rel=1e-10)
    assert ours - paper == pytest.approx((adw * (0.5 * bce - kl)).sum() / n, rel=1e-10)
    assert official / paper - 1 == pytest.approx(1.8072, abs=1e-3)  # the figure quoted in docs/losses.md


# --- the dense testbed's losses (losses/focal.py), written out --------------------------------------


def test_sigmoid_focal_loss_value():
    x = [2.0, -1.0, 0.5, -3.0, 0.0]
    y = [1, 0, 1, 0, 0]
    total = 0.0
    for xi, yi in zip(x, y):
        p = 1 / (1 + math.exp(-xi))
        pt, at = (p, 0.25) if yi else (1 - p, 0.75)
        total += -at * (1 - pt) ** 2 * math.log(pt)
    got = sigmoid_focal_loss(torch.tensor(x, dtype=F64), torch.tensor(y, dtype=F64)).item()
    assert got == pytest.approx(total / 2, rel=1e-12)  # 2 positives
    none = sigmoid_focal_loss(torch.tensor([-2.0], dtype=F64), torch.tensor([0.0], dtype=F64)).item()
    p = 1 / (1 + math.exp(2.0))
    assert none == pytest.approx(-0.75 * p**2 * math.log(1 - p), rel=1e-12)  # no positive: normaliser 1
    assert torch.isfinite(sigmoid_focal_loss(torch.tensor([1e4, -1e4]), torch.tensor([0.0, 1.0])))


def test_bce_and_focal_distillation_values():
    x = [2.0, -1.0, 0.5, 0.0, -2.5]
    q = [0.9, 0.05, 0.3, 1.0, 0.0]
    y = [1, 0, 0, 1, 0]
    n = max(sum(v**1.8 for v in q), 1.0)
    bce = sum(_bce_parts(xi, qi)[2] for xi, qi in zip(x, q)) / n
    fdl = 0.0
    for xi, qi, yi in zip(x, q, y):
        p = 1 / (1 + math.exp(-xi))
        pt = p if yi else 1 - p
        fdl += (1 - pt) ** 2 * _bce_parts(xi, qi)[2]
    xt, qt, yt = (torch.tensor(v, dtype=F64) for v in (x, q, y))
    assert bce_distillation(xt, qt).item() == pytest.approx(bce, rel=1e-12)
    assert focal_distillation_loss(xt, qt, yt).item() == pytest.approx(fdl / n, rel=1e-12)
    # bce_distillation's gradient is the binary KL's: alpha (p - q) / N
    xg = xt.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(bce_distillation(xg, qt), xg)
    assert torch.allclose(g, 0.5 * (xt.sigmoid() - qt) / n, rtol=1e-12, atol=0)
    assert gradcheck(lambda z: focal_distillation_loss(z, qt, yt), (xg,))


def test_adl_select_images():
    q = torch.zeros(3, 2, 2, 4)
    q[0, 1, 0, 2] = 0.7
    q[1] = 0.3
    q[2, 0, 0, 0] = 0.5
    pseudo, keep = adl_select_images(q, threshold=0.5)
    assert keep.tolist() == [True, False, True]
    assert pseudo.sum().item() == 2 and pseudo[0, 1, 0, 2] == 1 and pseudo[2, 0, 0, 0] == 1


# --- sample_cold_full_ranking: cold lists over the teacher's full ranking -------------------------


def _full_weights(A: int, hot_k: int, scheme: str, alpha: float) -> np.ndarray:
    """w(k) for the 1-based absolute ranks k = hot_k+1..A (docs/losses.md), normalised."""
    k = np.arange(hot_k + 1, A + 1, dtype=np.float64)
    w = np.exp(-alpha * k) if scheme == "exp" else k ** (-alpha)
    return w / w.sum()


def _rank_of(idx: torch.Tensor, probs: torch.Tensor) -> np.ndarray:
    """1-based rank in the teacher's full ranking of each chosen answer id (probs distinct)."""
    order = np.argsort(-probs.numpy(), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(1, order.shape[1] + 1)[None].repeat(len(order), 0), axis=1)
    return np.take_along_axis(rank, idx.numpy(), axis=1)


def test_sample_cold_full_ranking_structure_and_seeded_draw():
    B, A, hot_k, cold_n = 3, 30, 4, 6
    g = torch.Generator().manual_seed(7)
    probs = torch.rand(B, A, generator=g, dtype=torch.float64).softmax(1)
    for scheme, alpha in (("exp", 0.2), ("zipf", 1.3)):
        idx = sample_cold_full_ranking(probs, hot_k, cold_n, scheme, alpha, torch.Generator().manual_seed(3))
        assert idx.shape == (B, hot_k + cold_n) and idx.dtype == torch.long
        # independent numpy reimplementation of the documented draw, from the same uniforms
        u = torch.rand((B, A - hot_k), dtype=torch.float64, generator=torch.Generator().manual_seed(3)).numpy()
        k = np.arange(hot_k + 1, A + 1, dtype=np.float64)
        log_w = -alpha * k if scheme == "exp" else -alpha * np.log(k)
        keys = log_w - np.log(-np.log(u))
        order = np.argsort(-probs.numpy(), axis=1, kind="stable")
        for b in range(B):
            cold = np.argsort(-keys[b], kind="stable")[:cold_n] + hot_k  # 0-based ranks
            ranks = np.sort(np.concatenate([np.arange(hot_k), cold]))
            assert idx[b].tolist() == order[b, ranks].tolist()
        ranks = _rank_of(idx, probs)
        assert (np.diff(ranks, axis=1) > 0).all()  # distinct, best first
        assert (ranks[:, :hot_k] == np.arange(1, hot_k + 1)).all()  # hot list = teacher's top hot_k
    same = sample_cold_full_ranking(probs, hot_k, cold_n, generator=torch.Generator().manual_seed(3))
    again = sample_cold_full_ranking(probs, hot_k, cold_n, generator=torch.Generator().manual_seed(3))
    assert torch.equal(same, again)
    with pytest.raises(ValueError, match="exceeds"):
        sample_cold_full_ranking(probs, 25, 6)
    with pytest.raises(ValueError, match="scheme"):
        sample_cold_full_ranking(probs, 2, 2, scheme="uniform")


@pytest.mark.parametrize("scheme,alpha", [("exp", 0.15), ("zipf", 1.0), ("zipf", 0.6)])
def test_sample_cold_full_ranking_single_draw_law(scheme, alpha):
    """cold_n = 1: P(rank k) = w(k) / sum w over k = hot_k+1..A, checked to 5 binomial std errors."""
    N, A, hot_k = 40000, 40, 3
    probs = torch.randperm(A, generator=torch.Generator().manual_seed(0)).double().add(1).expand(N, A)
    idx = sample_cold_full_ranking(probs, hot_k, 1, scheme, alpha, torch.Generator().manual_seed(11))
    k = _rank_of(idx, probs)[:, hot_k]  # the cold rank of every row
    freq = np.bincount(k, minlength=A + 1)[hot_k + 1:] / N
    p = _full_weights(A, hot_k, scheme, alpha)
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / N) + 1e-4)


def test_sample_cold_full_ranking_without_replacement_inclusion():
    """cold_n = 3 of 6 ranks: inclusion probabilities of successive sampling, enumerated exactly."""
    import itertools

    N, A, hot_k, cold_n = 40000, 7, 1, 3
    w = _full_weights(A, hot_k, "zipf", 1.5)
    incl = np.zeros(A - hot_k)
    for seq in itertools.permutations(range(A - hot_k), cold_n):
        pr, left = 1.0, 1.0
        for j in seq:
            pr *= w[j] / left
            left -= w[j]
        incl[list(seq)] += pr
    probs = torch.linspace(1.0, 0.1, A, dtype=torch.float64).expand(N, A)
    idx = sample_cold_full_ranking(probs, hot_k, cold_n, "zipf", 1.5, torch.Generator().manual_seed(5))
    assert len(set(map(tuple, idx.tolist()))) > 1
    cold = _rank_of(idx, probs)[:, hot_k:] - hot_k - 1  # [N, cold_n] 0-based cold offsets
    assert (np.diff(cold, axis=1) > 0).all()  # without replacement
    freq = np.bincount(cold.ravel(), minlength=A - hot_k) / N
    assert incl.sum() == pytest.approx(cold_n)
    assert np.all(np.abs(freq - incl) <= 5 * np.sqrt(incl * (1 - incl) / N))


def test_sample_cold_full_ranking_reaches_beyond_stored_top_k():
    """The point of the full ranking: with exp(-0.005 k), hot 10, A = 1000, P(k > 64) = 0.761,
    i.e. three quarters of single cold draws fall outside a stored top-64."""
    N, A, hot_k = 20000, 1000, 10
    probs = torch.linspace(1.0, 0.0, A, dtype=torch.float64).expand(N, A)  # answer id = rank - 1
    p = _full_weights(A, hot_k, "exp", 0.005)
    beyond = p[64 - hot_k:].sum()  # ranks 65..1000
    assert beyond == pytest.approx(0.761, abs=1e-3)
    idx = sample_cold_full_ranking(probs, hot_k, 1, "exp", None, torch.Generator().manual_seed(2))
    frac = (idx[:, hot_k] >= 64).double().mean().item()
    assert abs(frac - beyond) <= 5 * math.sqrt(beyond * (1 - beyond) / N)
