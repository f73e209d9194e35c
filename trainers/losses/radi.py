"""RADI ranking distillation (Liang et al., CVPR 2024).

A teacher scores a list of candidate answers per question; the student learns
the teacher's *ranking* with a pairwise hinge (optionally with margins that grow
where the teacher's Monte-Carlo-dropout scores are consistent) and a listwise
loss on a partial list (the teacher's top "hot" answers plus sampled "cold" ones).

Shapes: B batch, K or L list length, V full vocabulary of answers, T MC passes.
"""

from __future__ import annotations

import math
import time
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from labelstore.errors import ConfigError

# ---------------------------------------------------------------------------
# pairwise: uncertainty -> Sinkhorn margins -> hinge


def mc_pair_uncertainty(mc_scores: Tensor) -> Tensor:
    """Pairwise uncertainty from T Monte-Carlo passes.

    mc_scores: [B, T, K] -> U: [B, K, K] (same dtype)
        U[b, i, j] = population std over t of (s[b, t, i] - s[b, t, j])
    Computed as sqrt(var_i + var_j - 2 cov_ij) from the [B, K, K] covariance in float64
    (O(B K^2) memory; float64 keeps the cancellation harmless), clamped at 0 against
    rounding. Symmetric, zero diagonal; value and gradient finite where the std is 0
    (gradient 0 there).
    """
    s = mc_scores.to(torch.float64)
    c = s - s.mean(dim=1, keepdim=True)  # [B, T, K], centred over the passes
    cov = torch.bmm(c.transpose(1, 2), c) / s.shape[1]  # [B, K, K]
    var_i = cov.diagonal(dim1=1, dim2=2)  # [B, K]
    var = (var_i[:, :, None] + var_i[:, None, :] - 2 * cov).clamp_min(0.0)  # [B, K, K]
    eye = torch.eye(s.shape[2], dtype=torch.bool, device=s.device)
    pos = (var > 0) & ~eye
    std = torch.where(pos, torch.where(pos, var, torch.ones_like(var)).sqrt(), torch.zeros_like(var))
    return std.to(mc_scores.dtype)


def sinkhorn_margins(
    U: Tensor,
    margin: float = 1.0,
    epsilon: float = 1.0,
    iters: int = 200,
    tol: float = 1e-9,
) -> Tensor:
    """Uncertainty-aware pairwise margins by entropic optimal transport (no gradient).

    U: [B, K, K] pairwise uncertainty (K >= 2) -> M: [B, K, K] (U's dtype)
        G[i, j] = exp(-U[i, j] / epsilon) for i != j,  G[i, i] = 0
        P = diag(u) G diag(v) with every row and every column summing to 1/K (Sinkhorn)
        W = K (K - 1) P      (averages 1 over the K(K-1) off-diagonal pairs; rows sum to K - 1)
        M = margin * W       (low uncertainty -> larger margin; zero diagonal)
    Stops when the max marginal error < tol, or after `iters` scaling steps with a
    RuntimeWarning. Margins are constants: computed under no_grad.

    Numerics: float64 throughout. Scaling steps u = r / (P v), v = c / (P^T u) on a
    kernel kept in log-potential form, P_ij = exp(a_i + b_j - U_ij / epsilon): a_i makes
    each row's largest entry 1, b is an exact first column step (log-sum-exp if a column
    would underflow), and u, v are absorbed into (a, b) whenever they leave [e^-30, e^30].
    So a small epsilon neither under- nor overflows while each step costs two batched
    mat-vecs. Vectorised over the batch.
    """
    with torch.no_grad():
        return _sinkhorn_margins(U, margin, epsilon, iters, tol)


