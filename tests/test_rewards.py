"""Tests of ebft.rewards: rewards, RLOO baselines, CFM estimator, unbiased gradients (docs/algorithm.md §5, §7, §8)."""

from __future__ import annotations

import itertools

import pytest
import torch

from ebft.rewards import (
    alignment,
    block_to_token_advantages,
    cfm_loss,
    diversity,
    diversity_baseline,
    feature_matching_reward,
    group_normalized_advantages,
    rloo_advantages,
    rloo_baseline,
    rloo_baselines,
)

DT = torch.float64


def _normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=dim)


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return _normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT), dim=-1)


# ----------------------------------------------------------------------------------------------- rewards


def test_alignment_is_two_when_sample_equals_gt() -> None:
    psi = _unit(3, 5, 8, seed=0)  # [B, K, D]
    phi = psi.unsqueeze(-2).expand(3, 5, 4, 8)  # every sample equals the ground truth
    a = alignment(phi, psi)
    assert a.shape == (3, 5, 4)
    torch.testing.assert_close(a, torch.full_like(a, 2.0))


def test_alignment_values_and_scale_invariance() -> None:
    phi = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]]], dtype=DT)
    psi = torch.tensor([[5.0, 0.0]], dtype=DT)
    torch.testing.assert_close(alignment(phi, psi), torch.tensor([[2.0, 0.0, -2.0]], dtype=DT))
    # Per-sample ground truth [..., n, D] (whitened form) gives the same result when rows equal psi.
    torch.testing.assert_close(alignment(phi, psi.unsqueeze(-2).expand(1, 3, 2)), alignment(phi, psi))
    # Zero vectors do not produce NaN.
    assert torch.isfinite(alignment(torch.zeros(1, 2, 3), torch.zeros(1, 3))).all()


def test_alignment_bad_gt_shape() -> None:
    with pytest.raises(ValueError, match="gt_feats"):
        alignment(torch.randn(2, 3, 4), torch.randn(4))


def test_bf16_features_give_float32_rewards() -> None:
    phi = _unit(2, 4, 16, seed=1).to(torch.bfloat16)
    psi = _unit(2, 16, seed=2).to(torch.bfloat16)
    out = feature_matching_reward(phi, psi)
    assert out.reward.dtype == torch.float32
    assert cfm_loss(phi, psi).dtype == torch.float32


def test_diversity_n1_is_zero_and_n2_is_shared_dot() -> None:
    phi1 = _unit(3, 1, 6, seed=3)
    torch.testing.assert_close(diversity(phi1), torch.zeros(3, 1, dtype=DT))
    phi2 = torch.randn(3, 2, 6, generator=torch.Generator().manual_seed(4), dtype=DT)
    dot = (phi2[:, 0] * phi2[:, 1]).sum(-1)
    torch.testing.assert_close(diversity(phi2), torch.stack([2 * dot, 2 * dot], dim=-1))


def test_diversity_general_n_matches_definition() -> None:
    phi = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(5), dtype=DT)
    d = diversity(phi)
    n = phi.shape[-2]
    for b in range(2):
        for i in range(n):
            expected = 2 * sum((phi[b, i] @ phi[b, j]).item() for j in range(n) if j != i) / (n - 1)
            assert abs(d[b, i].item() - expected) < 1e-12


def test_feature_matching_reward_combines_terms() -> None:
    phi, psi = _unit(2, 3, 4, 5, seed=6), _unit(2, 3, 5, seed=7)
    out = feature_matching_reward(phi, psi, alpha=0.7, beta=0.3)
    torch.testing.assert_close(out.alignment, alignment(phi, psi))
    torch.testing.assert_close(out.diversity, diversity(phi))
    torch.testing.assert_close(out.reward, 0.7 * out.alignment - 0.3 * out.diversity)
    assert out.reward.shape == (2, 3, 4)


# ----------------------------------------------------------------------------------------------- baselines


def test_rloo_baseline_generic() -> None:
    r = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]], dtype=DT)
    torch.testing.assert_close(rloo_baseline(r), torch.tensor([[4.0, 3.5, 1.5], [1.5, 1.5, 0.0]], dtype=DT))
    torch.testing.assert_close(rloo_baseline(torch.tensor([[5.0]])), torch.zeros(1, 1))


