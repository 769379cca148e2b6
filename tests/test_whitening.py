"""Tests of ebft.whitening: sample-space (Loewdin) whitening, docs/algorithm.md §4 and §8 (I10)."""

from __future__ import annotations

import pytest
import torch

from ebft.rewards import alignment, diversity
from ebft.whitening import whiten, whitening_matrix


def _gram(x: torch.Tensor) -> torch.Tensor:
    return x @ x.mT


def _eye(n: int) -> torch.Tensor:
    return torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize(("n", "d"), [(1, 5), (3, 8), (4, 4), (4, 64)])
def test_independent_samples_become_orthonormal(n: int, d: int) -> None:
    gen = torch.Generator().manual_seed(n * 100 + d)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    out = whiten(x)
    torch.testing.assert_close(_gram(out.samples), torch.eye(n, dtype=torch.float64), atol=1e-10, rtol=0)


def test_matrix_is_inverse_square_root_of_gram() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    w = whitening_matrix(x)
    lam, v = torch.linalg.eigh(x @ x.T)
    expected = v @ torch.diag(lam.rsqrt()) @ v.T
    torch.testing.assert_close(w, expected, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(w, w.T)


def test_float32_input_keeps_dtype_and_is_orthonormal() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.nn.functional.normalize(torch.randn(4, 32, generator=gen), dim=-1)
    out = whiten(x, x[0])
    assert out.samples.dtype == torch.float32
    assert out.gt is not None
    assert out.gt.dtype == torch.float32
    torch.testing.assert_close(_gram(out.samples), torch.eye(4), atol=1e-5, rtol=0)
    # Diversity is ~0 after whitening independent samples (docs/algorithm.md §4.2).
    assert diversity(out.samples).abs().max() < 1e-5


def test_bfloat16_input_returns_float32() -> None:
    x = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    out = whiten(x)
    assert out.samples.dtype == torch.float32


def test_duplicate_pair_gives_half_projector() -> None:
    gen = torch.Generator().manual_seed(4)
    v, w, z = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    x = torch.stack([v, v, w, z])
    gram = _gram(whiten(x).samples)
    expected = torch.tensor(
        [[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(gram, expected, atol=1e-9, rtol=0)
    # Diversity then penalises only the duplicate pair: d = 2 * 0.5 / (n - 1) for both of them.
    torch.testing.assert_close(
        diversity(whiten(x).samples),
        torch.tensor([1 / 3, 1 / 3, 0.0, 0.0], dtype=torch.float64),
        atol=1e-9,
        rtol=0,
    )


def test_two_identical_samples_only() -> None:
    v = torch.tensor([[0.6, 0.8, 0.0], [0.6, 0.8, 0.0]], dtype=torch.float64)
    gram = _gram(whiten(v).samples)
    torch.testing.assert_close(gram, torch.full((2, 2), 0.5, dtype=torch.float64), atol=1e-12, rtol=0)


def test_whitened_gt_is_rescaled_psi() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 7, generator=gen, dtype=torch.float64)
    psi = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)
    out = whiten(x, psi)
    assert out.gt is not None
    ones_psi = psi.unsqueeze(-2).expand(2, 3, 4, 7)  # Y: every row equals psi
    torch.testing.assert_close(out.gt, out.matrix @ ones_psi, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out.scale, out.matrix.sum(-1))
    torch.testing.assert_close(out.gt, out.scale.unsqueeze(-1) * psi.unsqueeze(-2))
    # Alignment against the whitened gt = sign((W 1)_i) * cos((W X)_i, psi).
    a_whitened_gt = alignment(out.samples, out.gt)
    a_plain_psi = alignment(out.samples, psi) * out.scale.sign()
    torch.testing.assert_close(a_whitened_gt, a_plain_psi)


@pytest.mark.parametrize("lead", [(), (3,), (2, 5), (2, 3, 2)])
def test_batched_shapes_match_per_group(lead: tuple[int, ...]) -> None:
    n, d = 4, 9
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(*lead, n, d, generator=gen, dtype=torch.float64)
    psi = torch.randn(*lead, d, generator=gen, dtype=torch.float64)
    out = whiten(x, psi)
    assert out.samples.shape == (*lead, n, d)
    assert out.gt is not None
    assert out.gt.shape == (*lead, n, d)
    assert out.scale.shape == (*lead, n)
    assert out.matrix.shape == (*lead, n, n)
    flat_x, flat_psi = x.reshape(-1, n, d), psi.reshape(-1, d)
    flat_out = out.samples.reshape(-1, n, d)
    for g in range(flat_x.shape[0]):
        single = whiten(flat_x[g], flat_psi[g])
        torch.testing.assert_close(flat_out[g], single.samples)
        torch.testing.assert_close(out.gt.reshape(-1, n, d)[g], single.gt)
    torch.testing.assert_close(
        _gram(out.samples), torch.eye(n, dtype=torch.float64).expand(*lead, n, n), atol=1e-10, rtol=0
    )


def test_bad_gt_shape_raises() -> None:
    with pytest.raises(ValueError, match="gt must have shape"):
        whiten(torch.randn(2, 4, 5), torch.randn(5))
    with pytest.raises(ValueError, match="samples must have shape"):
        whiten(torch.randn(5))


@pytest.mark.parametrize(
    "x",
    [
        torch.zeros(4, 6),  # all-zero group
        torch.ones(4, 6),  # rank 1
        torch.randn(6, 3, generator=torch.Generator().manual_seed(7)),  # n > D: rank D
        torch.tensor([[1.0, 0.0], [1.0, 1e-9], [2.0, 0.0]]),  # near-duplicates below the cut-off
    ],
)
def test_rank_deficient_is_finite_and_projector(x: torch.Tensor) -> None:
    psi = torch.ones(x.shape[-1])
    out = whiten(x, psi)
    assert torch.isfinite(out.samples).all()
    assert out.gt is not None
    assert torch.isfinite(out.gt).all()
    gram = _gram(out.samples.double())
    # The Gram of the whitened samples is an orthogonal projector (rank = rank of X).
    torch.testing.assert_close(gram @ gram, gram, atol=1e-5, rtol=0)
    torch.testing.assert_close(gram, gram.T, atol=1e-6, rtol=0)
    rank = torch.linalg.matrix_rank(x.double(), rtol=1e-5).item()
    assert abs(torch.trace(gram).item() - rank) < 1e-4


def test_non_finite_group_is_returned_unchanged_and_others_whitened() -> None:
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64)
    x[1, 2, 3] = float("nan")
    psi = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    out = whiten(x, psi)
    assert out.gt is not None
    torch.testing.assert_close(out.samples[1], x[1], equal_nan=True)
    torch.testing.assert_close(out.matrix[1], torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(out.gt[1], psi[1].expand(4, 6))
    for g in (0, 2):
        torch.testing.assert_close(_gram(out.samples[g]), _eye(4), atol=1e-10, rtol=0)


def test_does_not_consume_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    whiten(torch.ones(2, 4, 5))
    x = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0] = float("inf")
    whiten(x)
    torch.testing.assert_close(torch.rand(3), expected)


def test_fallback_chain_when_svd_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)

    def failing_svd(*args: object, **kwargs: object) -> None:
        raise torch.linalg.LinAlgError("forced failure")

    monkeypatch.setattr(torch.linalg, "svd", failing_svd)
    # SVD (and its noisy retry) fail: the eigen-decomposition of the Gram matrix takes over.
    out = whiten(x)
    torch.testing.assert_close(_gram(out.samples), _eye(3).expand(2, 3, 3), atol=1e-8, rtol=0)

    monkeypatch.setattr(torch.linalg, "eigh", failing_svd)
    # Every decomposition fails: inputs are returned unchanged (W = I), as in the reference.
    out = whiten(x)
    torch.testing.assert_close(out.samples, x)
    torch.testing.assert_close(out.matrix, torch.eye(3, dtype=torch.float64).expand(2, 3, 3))


@pytest.mark.parametrize(("delta", "duplicate"), [(1e-9, True), (1e-3, False)])
def test_near_duplicates_relative_cutoff(delta: float, duplicate: bool) -> None:
    """docs/algorithm.md §4.1: differences below the 1e-5 relative cut-off are duplicates; larger ones are amplified."""
    gen = torch.Generator().manual_seed(10)
    v, w, z, e = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    x = torch.stack([v, v + delta * e, w, z])
    gram = _gram(whiten(x).samples)
    if duplicate:
        half = torch.full((2, 2), 0.5, dtype=torch.float64)
        torch.testing.assert_close(gram[:2, :2], half, atol=1e-6, rtol=0)
    else:
        torch.testing.assert_close(gram, torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0)