def _sinkhorn_margins(U: Tensor, margin: float, epsilon: float, iters: int, tol: float) -> Tensor:
    B, K, K2 = U.shape
    if K != K2 or K < 2:
        raise ConfigError(f"U must be [B, K, K] with K >= 2, got {tuple(U.shape)}")
    if epsilon <= 0:
        raise ConfigError(f"epsilon must be > 0, got {epsilon}")
    out_dtype = U.dtype if U.is_floating_point() else torch.float32
    log_kernel = U.to(torch.float64) / -epsilon  # [B, K, K], log G
    log_kernel.diagonal(dim1=1, dim2=2).fill_(-math.inf)
    target = 1.0 / K  # row and column marginals

    a = -log_kernel.amax(dim=2)  # [B, K]: each row's largest kernel entry becomes 1
    P = (log_kernel + a[:, :, None]).exp_()  # [B, K, K]
    col = P.sum(dim=1)  # [B, K]
    if (col > 0).all():
        b = math.log(target) - col.log()  # [B, K]
        P.mul_((target / col)[:, None, :])  # columns now sum to 1/K
    else:  # some column underflowed entirely (tiny epsilon): do the column step in log space
        b = math.log(target) - torch.logsumexp(log_kernel + a[:, :, None], dim=1)
        P = (log_kernel + a[:, :, None] + b[:, None, :]).exp_()

    u = torch.ones(B, K, 1, dtype=torch.float64, device=U.device)
    v = torch.ones(B, K, 1, dtype=torch.float64, device=U.device)
    converged = False
    for _ in range(iters):
        Pv = torch.bmm(P, v)  # [B, K, 1]; columns are exact here, rows are u * Pv
        if (u * Pv - target).abs().max().item() < tol:
            converged = True
            break
        u = target / Pv
        v = target / torch.bmm(u.transpose(1, 2), P).transpose(1, 2)  # [B, K, 1]
        log_u, log_v = u.log(), v.log()
        if max(log_u.abs().max().item(), log_v.abs().max().item()) > 30.0:
            a = a + log_u.squeeze(2)
            b = b + log_v.squeeze(2)
            P = (log_kernel + a[:, :, None] + b[:, None, :]).exp_()
            u, v = torch.ones_like(u), torch.ones_like(v)
    if not converged:
        err = (u * torch.bmm(P, v) - target).abs().max().item()
        if not err < tol:
            warnings.warn(
                f"sinkhorn_margins: not converged after {iters} iterations (max marginal error "
                f"{err:.2e}); increase iters or epsilon",
                RuntimeWarning,
                stacklevel=3,
            )
    # M = margin * K (K - 1) * diag(u) P diag(v), in place on P
    P.mul_(u * (margin * K * (K - 1))).mul_(v.transpose(1, 2))
    return P.to(out_dtype)


def bench_sinkhorn(batch: int = 256, k: int = 100, repeats: int = 5) -> dict:
    """Time sinkhorn_margins on realistic uncertainties (U from 8 MC passes).

    Returns {"batch", "k", "repeats", "seconds_per_call" (median), "seconds_min", "device", "threads"}.
    """
    g = torch.Generator().manual_seed(0)
    base = torch.randn(batch, 1, k, generator=g)
    noise_scale = 0.1 + torch.rand(batch, 1, k, generator=g)  # per-candidate uncertainty
    mc = base + noise_scale * torch.randn(batch, 8, k, generator=g)  # [B, 8, K]
    U = mc_pair_uncertainty(mc)
    sinkhorn_margins(U)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sinkhorn_margins(U)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "batch": batch,
        "k": k,
        "repeats": repeats,
        "seconds_per_call": times[len(times) // 2],
        "seconds_min": times[0],
        "device": "cpu",
        "threads": torch.get_num_threads(),
    }


def radi_pairwise_loss(
    student_scores: Tensor, teacher_scores: Tensor, margins: float | Tensor = 1.0
) -> Tensor:
    """Pairwise margin ranking loss over the pairs the teacher orders strictly.

    student_scores, teacher_scores: [B, K]; margins: float or M [B, K, K].
        R    = {(b, i, j): teacher_scores[b, i] > teacher_scores[b, j]}    (ties excluded)
        loss = (1/|R|) sum_R max(0, M[b, i, j] - (s[b, i] - s[b, j]))
    |R| = 0 gives 0 (still attached to the graph, gradient 0).
    """
    s, t = student_scores, teacher_scores
    in_r = t[:, :, None] > t[:, None, :]  # [B, K, K]
    diff = s[:, :, None] - s[:, None, :]  # [B, K, K], s_i - s_j
    hinge = F.relu(margins - diff)  # [B, K, K]
    n = in_r.sum().clamp_min(1)
    return torch.where(in_r, hinge, torch.zeros_like(hinge)).sum() / n