@pytest.mark.parametrize("n", [3, 4, 6])
def test_rloo_advantages_sum_to_zero(n: int) -> None:
    phi, psi = _unit(2, 7, n, 5, seed=10 + n), _unit(2, 7, 5, seed=20 + n)
    for alpha, beta in [(1.0, 1.0), (0.7, 0.3), (1.0, 0.0), (0.0, 2.0)]:
        out = feature_matching_reward(phi, psi, alpha, beta)
        adv = rloo_advantages(out.alignment, out.diversity, alpha, beta)
        assert adv.shape == (2, 7, n)
        torch.testing.assert_close(adv.sum(-1), torch.zeros(2, 7, dtype=DT), atol=1e-12, rtol=0)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_diversity_baseline_is_mean_pairwise_dot_of_others(n: int) -> None:
    phi = torch.randn(3, n, 4, generator=torch.Generator().manual_seed(30 + n), dtype=DT)
    bd = diversity_baseline(diversity(phi))
    for b in range(3):
        for i in range(n):
            others = [j for j in range(n) if j != i]
            pairs = [(j, k) for j in others for k in others if j != k]
            assert len(pairs) == (n - 1) * (n - 2)
            expected = 2 * sum((phi[b, j] @ phi[b, k]).item() for j, k in pairs) / len(pairs)
            assert abs(bd[b, i].item() - expected) < 1e-12


@pytest.mark.parametrize("n", [2, 3, 4])
def test_baseline_unchanged_when_sample_replaced(n: int) -> None:
    gen = torch.Generator().manual_seed(40 + n)
    phi = _normalize(torch.randn(n, 6, generator=gen, dtype=DT), dim=-1)
    psi = _normalize(torch.randn(6, generator=gen, dtype=DT), dim=-1)
    alpha, beta = 0.8, 0.6
    out = feature_matching_reward(phi, psi, alpha, beta)
    base = rloo_baselines(out.alignment, out.diversity, alpha, beta)
    for i in range(n):
        replaced = phi.clone()
        replaced[i] = _normalize(torch.randn(6, generator=gen, dtype=DT), dim=-1)
        out_r = feature_matching_reward(replaced, psi, alpha, beta)
        base_r = rloo_baselines(out_r.alignment, out_r.diversity, alpha, beta)
        assert abs(base_r[i].item() - base[i].item()) < 1e-12
        assert (out_r.reward[i] - out.reward[i]).abs() > 1e-6  # the reward itself did change


def test_n2_and_n1_behaviour() -> None:
    phi, psi = _unit(4, 2, 5, seed=50), _unit(4, 5, seed=51)
    out = feature_matching_reward(phi, psi, 1.0, 0.5)
    torch.testing.assert_close(diversity_baseline(out.diversity), torch.zeros(4, 2, dtype=DT))
    adv = rloo_advantages(out.alignment, out.diversity, 1.0, 0.5)
    a, d = out.alignment, out.diversity
    torch.testing.assert_close(adv[:, 0], a[:, 0] - a[:, 1] - 0.5 * d[:, 0])
    torch.testing.assert_close(adv.sum(-1), -2 * 0.5 * d[:, 0])  # diversity not centred (documented)
    phi1 = _unit(4, 1, 5, seed=52)
    out1 = feature_matching_reward(phi1, psi)
    torch.testing.assert_close(rloo_advantages(out1.alignment, out1.diversity), out1.reward)


def test_rloo_advantages_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        rloo_advantages(torch.zeros(2, 3), torch.zeros(2, 4))


def test_group_normalized_advantages() -> None:
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [2.0, 2.0, 2.0, 2.0]], dtype=DT)
    adv = group_normalized_advantages(r, eps=1e-12)
    torch.testing.assert_close(adv[0].mean(), torch.tensor(0.0, dtype=DT), atol=1e-12, rtol=0)
    torch.testing.assert_close(adv[0].std(), torch.tensor(1.0, dtype=DT))
    torch.testing.assert_close(adv[1], torch.zeros(4, dtype=DT))  # constant group: 0, not NaN
    pop = group_normalized_advantages(r, eps=1e-12, unbiased=False)
    torch.testing.assert_close(pop[0].std(correction=0), torch.tensor(1.0, dtype=DT))
    torch.testing.assert_close(group_normalized_advantages(torch.tensor([[3.0]])), torch.zeros(1, 1))
    # Statistics over the sample (last) axis: each row is normalised independently of the others.
    rows = torch.stack([r[0], 10 * r[0]])
    torch.testing.assert_close(
        group_normalized_advantages(rows)[1], group_normalized_advantages(rows)[0], atol=1e-6, rtol=1e-6
    )


