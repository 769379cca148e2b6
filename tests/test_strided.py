"""Tests for ebft.strided: layout, masks, KV-cached strided sampling and strided scoring (docs/algorithm.md §2;
the properties I1-I6 of §8)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ebft.strided import (
    StridedLayout,
    additive_mask,
    block_major_to_gen_region,
    build_strided_allowed,
    build_strided_mask_and_positions,
    build_strided_sequence,
    build_strided_step_mask_and_positions,
    extend_chunk_metadata,
    gen_region_to_block_major,
    sample_tokens,
    split_strided_sequence,
    strided_generate,
    strided_generate_recompute,
    strided_generate_with_logprobs,
    strided_logprobs,
    strided_sample,
)

VOCAB = 97
ATOL = 1e-4

# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def tiny_model(arch: str = "llama", attn: str = "sdpa", seed: int = 0):
    """Tiny random fp32 causal LM, no BOS/EOS/PAD so that ``generate`` never stops early."""
    torch.manual_seed(seed)
    common = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    model.set_attn_implementation(attn)
    return model.eval()


def random_chunk(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


def naive_allowed(L: int, C: int, s: int, G: int, t: int) -> torch.Tensor:
    """The rules of docs/algorithm.md §2.4 written out with Python loops (reference for the vectorised builder)."""
    K = (L - G - C) // s + 1
    size = L + t * K
    allowed = torch.zeros(size, size, dtype=torch.bool)
    for q in range(size):
        if q < L:
            allowed[q, : q + 1] = True
            continue
        step, block = divmod(q - L, K)
        allowed[q, : C + block * s] = True
        for earlier in range(step + 1):
            allowed[q, L + earlier * K + block] = True
    return allowed


@torch.no_grad()
def causal_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.float()


# ---------------------------------------------------------------------------------------------------------
# 1. geometry
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("L", "C", "s", "G", "K", "S"),
    [(8, 2, 2, 2, 3, 14), (1024, 8, 8, 8, 127, 2040), (1024, 4, 2, 4, 509, 3060), (10, 2, 1, 8, 1, 18)],
)
def test_layout_formula(L, C, s, G, K, S):
    layout = StridedLayout(L, C, s, G)
    assert layout.num_blocks == K == (L - G - C) // s + 1
    assert layout.total_len == S == L + G * K
    assert layout.current_len(0) == L
    assert layout.current_len(G) == S


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((9, 2, 2, 2), "divisible"),
        ((1024, 8, 5, 8), "divisible"),
        ((4, 3, 1, 2), "context_len + gen_len <= seq_len"),
        ((0, 2, 2, 2), "seq_len"),
        ((8, 0, 2, 2), "context_len"),
        ((8, 2, 0, 2), "stride"),
        ((8, 2, 2, -1), "gen_len"),
        ((8.0, 2, 2, 2), "seq_len"),
    ],
)
def test_layout_rejects_invalid(args, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        StridedLayout(*args)


def test_layout_error_names_values():
    with pytest.raises(ValueError, match=r"\(9 - 2 - 2\) = 5 and stride=2"):
        StridedLayout(9, 2, 2, 2)


# ---------------------------------------------------------------------------------------------------------
# 2. masks and positions (the example of docs/algorithm.md §2.4)
# ---------------------------------------------------------------------------------------------------------

WORKED_GRID = """
10000000000000
11000000000000
11100000000000
11110000000000
11111000000000
11111100000000
11111110000000
11111111000000
11000000100000
11110000010000
11111100001000
11000000100100
11110000010010
11111100001001
"""


def test_worked_example_mask_and_positions():
    layout = StridedLayout(8, 2, 2, 2)
    expected = torch.tensor([[c == "1" for c in row] for row in WORKED_GRID.split()])
    allowed, pos = build_strided_allowed(layout)
    assert torch.equal(allowed, expected)
    assert pos.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 2, 4, 6, 3, 5, 7]
    # hand-checked rows: g1b1 (row 12) sees x0..x3, g0b1 (col 9) and itself
    assert allowed[12].nonzero().flatten().tolist() == [0, 1, 2, 3, 9, 12]
    assert allowed[10].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5, 10]
    for dtype in (torch.float32, torch.bfloat16):
        mask, positions = build_strided_mask_and_positions(layout, dtype=dtype)
        assert mask.shape == (1, 1, 14, 14) and mask.dtype == dtype
        assert positions.shape == (1, 14) and positions.dtype == torch.long
        assert torch.equal(mask[0, 0] == 0, expected)
        assert torch.all(mask[0, 0][~expected] == torch.finfo(dtype).min)
    # metadata of the generated tokens
    assert layout.prefix_ends().tolist() == [2, 4, 6]
    assert layout.target_positions().tolist() == [[2, 3], [4, 5], [6, 7]]
    assert layout.generated_slots().tolist() == [[8, 11], [9, 12], [10, 13]]
    assert layout.prediction_rows().tolist() == [[1, 8], [3, 9], [5, 10]]


@pytest.mark.parametrize(("L", "C", "s", "G"), [(8, 2, 2, 2), (13, 3, 2, 4), (17, 3, 5, 4), (12, 1, 1, 3)])
def test_mask_invariants(L, C, s, G):
    layout = StridedLayout(L, C, s, G)
    K = layout.num_blocks
    for t in range(G + 1):
        allowed, pos = build_strided_allowed(layout, t)
        assert torch.equal(allowed, naive_allowed(L, C, s, G, t))
        # prefix consistency: the mask at step t is the top-left corner of the final mask
        full, _ = build_strided_allowed(layout)
        assert torch.equal(allowed, full[: L + t * K, : L + t * K])
        # chunk rows are exactly lower-triangular over [0, L)
        assert torch.equal(allowed[:L, :L], torch.ones(L, L, dtype=torch.bool).tril())
        assert not allowed[:L, L:].any()
        for step in range(t):
            for k in range(K):
                q = L + step * K + k
                assert int(allowed[q].sum()) == C + k * s + step + 1
                assert not allowed[q, C + k * s : L].any()
                other = [L + tt * K + kk for tt in range(t) for kk in range(K) if kk != k]
                assert not allowed[q, other].any()
                assert int(pos[q]) == C + k * s + step
        assert pos[:L].tolist() == list(range(L))


@pytest.mark.parametrize(("L", "C", "s", "G"), [(8, 2, 2, 2), (13, 3, 2, 4), (17, 3, 5, 4)])
def test_step_rows_match_full_mask(L, C, s, G):
    layout = StridedLayout(L, C, s, G)
    K = layout.num_blocks
    for step in range(G):
        rows, rows_pos = build_strided_step_mask_and_positions(layout, step, dtype=torch.bfloat16)
        full, full_pos = build_strided_mask_and_positions(layout, step + 1, dtype=torch.bfloat16)
        assert rows.shape == (1, 1, K, L + (step + 1) * K)
        assert torch.equal(rows, full[:, :, L + step * K :])
        assert torch.equal(rows_pos, full_pos[:, L + step * K :])
        assert rows_pos[0].tolist() == [C + k * s + step for k in range(K)]
    with pytest.raises(ValueError):
        build_strided_step_mask_and_positions(layout, G)
    with pytest.raises(ValueError):
        build_strided_mask_and_positions(layout, G + 1)


def test_additive_mask_values():
    allowed = torch.tensor([[True, False], [True, True]])
    mask = additive_mask(allowed, torch.float16)
    assert mask.dtype == torch.float16
    assert mask.tolist() == [[0.0, torch.finfo(torch.float16).min], [0.0, 0.0]]


# ---------------------------------------------------------------------------------------------------------
# layout conversions
# ---------------------------------------------------------------------------------------------------------


def test_sequence_roundtrip_and_metadata():
    layout = StridedLayout(8, 2, 2, 2)
    B, n, K, G = 2, 3, layout.num_blocks, layout.gen_len
    x = random_chunk(B, 8)
    gen = torch.arange(B * n * K * G).reshape(B, n, K, G) + 1000
    seq = build_strided_sequence(x, gen)
    assert seq.shape == (B * n, layout.total_len)
    for b in range(B):
        for i in range(n):
            row = seq[b * n + i]
            assert torch.equal(row[:8], x[b])
            for k in range(K):
                for t in range(G):
                    assert int(row[8 + t * K + k]) == int(gen[b, i, k, t])
    x2, gen2 = split_strided_sequence(seq, layout, num_samples=n)
    assert torch.equal(x2, x) and torch.equal(gen2, gen)
    # per-token tensors with a trailing feature dimension
    feats = torch.randn(B * n, G * K, 5)
    blocks = gen_region_to_block_major(feats, K, dim=1)
    assert blocks.shape == (B * n, K, G, 5)
    assert torch.equal(blocks[:, 1, 1], feats[:, 1 * K + 1])
    assert torch.equal(block_major_to_gen_region(blocks, dim=1), feats)
    meta = torch.arange(8)[None].repeat(2, 1) * 10
    ext = extend_chunk_metadata(meta, layout)
    assert ext[0].tolist() == [0, 10, 20, 30, 40, 50, 60, 70, 20, 40, 60, 30, 50, 70]


# ---------------------------------------------------------------------------------------------------------
# 3. block equivalence (teacher forcing)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_block_equivalence(arch, attn):
    model = tiny_model(arch, attn)
    L, C, s, G = 13, 3, 2, 4  # overlapping windows (s < G)
    layout = StridedLayout(L, C, s, G)
    K = layout.num_blocks
    x = random_chunk(2, L)
    gen = torch.randint(0, VOCAB, (2, 2, K, G), generator=torch.Generator().manual_seed(5))
    seq = build_strided_sequence(x, gen)
    mask, pos = build_strided_mask_and_positions(layout, dtype=model.dtype)
    with torch.no_grad():
        strided = model(input_ids=seq, attention_mask=mask, position_ids=pos.expand(seq.shape[0], -1)).logits
    chunk_ref = causal_logits(model, x).repeat_interleave(2, dim=0)
    torch.testing.assert_close(strided[:, :L], chunk_ref, atol=ATOL, rtol=0)
    for b in range(2):
        for i in range(2):
            for k in range(K):
                p = C + k * s
                plain = causal_logits(model, torch.cat([x[b, :p], gen[b, i, k]])[None])[0]
                rows = [L + t * K + k for t in range(G)]
                torch.testing.assert_close(strided[b * 2 + i, rows], plain[p:], atol=ATOL, rtol=0)
                torch.testing.assert_close(strided[b * 2 + i, :p], plain[:p], atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# 4. greedy strided sampling == greedy HF generate per block
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize(
    ("L", "C", "s", "G"),
    [(8, 2, 2, 2), (13, 3, 2, 4), (17, 3, 5, 4), (16, 4, 4, 4), (9, 2, 3, 1)],
)
def test_greedy_matches_hf_generate(arch, L, C, s, G):
    model = tiny_model(arch, "sdpa", seed=3)
    layout = StridedLayout(L, C, s, G)
    x = random_chunk(2, L, seed=7)
    out = strided_generate(model, x, context_len=C, stride=s, gen_len=G, num_samples=2, temperature=0.0)
    assert out.shape == (2, 2, layout.num_blocks, G) and out.dtype == torch.long
    assert torch.equal(out[:, 0], out[:, 1])  # greedy: samples agree
    for k in range(layout.num_blocks):
        prefix = x[:, : C + k * s]
        with torch.no_grad():
            ref = model.generate(
                prefix, attention_mask=torch.ones_like(prefix), do_sample=False, max_new_tokens=G
            )[:, prefix.shape[1] :]
        assert torch.equal(out[:, 0, k], ref), f"block {k}"


def test_greedy_eager_matches_sdpa():
    x = random_chunk(2, 13, seed=2)
    kwargs = dict(context_len=3, stride=2, gen_len=4, temperature=0.0)
    a = strided_generate(tiny_model("qwen2", "eager"), x, **kwargs)
    b = strided_generate(tiny_model("qwen2", "sdpa"), x, **kwargs)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------
# 5. KV-cached vs recompute
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "attn"), [("llama", "sdpa"), ("qwen2", "eager"), ("qwen2", "sdpa")])
@pytest.mark.parametrize(("L", "C", "s", "G"), [(13, 3, 2, 4), (17, 3, 5, 4), (9, 2, 3, 1)])
def test_cached_matches_recompute(arch, attn, L, C, s, G):
    model = tiny_model(arch, attn, seed=4)
    x = random_chunk(2, L, seed=9)
    kwargs = dict(context_len=C, stride=s, gen_len=G, num_samples=3, temperature=0.7, top_p=0.9)
    cached = strided_sample(
        model, x, generator=torch.Generator().manual_seed(123), return_step_logits=True, **kwargs
    )
    recomputed = strided_sample(
        model,
        x,
        generator=torch.Generator().manual_seed(123),
        return_step_logits=True,
        use_cache=False,
        **kwargs,
    )
    layout = StridedLayout(L, C, s, G)
    K = layout.num_blocks
    assert cached.step_logits.shape == (2, 3, K, G, VOCAB)
    torch.testing.assert_close(cached.step_logits, recomputed.step_logits, atol=ATOL, rtol=0)
    assert torch.equal(cached.tokens, recomputed.tokens)
    torch.testing.assert_close(cached.logprobs, recomputed.logprobs, atol=ATOL, rtol=0)
    # the public wrappers, given the layout, draw the same tokens
    sampling = dict(num_samples=3, temperature=0.7, top_p=0.9)
    tok = strided_generate(model, x, layout, generator=torch.Generator().manual_seed(123), **sampling)
    tok_ref = strided_generate_recompute(model, x, layout, generator=torch.Generator().manual_seed(123), **sampling)
    assert torch.equal(tok, cached.tokens) and torch.equal(tok_ref, cached.tokens)
    # samples of the same chunk differ (independent draws), and a different seed gives different tokens
    assert not torch.equal(cached.tokens[:, 0], cached.tokens[:, 1])
    other = strided_generate(model, x, generator=torch.Generator().manual_seed(321), **kwargs)
    assert not torch.equal(other, tok)


def test_sampler_restores_training_mode_and_global_rng():
    model = tiny_model("llama")
    model.train()
    x = random_chunk(1, 8)
    torch.manual_seed(11)
    a = strided_generate(model, x, context_len=2, stride=2, gen_len=2, num_samples=2)
    assert model.training
    torch.manual_seed(11)
    b = strided_generate_recompute(model, x, context_len=2, stride=2, gen_len=2, num_samples=2)
    assert model.training
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------
# 6. strided scoring
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "attn"), [("llama", "sdpa"), ("qwen2", "eager")])
def test_strided_logprobs_match_plain_causal_and_sampling(arch, attn):
    model = tiny_model(arch, attn, seed=6)
    L, C, s, G, T, n = 13, 3, 2, 4, 0.7, 2
    layout = StridedLayout(L, C, s, G)
    K = layout.num_blocks
    x = random_chunk(2, L, seed=13)
    tokens, sample_lp = strided_generate_with_logprobs(
        model,
        x,
        context_len=C,
        stride=s,
        gen_len=G,
        num_samples=n,
        temperature=T,
        generator=torch.Generator().manual_seed(0),
    )
    gen_lp, chunk_lp = strided_logprobs(
        model, x, tokens, context_len=C, stride=s, temperature=T, logits_chunk_size=7
    )
    assert gen_lp.shape == (2, n, K, G) and chunk_lp.shape == (2, L - 1)
    assert gen_lp.dtype == torch.float32 and gen_lp.requires_grad
    # sampling-time log-probs == scoring-time log-probs (docs/algorithm.md §8, I6)
    torch.testing.assert_close(gen_lp.detach(), sample_lp, atol=ATOL, rtol=0)
    # plain causal forward of each prefix || block at temperature T
    for b in range(2):
        for i in range(n):
            for k in range(K):
                p = C + k * s
                logits = causal_logits(model, torch.cat([x[b, :p], tokens[b, i, k]])[None])[0]
                ref = F.log_softmax(logits[p - 1 : p - 1 + G] / T, dim=-1).gather(
                    -1, tokens[b, i, k][:, None]
                )
                torch.testing.assert_close(gen_lp[b, i, k].detach(), ref[:, 0], atol=ATOL, rtol=0)
    # chunk targets at T = 1 (docs/algorithm.md §8, I6)
    ref_chunk = F.log_softmax(causal_logits(model, x)[:, :-1], dim=-1).gather(-1, x[:, 1:, None])[..., 0]
    torch.testing.assert_close(chunk_lp.detach(), ref_chunk, atol=ATOL, rtol=0)


def test_strided_logprobs_gradient_matches_full_logits():
    model = tiny_model("llama", "sdpa", seed=8)
    model.train()
    L, C, s, G, T = 8, 2, 2, 2, 0.6
    layout = StridedLayout(L, C, s, G)
    x = random_chunk(2, L, seed=4)
    gen = torch.randint(0, VOCAB, (2, 2, layout.num_blocks, G), generator=torch.Generator().manual_seed(1))
    weights = torch.randn(2, 2, layout.num_blocks, G, generator=torch.Generator().manual_seed(2))

    gen_lp, chunk_lp = strided_logprobs(
        model, x, gen, context_len=C, stride=s, temperature=T, logits_chunk_size=5
    )
    loss = -(weights * gen_lp).mean() - chunk_lp.mean()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    # reference: full [N, S, V] logits from the causal-LM forward, explicit gather at the rows of docs/algorithm.md §2.5
    seq = build_strided_sequence(x, gen)
    mask, pos = build_strided_mask_and_positions(layout, dtype=model.dtype)
    logits = model(
        input_ids=seq, attention_mask=mask, position_ids=pos.expand(seq.shape[0], -1)
    ).logits.float()
    rows = layout.prediction_rows().reshape(-1)
    ref_gen = (
        F.log_softmax(logits[:, rows] / T, dim=-1)
        .gather(-1, gen.reshape(4, -1, 1))[..., 0]
        .reshape(gen.shape)
    )
    ref_chunk = F.log_softmax(logits[:, : L - 1], dim=-1).gather(-1, seq[:, 1:L, None])[..., 0]
    torch.testing.assert_close(gen_lp.detach(), ref_gen.detach(), atol=ATOL, rtol=0)
    torch.testing.assert_close(chunk_lp.detach(), ref_chunk[::2].detach(), atol=ATOL, rtol=0)
    ref_loss = -(weights * ref_gen).mean() - ref_chunk.mean()
    ref_loss.backward()
    assert model.training  # scoring leaves the mode alone
    for name, p in model.named_parameters():
        assert torch.isfinite(grads[name]).all(), name
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert grads["lm_head.weight"].abs().sum() > 0
    assert grads["model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0


def test_strided_logprobs_no_grad_and_validation():
    model = tiny_model("qwen2")
    x = random_chunk(1, 8)
    gen = torch.randint(0, VOCAB, (1, 1, 3, 2))
    with torch.no_grad():
        a, ca = strided_logprobs(model, x, gen, context_len=2, stride=2, temperature=1.0, logits_chunk_size=1)
        b, cb = strided_logprobs(model, x, gen, context_len=2, stride=2, temperature=1.0)
    assert not a.requires_grad
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(ca, cb, atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        strided_logprobs(model, x, gen, context_len=2, stride=2, temperature=0.0)
    with pytest.raises(ValueError):
        strided_logprobs(model, x, gen[:, :, :2], context_len=2, stride=2)


# ---------------------------------------------------------------------------------------------------------
# 7. sampling rules
# ---------------------------------------------------------------------------------------------------------


def test_sample_tokens_greedy_limits():
    logits = torch.randn(64, VOCAB, generator=torch.Generator().manual_seed(0))
    greedy, greedy_lp = sample_tokens(logits, temperature=0.0)
    assert torch.equal(greedy, logits.argmax(-1))
    torch.testing.assert_close(greedy_lp, F.log_softmax(logits, -1).gather(-1, greedy[:, None])[:, 0])
    tiny_p, tiny_lp = sample_tokens(
        logits, temperature=0.7, top_p=1e-6, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(tiny_p, greedy)
    torch.testing.assert_close(tiny_lp, F.log_softmax(logits / 0.7, -1).gather(-1, greedy[:, None])[:, 0])


def test_top_p_nucleus():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log().expand(4000, -1)
    g = torch.Generator().manual_seed(0)
    # cumulative mass before tokens (sorted): 0, 0.5, 0.8, 0.95 -> top_p=0.7 keeps {1, 3}
    tok, _ = sample_tokens(logits, temperature=1.0, top_p=0.7, generator=g)
    counts = torch.bincount(tok, minlength=4).float() / tok.numel()
    assert counts[0] == 0 and counts[2] == 0
    assert math.isclose(float(counts[1]), 0.5 / 0.8, abs_tol=0.04)
    tok, _ = sample_tokens(logits, temperature=1.0, top_p=1.0, generator=g)
    counts = torch.bincount(tok, minlength=4).float() / tok.numel()
    torch.testing.assert_close(counts, probs, atol=0.04, rtol=0)


def test_strided_generate_greedy_limits():
    model = tiny_model("qwen2", seed=2)
    x = random_chunk(2, 13, seed=3)
    kwargs = dict(context_len=3, stride=2, gen_len=4, num_samples=2)
    greedy = strided_generate(model, x, temperature=0.0, **kwargs)
    tiny_p = strided_generate(
        model, x, temperature=0.7, top_p=1e-6, generator=torch.Generator().manual_seed(0), **kwargs
    )
    assert torch.equal(greedy, tiny_p)
    with pytest.raises(ValueError):
        strided_generate(model, x, temperature=-1.0, **kwargs)
    with pytest.raises(ValueError):
        strided_generate(model, x, top_p=0.0, **kwargs)
    with pytest.raises(ValueError):
        strided_generate(model, x, context_len=3, stride=4, gen_len=4)


def test_bf16_model_smoke():
    model = tiny_model("qwen2", "eager").to(torch.bfloat16)
    x = random_chunk(1, 13)
    tokens, lp = strided_generate_with_logprobs(
        model,
        x,
        context_len=3,
        stride=2,
        gen_len=4,
        num_samples=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert tokens.shape == (1, 2, 4, 4) and lp.dtype == torch.float32
    gen_lp, chunk_lp = strided_logprobs(model, x, tokens, StridedLayout(13, 3, 2, 4))
    assert gen_lp.dtype == torch.float32 and torch.isfinite(gen_lp).all() and torch.isfinite(chunk_lp).all()
    torch.testing.assert_close(gen_lp.detach(), lp, atol=0.1, rtol=0)


def test_query_rows_range_checked():
    layout = StridedLayout(8, 2, 2, 2)
    with pytest.raises(ValueError, match="query_rows"):
        build_strided_allowed(layout, 1, query_rows=torch.tensor([11]))
    allowed, pos = build_strided_allowed(layout, 1, query_rows=torch.tensor([3, 9]))
    assert allowed.shape == (2, 11) and pos.tolist() == [3, 4]