def shuffle_within_rows(M: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The control of adaptive margins: each row's off-diagonal entries in a random order.

    M: [B, K, K] -> [B, K, K], out[b, i, j] = M[b, i, pi_bi(j)] for j != i, pi_bi a uniform random
    permutation of {j != i} (one per row, from `generator`), out[b, i, i] = M[b, i, i]. Row sums (and
    so the mean margin per answer) are kept; which pair of the row gets which margin is not.
    """
    B, K, _ = M.shape
    off = ~torch.eye(K, dtype=torch.bool, device=M.device)
    vals = M[:, off].view(B, K, K - 1)  # [B, K, K-1], row i without its diagonal
    keys = torch.rand((B, K, K - 1), generator=generator, dtype=torch.float64).to(M.device)
    perm = keys.argsort(dim=2)  # [B, K, K-1], uniform random permutations
    out = M.clone()
    out[:, off] = vals.gather(2, perm).reshape(B, K * (K - 1))
    return out


# ---------------------------------------------------------------------------
# listwise: partial-list sampling and list losses

DEFAULT_ALPHA = {"exp": 0.005, "zipf": 1.0}


def _check_partial_list(scheme: str, alpha: float | None, hot_k: int, cold_n: int, n: int, what: str) -> float:
    """Validate a partial-list request over n candidates per row; returns alpha (the scheme's default if None)."""
    if scheme not in DEFAULT_ALPHA:
        raise ConfigError(f"scheme must be one of {tuple(DEFAULT_ALPHA)}, got {scheme!r}")
    if hot_k < 0 or cold_n < 0:
        raise ConfigError(f"hot_k and cold_n must be >= 0, got {hot_k}, {cold_n}")
    if hot_k + cold_n > n:
        raise ConfigError(f"hot_k + cold_n = {hot_k + cold_n} exceeds the {n} {what} per row")
    return DEFAULT_ALPHA[scheme] if alpha is None else alpha


def sample_cold_full_ranking(
    teacher_probs: Tensor,
    hot_k: int,
    cold_n: int,
    scheme: str = "exp",
    alpha: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Partial list over the teacher's FULL ranking (RADI as in the paper): hot top-hot_k + cold_n.

    teacher_probs: [B, A] the teacher's distribution over all A answers -> idx: [B, hot_k + cold_n]
    answer ids (long), sorted by teacher probability, best first (ties: lower id first).
    With k = 1..A the 1-based rank in the teacher's full ranking (k = 1 is the best answer), the
    cold list is cold_n distinct ranks from k = hot_k+1..A drawn without replacement, one at a
    time, each draw with probability proportional to
        w(k) = exp(-alpha * k)   scheme="exp"   (default alpha 0.005)
        w(k) = k^(-alpha)        scheme="zipf"  (default alpha 1.0)
    among the ranks not yet drawn (successive sampling). Exact, by the Gumbel-top-k identity:
        g_k = log w(k) - log(-log u_k),  u = torch.rand([B, A - hot_k], float64, generator)
        cold = the cold_n ranks with the largest g_k
    (one rand call per call of this function, so a seeded generator gives a fixed draw).
    k is the absolute rank (not the rank among the rest): for exp the law is the same either way,
    for zipf it is not.
    """
    if teacher_probs.dim() != 2:
        raise ConfigError(f"teacher_probs must be [B, A], got shape {tuple(teacher_probs.shape)}")
    B, A = teacher_probs.shape
    alpha = _check_partial_list(scheme, alpha, hot_k, cold_n, A, "answers")
    order = torch.argsort(teacher_probs, dim=1, descending=True, stable=True)  # [B, A] ids by rank
    ranks = torch.arange(hot_k, device=order.device).expand(B, hot_k)  # [B, hot_k] 0-based
    if cold_n > 0:
        k = torch.arange(hot_k + 1, A + 1, dtype=torch.float64, device=order.device)  # [A - hot_k]
        log_w = -alpha * k if scheme == "exp" else -alpha * torch.log(k)
        u = torch.rand((B, A - hot_k), dtype=torch.float64, generator=generator)  # [B, A - hot_k]
        u = u.clamp_min(torch.finfo(torch.float64).tiny).to(order.device)
        keys = log_w - torch.log(-torch.log(u))  # [B, A - hot_k] Gumbel-perturbed log weights
        cold = keys.topk(cold_n, dim=1).indices  # [B, cold_n] 0-based offsets after the hot list
        ranks = torch.cat([ranks, hot_k + cold], dim=1)
    ranks, _ = ranks.sort(dim=1)  # best first
    return order.gather(1, ranks)


LIST_METHODS = ("listmle", "listnet", "stlistnet", "lambda")


def _gumbel_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """i.i.d. Gumbel(0, 1) noise, -log(-log U); U is kept off 0 so the noise is finite."""
    u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    u = u.clamp_min(torch.finfo(x.dtype).tiny)  # rand is in [0, 1): only the (measure-zero) 0 moves
    return -torch.log(-torch.log(u))


def _lambda_loss(s: Tensor, t: Tensor, sigma: float = 1.0, mu: float = 10.0) -> Tensor:
    """LambdaLoss, NDCG-Loss2++ weights (allRank's lambdaLoss, weighing_scheme="ndcgLoss2PP_scheme",
    k=None), reduced as a sum over pairs per row and a mean over rows. See radi_listwise_loss."""
    B, L = s.shape
    order = torch.argsort(s.detach(), dim=1, descending=True, stable=True)  # student ranking
    s_sorted = s.gather(1, order)  # [B, L]
    t_sorted = t.gather(1, order)  # [B, L], teacher values in student order
    t_ideal, _ = t.sort(dim=1, descending=True)  # [B, L]

    pos = torch.arange(1, L + 1, dtype=s.dtype, device=s.device)  # [L]
    D = torch.log2(1 + pos)  # [L], discount of position i
    max_dcg = ((torch.exp2(t_ideal) - 1) / D).sum(dim=1, keepdim=True)  # [B, 1]
    G = (torch.exp2(t_sorted) - 1) / max_dcg.clamp_min(torch.finfo(s.dtype).tiny)  # [B, L]
    G_diff = (G[:, :, None] - G[:, None, :]).abs()  # [B, L, L]

    gap = (pos[:, None] - pos[None, :]).abs()  # [L, L], |i - j|
    gap_safe = gap.clamp_min(1)  # the diagonal (gap 0) is zeroed below
    delta = (1 / torch.log2(1 + gap_safe) - 1 / torch.log2(2 + gap_safe)).abs()  # [L, L]
    delta = delta.masked_fill(gap == 0, 0.0)
    rho = (1 / D[:, None] - 1 / D[None, :]).abs()  # [L, L], LambdaRank |1/D_i - 1/D_j|
    weights = (mu * delta + rho) * G_diff  # [B, L, L]

    pairs = t_sorted[:, :, None] > t_sorted[:, None, :]  # [B, L, L]
    diff = s_sorted[:, :, None] - s_sorted[:, None, :]  # [B, L, L]
    pair_loss = -weights * F.logsigmoid(sigma * diff) / math.log(2)  # -w * log2 sigmoid
    pair_loss = torch.where(pairs, pair_loss, torch.zeros_like(pair_loss))
    return pair_loss.sum(dim=(1, 2)).mean()


def radi_listwise_loss(
    student_scores: Tensor,
    teacher_scores: Tensor,
    method: str = "listmle",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Listwise ranking distillation on a (partial) list. Returns a scalar (mean over rows).

    student_scores s, teacher_scores t: [B, L].
    "listmle"  (Xia et al. 2008): pi = teacher order, best first (stable: ties by position)
               loss_b = (1/L) sum_{i=1..L} [ logsumexp(s_pi(i), ..., s_pi(L)) - s_pi(i) ]
               (normalised per list position, so its scale does not grow with L: at uniform
               scores it is (1/L) log L!, about log(L) - 1, not log L!)
    "listnet"  (Cao et al. 2007): loss_b = -sum_i softmax(t/T)_i * log_softmax(s/T)_i
    "stlistnet": ListNet with s/T replaced by s/T + g, g ~ Gumbel(0, 1) i.i.d. (from `generator`)
    "lambda"   (Wang et al. 2018, NDCG-Loss2++, sigma = 1, mu = 10): t are probabilities,
               gains 2^t - 1; positions i, j are 1-based ranks by the student's scores,
               D_i = log2(1 + i), G_i = (2^t_i - 1) / maxDCG, maxDCG = sum_i (2^t_(i) - 1) / D_i
               over the teacher-sorted list,
               delta_ij = |1/log2(1 + |i-j|) - 1/log2(2 + |i-j|)|  (0 on the diagonal),
               w_ij = (mu * delta_ij + |1/D_i - 1/D_j|) * |G_i - G_j|,
               loss_b = -sum_{(i,j): t_i > t_j} w_ij * log2 sigmoid(sigma (s_i - s_j)).
               The weights carry no gradient (they depend on ranks and the teacher only).
    temperature T applies to "listnet" and "stlistnet" only.
    """
    s, t = student_scores, teacher_scores.to(student_scores.dtype)
    if method == "listmle":
        order = torch.argsort(t, dim=1, descending=True, stable=True)  # [B, L]
        s_pi = s.gather(1, order)  # [B, L]
        suffix_lse = torch.logcumsumexp(s_pi.flip(1), dim=1).flip(1)  # [B, L], lse(s_pi(i..L))
        return (suffix_lse - s_pi).mean(dim=1).mean()  # mean per list position, then over rows
    if method in ("listnet", "stlistnet"):
        logits = s / temperature
        if method == "stlistnet":
            logits = logits + _gumbel_like(logits, generator)
        q = F.softmax(t / temperature, dim=1)
        return -(q * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    if method == "lambda":
        return _lambda_loss(s, t)
    raise ConfigError(f"method must be one of {LIST_METHODS}, got {method!r}")


def radi_objective(
    cls_loss: Tensor,
    pair_loss: Tensor,
    list_loss: Tensor,
    alpha: float = 1.0,
    pair_weight: float = 1.0,
    list_weight: float = 1.0,
) -> Tensor:
    """RADI total: L = L_cls + alpha * (pair_weight * L_pair + list_weight * L_list)."""
    return cls_loss + alpha * (pair_weight * pair_loss + list_weight * list_loss)