def test_block_to_token_advantages() -> None:
    adv = torch.arange(2 * 3 * 4, dtype=DT).reshape(2, 3, 4)  # [B, n, K]
    tok = block_to_token_advantages(adv, 5)
    assert tok.shape == (2, 3, 4, 5)
    assert tok.is_contiguous()
    for t in range(5):
        torch.testing.assert_close(tok[..., t], adv)
    assert block_to_token_advantages(adv, 0).shape == (2, 3, 4, 0)
    with pytest.raises(ValueError, match="gen_len"):
        block_to_token_advantages(adv, -1)


# ----------------------------------------------------------------------------------------------- CFM


def test_cfm_loss_formula_and_n1_error() -> None:
    gen = torch.Generator().manual_seed(60)
    phi = torch.randn(2, 3, 4, 5, generator=gen, dtype=DT)
    psi = torch.randn(2, 3, 5, generator=gen, dtype=DT)
    got = cfm_loss(phi, psi)
    assert got.shape == (2, 3)
    n = 4
    for b, k in itertools.product(range(2), range(3)):
        p, g = phi[b, k], psi[b, k]
        cross = sum((p[i] @ p[j]).item() for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        expected = cross - 2 / n * sum((p[i] @ g).item() for i in range(n)) + (g @ g).item()
        assert abs(got[b, k].item() - expected) < 1e-12
    with pytest.raises(ValueError, match="n >= 2"):
        cfm_loss(phi[:, :, :1], psi)
    with pytest.raises(ValueError, match="gt_feats"):
        cfm_loss(phi, psi[0])


def test_reward_loss_identity_unit_features() -> None:
    phi, psi = _unit(3, 4, 5, 16, seed=61), _unit(3, 4, 16, seed=62)
    out = feature_matching_reward(phi, psi)
    feature_map_reward = (out.alignment - out.diversity / 2).mean(-1)
    torch.testing.assert_close(feature_map_reward, 1 - cfm_loss(phi, psi))


Problem = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _discrete_problem(m: int, d: int, seed: int, unit: bool) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(m, d, generator=gen, dtype=DT)
    psi = torch.randn(d, generator=gen, dtype=DT)
    if unit:
        feats, psi = _normalize(feats, dim=-1), _normalize(psi, dim=-1)
    logits = torch.randn(m, generator=gen, dtype=DT)
    return feats, psi, logits


@pytest.mark.parametrize("n", [2, 3, 4])
def test_cfm_loss_unbiased_exact_enumeration(n: int) -> None:
    feats, psi, logits = _discrete_problem(m=3, d=4, seed=70 + n, unit=False)
    p = logits.softmax(0)
    exact = ((p @ feats - psi) ** 2).sum()
    tuples = torch.tensor(list(itertools.product(range(3), repeat=n)))  # [3^n, n]
    probs = p[tuples].prod(-1)
    estimates = cfm_loss(feats[tuples], psi.expand(len(tuples), -1))
    torch.testing.assert_close((probs * estimates).sum(), exact, atol=1e-12, rtol=0)
    # The plug-in estimator is biased upward by tr(Cov phi) / n.
    plug_in = ((feats[tuples].mean(-2) - psi) ** 2).sum(-1)
    cov_trace = (p @ (feats**2).sum(-1)) - ((p @ feats) ** 2).sum()
    torch.testing.assert_close((probs * plug_in).sum(), exact + cov_trace / n, atol=1e-12, rtol=0)


def test_cfm_loss_unbiased_monte_carlo() -> None:
    feats, psi, logits = _discrete_problem(m=4, d=3, seed=80, unit=False)
    p = logits.softmax(0)
    exact = ((p @ feats - psi) ** 2).sum()
    draws, n = 200_000, 4
    idx = torch.multinomial(p, draws * n, replacement=True, generator=torch.Generator().manual_seed(81))
    est = cfm_loss(feats[idx.reshape(draws, n)], psi.expand(draws, -1))
    se = est.std() / draws**0.5
    assert abs(est.mean() - exact) < 4 * se
    assert se < 0.01 * exact.abs() + 0.01


# ----------------------------------------------------------------------------------------------- gradients


def _exact_grad(
    feats: torch.Tensor, psi: torch.Tensor, logits: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """grad_theta of beta ||mu||^2 - 2 alpha <mu, psi> + ||psi||^2, mu = softmax(theta)^T feats (autograd)."""
    theta = logits.clone().requires_grad_(True)
    mu = theta.softmax(0) @ feats
    objective = beta * (mu @ mu) - 2 * alpha * (mu @ psi) + psi @ psi
    (grad,) = torch.autograd.grad(objective, theta)
    return grad


def _estimators(
    feats: torch.Tensor, psi: torch.Tensor, p: torch.Tensor, idx: torch.Tensor, alpha: float, beta: float
) -> dict[str, torch.Tensor]:
    """Per-draw estimates (1/n) sum_i s_i grad log pi(y_i), [draws, m], for several signals s."""
    m = p.shape[0]
    phi = feats[idx]  # [draws, n, D]
    out = feature_matching_reward(phi, psi.expand(idx.shape[0], -1), alpha, beta)
    # grad_theta log softmax(theta)[y] = e_y - p, [draws, n, m]
    score = torch.nn.functional.one_hot(idx, m).to(DT) - p
    signals = {
        "reward": out.reward,
        "rloo": rloo_advantages(out.alignment, out.diversity, alpha, beta),
        "rloo_total": out.reward - rloo_baseline(out.reward),  # a peer's choice: RLOO on the total reward
    }
    return {k: (s.unsqueeze(-1) * score).mean(-2) for k, s in signals.items()}


def test_exact_grad_matches_analytic_formula() -> None:
    feats, psi, logits = _discrete_problem(m=5, d=3, seed=90, unit=True)
    p = logits.softmax(0)
    mu = p @ feats
    analytic = (torch.diag(p) - torch.outer(p, p)) @ feats @ (2 * (mu - psi))
    torch.testing.assert_close(_exact_grad(feats, psi, logits, 1.0, 1.0), analytic)


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.7, 0.4)])
def test_unbiased_gradient_exact_enumeration(n: int, alpha: float, beta: float) -> None:
    """E[(1/n) sum_i r_i grad log pi(y_i)] = -grad(beta ||mu||^2 - 2 alpha <mu, psi>), exactly.

    See docs/algorithm.md §5.2.
    """
    m = 4
    feats, psi, logits = _discrete_problem(m=m, d=3, seed=100 + n, unit=True)
    p = logits.softmax(0)
    target = -_exact_grad(feats, psi, logits, alpha, beta)
    tuples = torch.tensor(list(itertools.product(range(m), repeat=n)))
    probs = p[tuples].prod(-1)
    est = _estimators(feats, psi, p, tuples, alpha, beta)
    for key in ("reward", "rloo"):
        torch.testing.assert_close(probs @ est[key], target, atol=1e-12, rtol=0)
    # RLOO on the total reward shrinks the diversity gradient by (n - 2)/(n - 1): biased unless beta = 0.
    shrunk = -_exact_grad(feats, psi, logits, alpha, beta * (n - 2) / (n - 1))
    torch.testing.assert_close(probs @ est["rloo_total"], shrunk, atol=1e-12, rtol=0)
    assert (probs @ est["rloo_total"] - target).abs().max() > 1e-3


