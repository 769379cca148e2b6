"""Chunk sharing across the ``n`` samples (issue 7): ``strided_logprobs(share_chunk=True)`` and the EBFT
objective with a shared chunk give the losses and gradients of the unshared computation (fp32 round-off)."""

from __future__ import annotations

import pytest
import torch

from ebft.methods.ebft import EBFTObjective
from ebft.strided import StridedLayout, strided_generate, strided_logprobs
from tests.ddp_ebft_step import tiny_llama
from tests.test_strided import tiny_model


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def _loss_and_grads(model, ids, gen, share: bool, **kw):
    model.zero_grad(set_to_none=True)
    gen_lp, chunk_lp = strided_logprobs(model, ids, gen, share_chunk=share, **kw)
    weights = torch.linspace(-1.0, 1.0, gen_lp.numel()).reshape(gen_lp.shape)  # sample-dependent weights
    loss = (weights * gen_lp).mean() - 0.3 * chunk_lp.mean()
    loss.backward()
    return gen_lp.detach(), chunk_lp.detach(), loss.detach(), _grads(model)


@pytest.mark.parametrize(
    ("arch", "attn", "L", "C", "s", "G", "n", "T"),
    [
        ("llama", "sdpa", 20, 4, 2, 4, 3, 0.7),
        ("qwen2", "eager", 17, 3, 3, 2, 2, 1.0),
        ("llama", "sdpa", 13, 4, 4, 1, 2, 1.3),  # G = 1: no generated-token forward at all
        ("qwen2", "sdpa", 16, 4, 4, 4, 1, 1.0),  # n = 1
    ],
)
def test_shared_chunk_logprobs_and_gradients_match_unshared(arch, attn, L, C, s, G, n, T):
    model = tiny_model(arch, attn=attn, seed=3)
    model.train()
    ids = torch.randint(0, 97, (2, L), generator=torch.Generator().manual_seed(5))
    gen = strided_generate(model, ids, context_len=C, stride=s, gen_len=G, num_samples=n, temperature=1.0,
                           generator=torch.Generator().manual_seed(6))
    kw = dict(context_len=C, stride=s, temperature=T, logits_chunk_size=7)
    g0, c0, l0, grads0 = _loss_and_grads(model, ids, gen, False, **kw)
    g1, c1, l1, grads1 = _loss_and_grads(model, ids, gen, True, **kw)
    torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c1, c0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(l1, l0, atol=1e-6, rtol=1e-5)
    assert grads0.keys() == grads1.keys() and grads0
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():  # no-grad path (reference / KL scoring)
        g2, c2 = strided_logprobs(model, ids, gen, StridedLayout(L, C, s, G), share_chunk=True, temperature=T,
                                  logits_chunk_size=7)
    torch.testing.assert_close(g2, g0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c2, c0, atol=1e-5, rtol=1e-5)


def test_ebft_objective_shared_equals_unshared():
    ids = torch.randint(0, 61, (2, 17), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "doc_ids": torch.zeros_like(ids)}
    results = []
    for share in (False, True):
        params = {"num_samples": 3, "temperature": 0.7, "whitening": True, "ce_coef": 0.1, "kl_coef": 0.2,
                  "share_chunk": share}
        obj = EBFTObjective(params, context_len=4, stride=2, gen_len=3, feature_model=tiny_llama(1),
                            reference_model=tiny_llama(2), seed=0)
        assert obj.share_chunk is share and obj.features.share_chunk is share
        model = tiny_llama(0)
        loss, metrics = obj.compute_loss(model, batch, step=2, micro=1)
        loss.backward()
        results.append((float(loss.detach()), metrics, _grads(model)))
    (l0, m0, g0), (l1, m1, g1) = results
    assert l1 == pytest.approx(l0, rel=1e-5, abs=1e-6)
    for key in m0:
        assert m1[key] == pytest.approx(m0[key], rel=1e-4, abs=1e-5), key
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-4, msg=name)
