"""Validation conditional feature-matching (CFM) loss (docs/algorithm.md §7, the unbiased estimator).

For every held-out chunk and block k, ``n ≥ 2`` completions ``ŷ_{i,k}`` of ``G`` tokens are sampled from the
model with the strided sampler, and the frozen feature network (the task's base model) embeds them and the
ground truth ``y_k``. Per (chunk, block)::

    CFM_hat = 1/(n(n-1)) sum_{i≠j} <phi_i, phi_j>  -  2/n sum_i <phi_i, psi>  +  <psi, psi>

an unbiased estimate of ``|| E phi(c_k, ŷ) - phi(c_k, y_k) ||^2`` (the reference averages over the wrong axis,
docs/algorithm.md §7.4). Reported: ``eval/cfm`` (mean over all blocks), ``eval/cfm_se`` (standard error over blocks),
``eval/cfm_se_chunks`` (standard error of the per-chunk means, which accounts for blocks of one chunk being
correlated), ``eval/alignment`` and ``eval/diversity`` (means of the EBFT reward terms, no whitening).

``eval/cfm_whitened_ref`` is the reference implementation's form, for comparison with its curves:
``1 - mean_i (a_i - d_i/2)`` on *whitened* features (sample-space whitening of the ``n`` samples of each
block, the ground truth whitened with them; docs/algorithm.md §4). It equals ``eval/cfm`` only for unit,
unwhitened features (§5.2); with whitening it is not an estimate of the CFM loss, so ``eval/cfm`` stays the
metric and this one is reported under its own name.
"""

from __future__ import annotations

import math

import torch

from ebft.data.packing import Packed
from ebft.features import FeatureNetwork
from ebft.methods.base import rollout_seed
from ebft.rewards import alignment, cfm_loss, diversity
from ebft.strided import StridedLayout, strided_sample


@torch.no_grad()
def validation_cfm(
    model: torch.nn.Module,
    features: FeatureNetwork,
    packed: Packed,
    *,
    context_len: int,
    stride: int,
    gen_len: int,
    num_samples: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 4,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """CFM of ``model`` on ``packed`` chunks (``[N, L]``, geometry ``C = context_len``, ``s = stride``,
    ``G = gen_len``); returns (metrics, per-chunk details)."""
    if num_samples < 2:
        raise ValueError("the unbiased CFM estimator needs num_samples >= 2")
    layout = StridedLayout(packed.input_ids.shape[1], context_len, stride, gen_len)
    model.eval()
    device = next(model.parameters()).device
    per_block, per_chunk, align, div, ref = [], [], [], [], []
    for i, start in enumerate(range(0, len(packed), batch_size)):
        ids = packed.input_ids[start : start + batch_size].to(device)
        generator = torch.Generator(device=device).manual_seed(rollout_seed(seed, 0, i))
        sample = strided_sample(model, ids, layout, num_samples=num_samples, temperature=temperature, top_p=top_p,
                                generator=generator)
        feats = features(ids, sample.tokens, layout, whiten=True)
        phi, psi = feats.reward_inputs(whitened=False)  # [b, K, n, D], [b, K, D]
        cfm = cfm_loss(phi, psi)  # [b, K]
        per_block.append(cfm.reshape(-1).cpu())
        per_chunk.append(cfm.mean(dim=1).cpu())
        align.append(alignment(phi, psi).mean().item())
        div.append(diversity(phi).mean().item())
        w_phi, w_psi = feats.reward_inputs(whitened=True)  # [b, K, n, D], [b, K, n, D]
        ref.append((1.0 - (alignment(w_phi, w_psi) - diversity(w_phi) / 2).mean()).item())
    blocks = torch.cat(per_block).double()
    chunks = torch.cat(per_chunk).double()
    metrics = {
        "eval/cfm": float(blocks.mean()),
        "eval/cfm_se": float(blocks.std() / math.sqrt(len(blocks))) if len(blocks) > 1 else float("nan"),
        "eval/cfm_se_chunks": float(chunks.std() / math.sqrt(len(chunks))) if len(chunks) > 1 else float("nan"),
        "eval/alignment": sum(align) / len(align),
        "eval/diversity": sum(div) / len(div),
        "eval/cfm_whitened_ref": sum(ref) / len(ref),
    }
    details = {"blocks": len(blocks), "chunks": len(chunks), "cfm_per_chunk": [round(float(x), 6) for x in chunks]}
    return metrics, details


def cfm_by_length(
    model: torch.nn.Module,
    features: FeatureNetwork,
    packed: Packed,
    gen_lens: list[int],
    *,
    context_len: int,
    stride: int,
    **kwargs: object,
) -> tuple[dict[str, float], dict[str, object]]:
    """Validation CFM for each completion length ``G`` in ``gen_lens`` (paper Figures 1-2), other geometry
    fixed; every ``G`` must satisfy ``(L - G - C) mod s = 0``. Metrics ``eval/cfm_len{G}`` (+ ``_se``)."""
    L = packed.input_ids.shape[1]
    for g in gen_lens:
        StridedLayout(L, context_len, stride, g)  # raises with the offending values
    metrics: dict[str, float] = {}
    details: dict[str, object] = {}
    for g in gen_lens:
        m, d = validation_cfm(model, features, packed, context_len=context_len, stride=stride, gen_len=g, **kwargs)
        metrics[f"eval/cfm_len{g}"] = m["eval/cfm"]
        metrics[f"eval/cfm_len{g}_se"] = m["eval/cfm_se"]
        details[f"len{g}"] = d
    return metrics, details
