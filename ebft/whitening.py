"""Sample-space whitening of block features (docs/algorithm.md §4; EBFT's ``whitening`` option).

What it is
----------
For one group (one chunk, one block, one feature group) stack the n sample feature vectors as the rows of
X in R^{n x D}. With the thin SVD X = U diag(sigma) V^T (U in R^{n x n}) the whitening map is

    W = U diag(sigma^+) U^T,    sigma^+_j = 1 / (sigma_j + eps)   if sigma_j > rel_cutoff * max_l sigma_l,
                                           0                      otherwise,

with ``rel_cutoff = 1e-5`` and ``eps = 1e-12`` as in the reference. W is the (pseudo-inverse) square root
(X X^T)^{-1/2} of the n x n sample Gram matrix. The samples are replaced by W X and the ground truth by
W Y, where Y in R^{n x D} has every row equal to the ground-truth vector psi, so that

    (W Y)_i = (W 1)_i * psi        (a per-sample rescaled copy of psi).

Consequences (docs/algorithm.md §4.2; tested: §8, I10)
------------------------------------------------------
* This is **not** feature-space whitening (no D x D covariance is formed). It is a symmetric (Loewdin)
  orthogonalisation of the n samples: if they are linearly independent, W X = U V^T has orthonormal rows,
  i.e. the **Gram matrix of the whitened samples is the n x n identity** (unit norms, mutually
  orthogonal), so the diversity reward is ~0.
* If samples are linearly dependent (e.g. two identical generations), the Gram matrix of W X is the
  orthogonal projector onto the row space of X; for one duplicated pair the pair's 2 x 2 block is all 0.5.
* Cosine alignment with the whitened ground truth equals sign((W 1)_i) * cos((W X)_i, psi).
* W depends on all n samples, including sample i itself, so the unbiased-gradient derivation of docs/algorithm.md §5.2
  does not cover the whitened variant.

Shapes: ``samples`` is [..., n, D] and ``gt`` is [..., D]; all leading dimensions are independent groups
(put chunk, block and feature-group axes there). The whitened ground truth is returned per sample,
[..., n, D].

Fallbacks (docs/algorithm.md §4.3)
----------------------------------
1. Batched thin SVD of X in ``compute_dtype`` (for D > n through a QR decomposition of X^T, which yields
   the same U and sigma much faster).
2. If the SVD fails for a group: retry once with Gaussian noise of scale ``1e-6 * mean|X|`` added.
3. If that fails too: eigen-decomposition of the Gram matrix X X^T (sigma = sqrt(max(lambda, 0)), same
   cut-off).
4. If that fails too, or the group contains non-finite values: W = I (the group is returned unchanged).

Deviations from the reference implementation (chosen on purpose)
----------------------------------------------------------------
* W is computed in float64 by default (``compute_dtype``; the reference uses float32). The cut-off rule
  and eps are identical; only round-off differs (near-duplicates differing by float32 noise far below the
  1e-5 relative cut-off are treated as duplicates either way). Results are cast back to the input dtype
  (bf16/fp16 inputs are returned as float32 so that rewards are not computed in half precision).
* Groups with non-finite entries are detected up front and returned unchanged without touching the other
  groups of the batch; the eigen-decomposition fallback (step 3) is an addition.
* The noise of the retry comes from a private, fixed-seed generator, so whitening never consumes the
  global RNG (sampling reproducibility is unaffected).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "REL_CUTOFF",
    "RETRY_NOISE_SCALE",
    "SINGULAR_EPS",
    "WhiteningResult",
    "whiten",
    "whitening_matrix",
]

REL_CUTOFF: float = 1e-5
"""Singular values at or below ``REL_CUTOFF * max(sigma)`` are treated as zero (pseudo-inverse)."""

SINGULAR_EPS: float = 1e-12
"""Added to kept singular values before inversion: sigma^+ = 1 / (sigma + SINGULAR_EPS)."""

RETRY_NOISE_SCALE: float = 1e-6
"""Relative scale (times mean |X|) of the Gaussian jitter used when the SVD of a group fails once."""

_NOISE_SEED = 0


class WhiteningResult(NamedTuple):
    """Output of :func:`whiten`.

    Attributes:
        samples: whitened samples W X, [..., n, D].
        gt: whitened ground truth W (1 psi^T), [..., n, D] (row i = scale_i * psi), or ``None`` if no
            ground truth was given.
        scale: W 1, [..., n]: the factor by which psi is multiplied for each sample.
        matrix: the whitening matrix W = (X X^T)^{-1/2}, [..., n, n] (symmetric), in ``compute_dtype``.
    """

    samples: Tensor
    gt: Tensor | None
    scale: Tensor
    matrix: Tensor


def _inverse_sqrt_from_svd(u: Tensor, sigma: Tensor, rel_cutoff: float, eps: float) -> Tensor:
    """W = U diag(sigma^+) U^T with the relative cut-off rule; u [..., n, r], sigma [..., r]."""
    max_sigma = sigma.amax(dim=-1, keepdim=True) if sigma.shape[-1] > 0 else sigma
    keep = sigma > rel_cutoff * max_sigma
    inv = torch.where(keep, 1.0 / (sigma + eps), torch.zeros_like(sigma))
    return (u * inv.unsqueeze(-2)) @ u.mT


def _left_svd(x: Tensor) -> tuple[Tensor, Tensor]:
    """U [..., n, r] and sigma [..., r] of the thin SVD X = U diag(sigma) V^T, r = min(n, D).

    For wide X (D > n) the SVD is taken of the small triangular factor: X^T = Q R gives X = R^T Q^T and
    X X^T = R^T R, so R^T (n x n) has exactly the same U and sigma as X. This is backward stable (no
    squaring of the condition number, unlike an eigen-decomposition of X X^T) and ~100x faster than a
    batched SVD of n x D matrices.
    """
    n, d = x.shape[-2], x.shape[-1]
    if d > n:
        r = torch.linalg.qr(x.mT, mode="r").R  # [..., n, n]
        u, sigma, _ = torch.linalg.svd(r.mT)
    else:
        u, sigma, _ = torch.linalg.svd(x, full_matrices=False)
    return u, sigma


def _svd_whitening(x: Tensor, rel_cutoff: float, eps: float) -> Tensor:
    u, sigma = _left_svd(x)
    return _inverse_sqrt_from_svd(u, sigma, rel_cutoff, eps)


def _eigh_whitening(x: Tensor, rel_cutoff: float, eps: float) -> Tensor:
    gram = x @ x.mT
    gram = 0.5 * (gram + gram.mT)
    lam, v = torch.linalg.eigh(gram)
    sigma = lam.clamp_min(0.0).sqrt()
    return _inverse_sqrt_from_svd(v, sigma, rel_cutoff, eps)


def _single_group_fallback(x: Tensor, rel_cutoff: float, eps: float, generator: torch.Generator) -> Tensor:
    """Fallback chain for one group x [n, D] whose batched SVD failed (steps 2-4 of the module doc)."""
    n = x.shape[-2]
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    if not bool(torch.isfinite(x).all()):
        return eye
    try:
        w = _svd_whitening(x, rel_cutoff, eps)
        if bool(torch.isfinite(w).all()):
            return w
    except (torch.linalg.LinAlgError, RuntimeError):
        pass
    try:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        w = _svd_whitening(x + RETRY_NOISE_SCALE * x.abs().mean() * noise, rel_cutoff, eps)
        if bool(torch.isfinite(w).all()):
            return w
    except (torch.linalg.LinAlgError, RuntimeError):
        pass
    try:
        w = _eigh_whitening(x, rel_cutoff, eps)
        if bool(torch.isfinite(w).all()):
            return w
    except (torch.linalg.LinAlgError, RuntimeError):
        pass
    return eye


def _resolve_compute_dtype(device: torch.device, compute_dtype: torch.dtype) -> torch.dtype:
    if compute_dtype == torch.float64 and device.type == "mps":  # no float64 on Apple GPUs
        return torch.float32
    return compute_dtype


def whitening_matrix(
    samples: Tensor,
    *,
    rel_cutoff: float = REL_CUTOFF,
    eps: float = SINGULAR_EPS,
    compute_dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Sample-space whitening matrix W = (X X^T)^{-1/2} for every group.

    Args:
        samples: X, [..., n, D]; every leading index is an independent group of n sample vectors.
        rel_cutoff: singular values sigma <= rel_cutoff * max(sigma) get sigma^+ = 0 (pseudo-inverse).
        eps: kept singular values are inverted as 1 / (sigma + eps).
        compute_dtype: floating dtype of the decomposition (float64 default; float32 matches the reference).

    Returns:
        W, [..., n, n], symmetric positive semi-definite, in ``compute_dtype``. For a group with
        non-finite entries (or where every decomposition fails) W is the identity.
    """
    if samples.ndim < 2:
        raise ValueError(f"samples must have shape [..., n, D], got {tuple(samples.shape)}")
    compute_dtype = _resolve_compute_dtype(samples.device, compute_dtype)
    *lead, n, d = samples.shape
    x = samples.detach().to(compute_dtype).reshape(-1, n, d)
    groups = x.shape[0]
    eye = torch.eye(n, dtype=compute_dtype, device=x.device).expand(groups, n, n)
    if groups == 0 or n == 0:
        return eye.reshape(*lead, n, n).clone()

    finite = torch.isfinite(x).flatten(1).all(dim=1)  # [groups]
    x_safe = torch.where(finite[:, None, None], x, torch.zeros_like(x))
    try:
        w = _svd_whitening(x_safe, rel_cutoff, eps)
        bad = ~torch.isfinite(w).flatten(1).all(dim=1)
    except torch.OutOfMemoryError:
        raise
    except (torch.linalg.LinAlgError, RuntimeError):
        w = eye.clone()
        bad = torch.ones(groups, dtype=torch.bool, device=x.device)
    bad = bad & finite
    if bool(bad.any()):
        generator = torch.Generator().manual_seed(_NOISE_SEED)
        w = w.clone()
        for g in torch.nonzero(bad).flatten().tolist():
            w[g] = _single_group_fallback(x[g], rel_cutoff, eps, generator)
    w = torch.where(finite[:, None, None], w, eye)
    return w.reshape(*lead, n, n)


