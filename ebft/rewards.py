"""Feature-matching rewards, leave-one-out baselines and the CFM estimator (docs/algorithm.md §5, §7.1).

Pure tensor math on pooled block features; no model code. Conventions for shapes:

* ``sample_feats`` phi: [..., n, D] -- n samples of one (chunk, block) group; leading dims are independent
  groups (typically [B, K]).
* ``gt_feats`` psi: [..., D] -- the ground-truth feature of the group, shared by its n samples. Functions that
  take a ground truth for the *reward* (:func:`alignment`, :func:`feature_matching_reward`) also accept a
  per-sample ground truth [..., n, D], which is what sample-space whitening produces
  (:func:`ebft.whitening.whiten`). Which form is meant is decided by ``gt.ndim`` (``== phi.ndim - 1``:
  shared; ``== phi.ndim``: per sample).

Rewards (docs/algorithm.md §5.1), for a group with samples phi_1..phi_n and ground truth psi:

    a_i = 2 cos(phi_i, psi)                                   alignment
    d_i = 2/(n-1) * sum_{j != i} <phi_i, phi_j>                diversity (0 for n = 1)
    r_i = alpha a_i - beta d_i

Why (docs/algorithm.md §5.2): the conditional feature-matching loss l = ||mu - psi||^2 with mu = E phi has the
score-function gradient grad l = -E[grad log pi(y) (2<phi(y), psi> - 2<phi(y), mu>)]; replacing mu in
sample i's term by the mean of the other samples gives r_i with alpha = beta = 1 (for unit-norm phi, psi,
where cos = dot), and E[(1/n) sum_i r_i grad log pi(y_i)] = -grad l exactly. The value of l is estimated
without bias by :func:`cfm_loss`; for unit-norm features mean_i (a_i - d_i/2) = ||psi||^2 - CFM_hat
= 1 - CFM_hat.

RLOO baseline (docs/algorithm.md §5.3): alignment gets the leave-one-out mean; diversity gets its own baseline
b^d_i = (sum_j d_j - 2 d_i)/(n-2) = 2 * mean of <phi_j, phi_l> over ordered pairs j != l of the other n-1
samples. Both are independent of sample i, so the gradient estimator stays unbiased, and for n >= 3 the
advantages of a group sum to 0.

Deviations from the reference implementation and from a peer port (chosen on purpose)
------------------------------------------------------------------------------------
* Rewards are computed in at least float32: bf16/fp16 features are upcast first (a peer port computed them in
  bf16, which quantises rewards near 2 in steps of ~0.008).
* The diversity baseline is separate from the alignment baseline (as in the reference). Applying a
  leave-one-out mean to the *total* reward (a peer's choice) leaves -beta d_i/(n-1) of sample i's own reward
  in its baseline, which shrinks the diversity gradient by (n-2)/(n-1) and cancels it entirely at n = 2.
* n = 2 (docs/algorithm.md §5.3): the two diversity rewards are identical, d_1 = d_2 = 2<phi_1, phi_2>, and each
  depends on both samples. An unbiased baseline for sample 1 may only depend on sample 2 (b_1 = f(y_2)),
  and f(y_2) + f(y_1) = 2 d cannot hold for all pairs, so the diversity part cannot be centred without
  biasing the gradient (centring on the total reward, as a peer does, cancels the diversity gradient
  entirely). We keep the diversity baseline at 0 for n = 2 (numerically the reference's behaviour, here a
  documented decision): the estimator is unbiased, the alignment part is centred, and the advantages of a
  group sum to -2 beta d instead of 0. Tests check that this choice is unbiased while the
  total-reward RLOO is not.
* n = 1: there are no other samples; every baseline is 0 and the advantage is the raw reward (REINFORCE).
* :func:`group_normalized_advantages` normalises by the standard deviation over the **sample** axis (the
  reference's ``group_norm`` uses the block axis, docs/algorithm.md §9). EBFT itself uses RLOO without std scaling.
* :func:`cfm_loss` is the unbiased n-sample estimator computed with raw dot products (the reference's
  ``eval_critic_loss`` averages over the wrong axis, docs/algorithm.md §7.4; a peer logs the biased plug-in estimator).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "COSINE_EPS",
    "FeatureMatchingReward",
    "alignment",
    "block_to_token_advantages",
    "cfm_loss",
    "diversity",
    "diversity_baseline",
    "feature_matching_reward",
    "group_normalized_advantages",
    "rloo_advantages",
    "rloo_baseline",
    "rloo_baselines",
]

COSINE_EPS: float = 1e-8
"""eps of ``F.cosine_similarity`` used by the alignment reward (same as the reference)."""


def _at_least_float32(x: Tensor) -> Tensor:
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def _check_samples(sample_feats: Tensor) -> None:
    if sample_feats.ndim < 2:
        raise ValueError(f"sample_feats must have shape [..., n, D], got {tuple(sample_feats.shape)}")


def _per_sample_gt(sample_feats: Tensor, gt_feats: Tensor) -> Tensor:
    """Return the ground truth as [..., 1 or n, D], broadcastable against sample_feats [..., n, D]."""
    if gt_feats.ndim == sample_feats.ndim - 1:
        return gt_feats.unsqueeze(-2)
    if gt_feats.ndim == sample_feats.ndim:
        return gt_feats
    raise ValueError(
        f"gt_feats must have shape [..., D] or [..., n, D] for sample_feats {tuple(sample_feats.shape)}, "
        f"got {tuple(gt_feats.shape)}"
    )


def _pairwise_dot_sum(sample_feats: Tensor) -> Tensor:
    """sum_{j != i} <phi_i, phi_j> for every i: [..., n, D] -> [..., n] (off-diagonal Gram row sums)."""
    gram = sample_feats @ sample_feats.mT
    n = gram.shape[-1]
    diagonal = torch.eye(n, dtype=torch.bool, device=gram.device)
    # Mask rather than subtract the diagonal: no cancellation when the self-similarities dominate.
    return gram.masked_fill(diagonal, 0.0).sum(dim=-1)


def alignment(sample_feats: Tensor, gt_feats: Tensor, eps: float = COSINE_EPS) -> Tensor:
    """Alignment reward a_i = 2 cos(phi_i, psi) (docs/algorithm.md §5.1).

    cos(x, y) = <x, y> / (max(||x||, eps) max(||y||, eps)), as ``F.cosine_similarity``.

    Args:
        sample_feats: phi, [..., n, D].
        gt_feats: psi, [..., D] (shared) or [..., n, D] (per sample, e.g. whitened ground truth).
        eps: norm floor of the cosine.

    Returns:
        a, [..., n], in [-2, 2]; float32 or wider.
    """
    _check_samples(sample_feats)
    phi = _at_least_float32(sample_feats)
    psi = _at_least_float32(_per_sample_gt(sample_feats, gt_feats))
    return 2.0 * torch.nn.functional.cosine_similarity(phi, psi, dim=-1, eps=eps)


def diversity(sample_feats: Tensor) -> Tensor:
    """Diversity reward d_i = 2/(n-1) * sum_{j != i} <phi_i, phi_j> with raw dot products (docs/algorithm.md §5.1).

    d_i = 0 for n = 1; for n = 2 both samples get 2 <phi_1, phi_2>.

    Args:
        sample_feats: phi, [..., n, D].

    Returns:
        d, [..., n]; float32 or wider.
    """
    _check_samples(sample_feats)
    phi = _at_least_float32(sample_feats)
    n = phi.shape[-2]
    if n <= 1:
        return phi.new_zeros(phi.shape[:-1])
    return 2.0 * _pairwise_dot_sum(phi) / (n - 1)


class FeatureMatchingReward(NamedTuple):
    """Rewards of :func:`feature_matching_reward`; every field is [..., n].

    Attributes:
        reward: r = alpha a - beta d (the policy-gradient signal).
        alignment: a = 2 cos(phi, psi).
        diversity: d = 2 * mean_{j != i} <phi_i, phi_j>.
    """

    reward: Tensor
    alignment: Tensor
    diversity: Tensor


def feature_matching_reward(
    sample_feats: Tensor, gt_feats: Tensor, alpha: float = 1.0, beta: float = 1.0
) -> FeatureMatchingReward:
    """Feature-matching reward r_i = alpha a_i - beta d_i of every sample (docs/algorithm.md §5.1).

    With alpha = beta = 1 and unit-norm, unwhitened features, E[(1/n) sum_i r_i grad log pi(y_i)] is exactly
    -grad ||E phi - psi||^2 (docs/algorithm.md §5.2). General (alpha, beta) follows the gradient of
    beta ||E phi||^2 - 2 alpha <E phi, psi>.

    Args:
        sample_feats: phi, [..., n, D].
        gt_feats: psi, [..., D] or per sample [..., n, D].
        alpha: alignment coefficient (``alignment_rew_coef``).
        beta: diversity coefficient (``diversity_rew_coef``).

    Returns:
        :class:`FeatureMatchingReward` (reward, alignment, diversity), each [..., n].
    """
    a = alignment(sample_feats, gt_feats)
    d = diversity(sample_feats)
    return FeatureMatchingReward(reward=alpha * a - beta * d, alignment=a, diversity=d)


def rloo_baseline(rewards: Tensor) -> Tensor:
    """Leave-one-out mean b_i = (1/(n-1)) sum_{j != i} r_j over the last (sample) axis.

    Generic RLOO baseline (also used by RLVR). For n = 1 there is no other sample and the baseline is 0
    (plain REINFORCE).

    Args:
        rewards: r, [..., n].

    Returns:
        b, [..., n]; b_i does not depend on r_i.
    """
    r = _at_least_float32(rewards)
    n = r.shape[-1]
    if n <= 1:
        return torch.zeros_like(r)
    return (r.sum(dim=-1, keepdim=True) - r) / (n - 1)


def diversity_baseline(diversity_rewards: Tensor) -> Tensor:
    """Dedicated leave-one-out baseline of the diversity reward (docs/algorithm.md §5.3).

    For n >= 3: b^d_i = (sum_j d_j - 2 d_i)/(n-2), which equals 2 * the mean of <phi_j, phi_l> over the
    (n-1)(n-2) ordered pairs j != l of the *other* n-1 samples; it does not depend on sample i.
    For n <= 2 there is no pair of other samples and the baseline is 0 (see the module docstring for why this
    is the unbiased choice at n = 2).

    Args:
        diversity_rewards: d, [..., n], as returned by :func:`diversity`.

    Returns:
        b^d, [..., n].
    """
    d = _at_least_float32(diversity_rewards)
    n = d.shape[-1]
    if n <= 2:
        return torch.zeros_like(d)
    return (d.sum(dim=-1, keepdim=True) - 2.0 * d) / (n - 2)


def rloo_baselines(
    alignment_rewards: Tensor, diversity_rewards: Tensor, alpha: float = 1.0, beta: float = 1.0
) -> Tensor:
    """EBFT's RLOO baseline b_i = alpha b^a_i - beta b^d_i (docs/algorithm.md §5.3).

    b^a = :func:`rloo_baseline` of the alignment rewards, b^d = :func:`diversity_baseline`.

    Args:
        alignment_rewards: a, [..., n].
        diversity_rewards: d, [..., n].
        alpha, beta: reward coefficients (the same as in the reward).

    Returns:
        b, [..., n]; independent of sample i.
    """
    return alpha * rloo_baseline(alignment_rewards) - beta * diversity_baseline(diversity_rewards)


def rloo_advantages(
    alignment_rewards: Tensor, diversity_rewards: Tensor, alpha: float = 1.0, beta: float = 1.0
) -> Tensor:
    """Block advantages A_i = r_i - b_i with r = alpha a - beta d and b from :func:`rloo_baselines`.

    Properties: for n >= 3, sum_i A_i = 0 in every group. For n = 2 the alignment part is centred and the
    diversity part is not (sum_i A_i = -2 beta d, the only unbiased choice; see the module docstring).
    For n = 1, A = r. No standard-deviation scaling (as in the reference).

    Args:
        alignment_rewards: a, [..., n] (e.g. [B, K, n] or [B, n, K] moved to put n last).
        diversity_rewards: d, [..., n].
        alpha, beta: reward coefficients.

    Returns:
        A, [..., n].
    """
    a = _at_least_float32(alignment_rewards)
    d = _at_least_float32(diversity_rewards)
    if a.shape != d.shape:
        raise ValueError(f"alignment and diversity shapes differ: {tuple(a.shape)} vs {tuple(d.shape)}")
    reward = alpha * a - beta * d
    return reward - rloo_baselines(a, d, alpha, beta)


def group_normalized_advantages(rewards: Tensor, eps: float = 1e-6, unbiased: bool = True) -> Tensor:
    """GRPO-style advantages (r_i - mean_j r_j) / (std_j r_j + eps), statistics over the sample axis.

    The standard deviation is taken over the last (sample) axis, the fix listed in docs/algorithm.md §9 (the reference's
    ``group_norm`` uses the block axis). Not used by EBFT (which uses :func:`rloo_advantages`); offered for
    RLVR. Groups with identical rewards get advantage 0; n = 1 gives 0.

    Args:
        rewards: r, [..., n].
        eps: added to the standard deviation.
        unbiased: Bessel-corrected std (n-1 denominator, as TRL's GRPO) if True, else population std.

    Returns:
        A, [..., n].
    """
    r = _at_least_float32(rewards)
    n = r.shape[-1]
    if n <= 1:
        return torch.zeros_like(r)
    centred = r - r.mean(dim=-1, keepdim=True)
    std = r.std(dim=-1, keepdim=True, correction=1 if unbiased else 0)
    return centred / (std + eps)


def block_to_token_advantages(advantages: Tensor, gen_len: int) -> Tensor:
    """Broadcast block advantages to the G generated tokens of each block (docs/algorithm.md §5.4).

    Block-major layout, matching ``strided_generate``'s token tensor [B, n, K, G]: token (k, t) of sample i
    gets A_{i,k} for t = 0..G-1. (The reference stores generated tokens step-major in the sequence,
    position L + t*K + k; a consumer working in that layout must transpose the last two axes,
    ``out.transpose(-1, -2)``, before flattening; flattening a block-major tensor against a step-major
    sequence is the ``token``-pooling misalignment of docs/algorithm.md §9 and of the peer port's strided mode.)

    Args:
        advantages: A, [..., n, K].
        gen_len: G, tokens generated per block (>= 0).

    Returns:
        [..., n, K, G], a contiguous tensor.
    """
    if advantages.ndim < 2:
        raise ValueError(f"advantages must have shape [..., n, K], got {tuple(advantages.shape)}")
    if gen_len < 0:
        raise ValueError(f"gen_len must be >= 0, got {gen_len}")
    return advantages.unsqueeze(-1).expand(*advantages.shape, gen_len).contiguous()


def cfm_loss(sample_feats: Tensor, gt_feats: Tensor) -> Tensor:
    """Unbiased n-sample estimator of the conditional feature-matching loss ||E phi - psi||^2 (docs/algorithm.md §7.1).

        CFM_hat = 1/(n(n-1)) sum_{i != j} <phi_i, phi_j> - (2/n) sum_i <phi_i, psi> + <psi, psi>,

    computed with raw dot products (valid for any features, whitened or not, unit-norm or not). For
    independent samples E[CFM_hat] = ||E phi - psi||^2 exactly (the plug-in ||mean_i phi_i - psi||^2 is biased
    upward by tr(Cov phi)/n). Individual values may be negative. For unit-norm features,
    CFM_hat = 1 - mean_i (a_i - d_i / 2).

    Args:
        sample_feats: phi, [..., n, D] with n >= 2.
        gt_feats: psi, [..., D].

    Returns:
        CFM_hat, [...]; float32 or wider.

    Raises:
        ValueError: if n < 2 (the estimator needs two independent samples) or shapes do not match.
    """
    _check_samples(sample_feats)
    n = sample_feats.shape[-2]
    if n < 2:
        raise ValueError(
            f"cfm_loss needs n >= 2 samples per group for the unbiased estimator, got n = {n} "
            f"(sample_feats shape {tuple(sample_feats.shape)})"
        )
    expected = (*sample_feats.shape[:-2], sample_feats.shape[-1])
    if tuple(gt_feats.shape) != expected:
        raise ValueError(f"gt_feats must have shape [..., D] = {expected}, got {tuple(gt_feats.shape)}")
    dtype = torch.promote_types(_at_least_float32(sample_feats).dtype, _at_least_float32(gt_feats).dtype)
    phi = sample_feats.to(dtype)
    psi = gt_feats.to(dtype)
    cross = _pairwise_dot_sum(phi).sum(dim=-1) / (n * (n - 1))
    align = (phi @ psi.unsqueeze(-1)).squeeze(-1).mean(dim=-1)
    return cross - 2.0 * align + (psi * psi).sum(dim=-1)


# ------------------------------------------------------------------------------------------------------
# Verifiable rewards for RLVR: one interface, ``reward(records, completions) -> Tensor[N]`` in [0, 1].
# ------------------------------------------------------------------------------------------------------


class UnitTestReward:
    """Sandboxed unit tests: 1 if the completion passes all of the problem's tests, else 0; or, with
    ``fraction=True``, the fraction of the test cases it passes.

    The program is ``question + completion + test + check(entry_point)`` (see :mod:`ebft.sandbox`); a
    timeout, an error or an early exit gives 0. For the fraction, every top-level ``assert`` of
    ``check`` is a test case and runs as its own program (:func:`split_test_cases`), so one failing or
    hanging case cannot hide the others; that costs one sandbox run per case instead of one per
    completion. Programs run in parallel sandbox workers.
    """

    def __init__(self, *, timeout_s: float = 5.0, workers: int = 2, fraction: bool = False) -> None:
        self.timeout_s, self.workers, self.fraction = timeout_s, workers, fraction

    def __call__(self, records: list[dict], completions: list[str]) -> Tensor:
        from ebft.sandbox import check_many

        if not self.fraction:
            items = [(r["question"] + c, r["test"], r["entry_point"])
                     for r, c in zip(records, completions, strict=True)]
            results = check_many(items, workers=self.workers, timeout_s=self.timeout_s)
            return torch.tensor([1.0 if res.passed else 0.0 for res in results])
        items, owner, split = [], [], {}  # split: test -> its cases (records repeat once per sample)
        for i, (r, c) in enumerate(zip(records, completions, strict=True)):
            if r["test"] not in split:
                split[r["test"]] = split_test_cases(r["test"])
            for case in split[r["test"]]:
                items.append((r["question"] + c, case, r["entry_point"]))
                owner.append(i)
        results = check_many(items, workers=self.workers, timeout_s=self.timeout_s)
        passed = torch.zeros(len(records))
        cases = torch.zeros(len(records))
        for i, res in zip(owner, results, strict=True):
            cases[i] += 1
            passed[i] += float(res.passed)
        return passed / cases.clamp_min(1.0)


def split_test_cases(test: str) -> list[str]:
    """Split a HumanEval-style ``def check(candidate): ...`` into one test program per top-level assert.

    Case ``k`` keeps every statement of the module and every non-assert statement of ``check`` (set-up
    such as helper variables, in order) and only the ``k``-th top-level ``assert`` of ``check``. A test
    without a parsable ``check`` or without top-level asserts (asserts inside loops, say) is one case.

    >>> split_test_cases("def check(c):\n    assert c(1) == 2\n    assert c(2) == 3\n")[1]
    'def check(c):\n    assert c(2) == 3'
    """
    import ast

    try:
        module = ast.parse(test)
    except SyntaxError:
        return [test]
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1:
        return [test]
    check = checks[0]
    asserts = [i for i, node in enumerate(check.body) if isinstance(node, ast.Assert)]
    if len(asserts) < 2:
        return [test]
    body, cases = list(check.body), []
    for keep in asserts:
        check.body = [node for i, node in enumerate(body) if i == keep or i not in asserts]
        cases.append(ast.unparse(module))
    return cases


class TranslationMetricReward:
    """Sentence-level chrF (default) or BLEU of the hypothesis against the record's reference, / 100."""

    def __init__(self, metric: str = "chrf") -> None:
        if metric not in ("chrf", "bleu"):
            raise ValueError(f"translation reward metric must be chrf or bleu, got {metric!r}")
        self.metric = metric

    def __call__(self, records: list[dict], completions: list[str]) -> Tensor:
        import sacrebleu

        score = sacrebleu.sentence_chrf if self.metric == "chrf" else sacrebleu.sentence_bleu
        values = [score(hyp, [rec["reference"]]).score / 100.0 for rec, hyp in zip(records, completions, strict=True)]
        return torch.tensor(values)


def make_verifiable_reward(name: str, **kwargs: float) -> UnitTestReward | TranslationMetricReward:
    """``unit_tests`` (all tests pass: 1, else 0) or ``unit_test_fraction`` (fraction of test cases passed)
    for code, ``chrf`` or ``bleu`` (translation)."""
    if name in ("unit_tests", "unit_test_fraction"):
        return UnitTestReward(fraction=name == "unit_test_fraction", **kwargs)
    if name in ("chrf", "bleu"):
        return TranslationMetricReward(name)
    raise ValueError(f"rlvr reward: unknown value {name!r} (expected unit_tests, unit_test_fraction, chrf or bleu)")