def test_unbiased_gradient_monte_carlo() -> None:
    """docs/algorithm.md §8, I16: seeded Monte-Carlo average of the REINFORCE estimator converges to -grad CFM."""
    m, n, draws = 5, 4, 100_000
    feats, psi, logits = _discrete_problem(m=m, d=3, seed=110, unit=True)
    p = logits.softmax(0)
    target = -_exact_grad(feats, psi, logits, 1.0, 1.0)  # -grad ||E phi - psi||^2
    idx = torch.multinomial(p, draws * n, replacement=True, generator=torch.Generator().manual_seed(111))
    est = _estimators(feats, psi, p, idx.reshape(draws, n), 1.0, 1.0)
    for key in ("reward", "rloo"):
        mean, se = est[key].mean(0), est[key].std(0) / draws**0.5
        assert ((mean - target).abs() < 4 * se + 1e-9).all(), (key, mean, target, se)
        assert (mean - target).abs().max() < 0.05 * target.abs().max()
    # Plain reward and RLOO advantage estimate the same expectation: their difference has mean zero.
    # (Whether the baseline lowers the variance depends on the problem; it is not asserted.)
    diff = est["reward"] - est["rloo"]
    assert (diff.mean(0).abs() < 4 * diff.std(0) / draws**0.5 + 1e-9).all()