def whiten(
    samples: Tensor,
    gt: Tensor | None = None,
    *,
    rel_cutoff: float = REL_CUTOFF,
    eps: float = SINGULAR_EPS,
    compute_dtype: torch.dtype = torch.float64,
) -> WhiteningResult:
    """Whiten the n samples of every group in sample space and apply the same map to the ground truth.

    Math (per group): W = (X X^T)^{-1/2} (see :func:`whitening_matrix`), samples -> W X, ground truth
    Y = 1 psi^T -> W Y, whose row i is (W 1)_i * psi. For linearly independent samples the Gram matrix
    (W X)(W X)^T is exactly the identity (docs/algorithm.md §4.2): whitened samples are orthonormal.

    Args:
        samples: X, [..., n, D].
        gt: psi, [..., D] (one ground-truth vector per group, shared by its n samples), or ``None``.
        rel_cutoff, eps, compute_dtype: see :func:`whitening_matrix`.

    Returns:
        :class:`WhiteningResult` with ``samples`` [..., n, D], ``gt`` [..., n, D] (or ``None``),
        ``scale`` = W 1 [..., n] and ``matrix`` = W [..., n, n]. Whitened tensors have the input dtype
        (float32 for half-precision inputs). Gradients do not flow through W (features come from a frozen
        network), but do flow through the multiplication by W.
    """
    if samples.ndim < 2:
        raise ValueError(f"samples must have shape [..., n, D], got {tuple(samples.shape)}")
    expected_gt = (*samples.shape[:-2], samples.shape[-1])
    if gt is not None and tuple(gt.shape) != expected_gt:
        raise ValueError(f"gt must have shape [..., D] = {expected_gt}, got {tuple(gt.shape)}")
    out_dtype = samples.dtype if samples.dtype not in (torch.float16, torch.bfloat16) else torch.float32
    w = whitening_matrix(samples, rel_cutoff=rel_cutoff, eps=eps, compute_dtype=compute_dtype)
    x = samples.to(w.dtype)
    whitened = (w @ x).to(out_dtype)
    # Non-finite groups have W = I, but I @ X would spread a NaN to every row (0 * NaN = NaN): copy them.
    finite = torch.isfinite(x).flatten(-2).all(dim=-1)
    whitened = torch.where(finite[..., None, None], whitened, samples.to(out_dtype))
    scale = w.sum(dim=-1)  # W 1, [..., n]
    whitened_gt = None
    if gt is not None:
        whitened_gt = (scale.unsqueeze(-1) * gt.to(w.dtype).unsqueeze(-2)).to(out_dtype)
    return WhiteningResult(samples=whitened, gt=whitened_gt, scale=scale.to(out_dtype), matrix=w)
