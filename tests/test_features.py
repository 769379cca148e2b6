"""Tests for ebft.features: the frozen feature network (docs/algorithm.md §3-4, properties I7-I10 of §8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ebft.features import (
    EMBED_METHODS,
    FeatureConfig,
    FeatureNetwork,
    Features,
    LayerSelection,
    compute_features,
    pool_blocks,
    resolve_hidden_state_method,
    token_features,
)
from ebft.rewards import alignment, diversity
from ebft.strided import StridedLayout
from ebft.whitening import whiten

VOCAB = 97
ATOL = 1e-5
# L = 14, C = 2, s = 2, G = 4  ->  K = 5, S = 34
L, C, STRIDE, G = 14, 2, 2, 4
K = (L - G - C) // STRIDE + 1
N_LAYERS = 4


def tiny_model(arch: str = "llama", seed: int = 0, dropout: float = 0.0, attn: str = "sdpa"):
    torch.manual_seed(seed)
    common = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        attention_dropout=dropout,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(LlamaConfig(**common)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**common))
    model.set_attn_implementation(attn)
    return model.eval()


def random_batch(B: int = 2, n: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (B, L), generator=g), torch.randint(0, VOCAB, (B, n, K, G), generator=g)


def ground_truth_blocks(input_ids: torch.Tensor, n: int) -> torch.Tensor:
    """generated [B, n, K, G] equal to the ground-truth continuations y_k."""
    layout = StridedLayout(L, C, STRIDE, G)
    y = input_ids[:, layout.target_positions()]  # [B, K, G]
    return y[:, None].expand(-1, n, -1, -1).clone()


def naive_features(model, tokens: torch.Tensor, layers: tuple[int, ...], combine: str = "concat") -> torch.Tensor:
    """Independent reference: plain causal forward of ``tokens [T]``, select layers, normalise -> [T, NF, D]."""
    with torch.no_grad():
        hs = model(input_ids=tokens[None], output_hidden_states=True).hidden_states
    parts = [hs[i][0].float() for i in layers]
    if combine == "concat":
        f = torch.cat(parts, -1)[:, None]
    elif combine == "stack":
        f = torch.stack(parts, 1)
    else:
        f = torch.stack(parts).mean(0)[:, None]
    return f / f.norm(dim=-1, keepdim=True)


def naive_pool(f: torch.Tensor, method: str) -> torch.Tensor:
    """f [G, NF, D] -> flattened block feature."""
    if method == "last_token":
        return f[-1].flatten()
    if method == "mean_pooling":
        return f.mean(0).flatten()
    if method == "concat":
        return f.transpose(0, 1).flatten()
    return f.flatten(1)  # token: [G, NF*D]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def qwen():
    return tiny_model("qwen2", seed=3)


# ---------------------------------------------------------------------------------------------------------
# layer selection
# ---------------------------------------------------------------------------------------------------------


def test_resolve_hidden_state_methods() -> None:
    r = resolve_hidden_state_method
    assert r("last_only", 28) == LayerSelection((28,), "concat")
    assert r("concat", 28) == LayerSelection((7, 14, 21), "concat")
    assert r("concat", 16) == LayerSelection((4, 8, 12), "concat")
    assert r("stack", 16) == LayerSelection((4, 8, 12), "stack")
    assert r("stack", 16).num_groups == 3 and r("concat", 16).num_groups == 1
    assert r("concat", 2) == LayerSelection((1, 1, 1), "concat")  # clamped to [1, N], duplicates kept
    assert r("mean", 4) == LayerSelection((1, 2, 3, 4), "mean")
    assert r("middle", 4) == LayerSelection((2, 3), "mean")
    assert r("middle_concat", 5) == LayerSelection((2, 3), "concat")
    assert r("middle_stack", 4) == LayerSelection((2, 3), "stack")
    assert r("layer_0", 4) == LayerSelection((0,), "concat")
    assert r("layer_-1", 4) == LayerSelection((4,), "concat")
    assert r("concat_layers_1_3", 4) == LayerSelection((1, 3), "concat")
    assert r("stack_layers_0_2_4", 4) == LayerSelection((0, 2, 4), "stack")
    for bad in ("layer_5", "concat_layers_1_9", "nonsense", "layer_x"):
        with pytest.raises(ValueError):
            r(bad, 4)
    with pytest.raises(ValueError):
        r(LayerSelection((7,), "concat"), 4)


@pytest.mark.parametrize(
    ("method", "layers", "combine"),
    [
        ("layer_0", (0,), "concat"),
        ("layer_2", (2,), "concat"),
        ("last_only", (4,), "concat"),
        ("concat", (1, 2, 3), "concat"),
        ("stack", (1, 2, 3), "stack"),
        ("mean", (1, 2, 3, 4), "mean"),
        ("middle", (2, 3), "mean"),
    ],
)
def test_layer_selection_matches_plain_forward(llama, method: str, layers: tuple[int, ...], combine: str) -> None:
    """Token features (embed_method=token) of block k equal the normalised selected hidden states of a plain
    causal forward; the last entry is the post-final-norm state."""
    input_ids, generated = random_batch(B=1, n=2)
    feats = compute_features(
        llama, input_ids, generated, context_len=C, stride=STRIDE, hidden_state_method=method, embed_method="token"
    )
    assert feats.samples.shape[:4] == (1, 2, K, G) and feats.gt.shape[:3] == (1, K, G)
    for k in (0, K - 1):
        start = C + k * STRIDE
        ref = naive_features(llama, input_ids[0, : start + G], layers, combine)[start:].flatten(1)
        torch.testing.assert_close(feats.gt[0, k], ref, atol=ATOL, rtol=0)
        seq = torch.cat([input_ids[0, :start], generated[0, 1, k]])
        ref = naive_features(llama, seq, layers, combine)[start:].flatten(1)
        torch.testing.assert_close(feats.samples[0, 1, k], ref, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# identical continuations, unit norms and block equivalence (docs/algorithm.md §8, I8-I9)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("embed_method", EMBED_METHODS)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_sample_equal_to_ground_truth_has_its_features(llama, qwen, arch: str, embed_method: str) -> None:
    model = llama if arch == "llama" else qwen
    input_ids, generated = random_batch(B=2, n=3)
    gt_blocks = ground_truth_blocks(input_ids, 3)
    generated[:, 1] = gt_blocks[:, 1]  # sample 1 of every chunk reproduces y_k; samples 0 and 2 are random
    feats = compute_features(model, input_ids, generated, context_len=C, stride=STRIDE, embed_method=embed_method)
    torch.testing.assert_close(feats.samples[:, 1], feats.gt, atol=ATOL, rtol=0)
    assert not torch.allclose(feats.samples[:, 0], feats.gt, atol=1e-3)
    phi, psi = feats.reward_inputs()
    a = alignment(phi, psi)  # [B, K, n] (token: [B, K, G, n])
    torch.testing.assert_close(a[..., 1], torch.full_like(a[..., 1], 2.0), atol=1e-5, rtol=0)
    assert (a[..., 0] < 2.0 - 1e-4).all()


def test_all_samples_equal_to_ground_truth_stay_equal_when_whitened(llama) -> None:
    input_ids, _ = random_batch(B=1, n=2)
    generated = ground_truth_blocks(input_ids, 2)
    feats = compute_features(llama, input_ids, generated, context_len=C, stride=STRIDE, whiten=True)
    torch.testing.assert_close(feats.samples, feats.gt[:, None].expand_as(feats.samples), atol=ATOL, rtol=0)
    phi, psi = feats.reward_inputs(whitened=False)
    torch.testing.assert_close(alignment(phi, psi), torch.full((1, K, 2), 2.0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["concat", "stack", "mean", "last_only"])
def test_features_have_unit_norms(llama, method: str) -> None:
    input_ids, generated = random_batch()
    token = compute_features(
        llama, input_ids, generated, context_len=C, stride=STRIDE, hidden_state_method=method, embed_method="token"
    )
    nf = token.num_groups
    assert nf == (3 if method == "stack" else 1)
    for x in (token.samples, token.gt):
        norms = x.unflatten(-1, (nf, -1)).norm(dim=-1)  # per token, per feature group
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
    last = compute_features(
        llama, input_ids, generated, context_len=C, stride=STRIDE, hidden_state_method=method, embed_method="last_token"
    )
    for x in (last.samples, last.gt):
        norms = x.unflatten(-1, (nf, -1)).norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
    mean = compute_features(
        llama,
        input_ids,
        generated,
        context_len=C,
        stride=STRIDE,
        hidden_state_method=method,
        embed_method="mean_pooling",
    )
    assert (mean.samples.unflatten(-1, (nf, -1)).norm(dim=-1) <= 1 + 1e-5).all()


def test_per_layer_normalization_balances_layers(llama) -> None:
    input_ids, generated = random_batch(B=1, n=2)
    feats = compute_features(
        llama, input_ids, generated, context_len=C, stride=STRIDE, embed_method="token", normalization="per_layer"
    )
    parts = feats.samples.unflatten(-1, (3, -1)).norm(dim=-1)  # 3 layers of width 32
    torch.testing.assert_close(parts, torch.full_like(parts, 3**-0.5), atol=1e-5, rtol=0)
    joint = compute_features(llama, input_ids, generated, context_len=C, stride=STRIDE, embed_method="token")
    raw = compute_features(
        llama, input_ids, generated, context_len=C, stride=STRIDE, embed_method="token", normalization="none"
    )
    torch.testing.assert_close(F.normalize(raw.samples, dim=-1), joint.samples, atol=1e-5, rtol=0)
    # reference joint normalisation: each layer keeps its share of the raw norm (docs/algorithm.md §3.4), no balancing
    raw_parts = raw.samples.unflatten(-1, (3, -1)).norm(dim=-1)
    joint_parts = joint.samples.unflatten(-1, (3, -1)).norm(dim=-1)
    torch.testing.assert_close(joint_parts, raw_parts / raw.samples.norm(dim=-1, keepdim=True), atol=1e-5, rtol=0)
    assert (joint_parts - 3**-0.5).abs().max() > 1e-2


@pytest.mark.parametrize("embed_method", EMBED_METHODS)
def test_block_equivalence_with_plain_forward(qwen, embed_method: str) -> None:
    """phi_{i,k} equals the feature of a plain causal forward on c_k || ŷ_k, psi_k that of c_k || y_k."""
    input_ids, generated = random_batch(B=2, n=2, seed=7)
    feats = compute_features(qwen, input_ids, generated, context_len=C, stride=STRIDE, embed_method=embed_method)
    D = 3 * 32 * (G if embed_method == "concat" else 1)
    assert feats.gt.shape[:3] == (2, K, G if embed_method == "token" else D)
    layers = (1, 2, 3)
    for b in range(2):
        for k in range(K):
            start = C + k * STRIDE
            ref = naive_pool(naive_features(qwen, input_ids[b, : start + G], layers)[start:], embed_method)
            torch.testing.assert_close(feats.gt[b, k], ref, atol=ATOL, rtol=0)
            for i in range(2):
                seq = torch.cat([input_ids[b, :start], generated[b, i, k]])
                ref = naive_pool(naive_features(qwen, seq, layers)[start:], embed_method)
                torch.testing.assert_close(feats.samples[b, i, k], ref, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# whitening (docs/algorithm.md §4; §8, I10)
# ---------------------------------------------------------------------------------------------------------


def test_whitening_identity_gram_and_rescaled_gt(llama) -> None:
    input_ids, generated = random_batch(B=2, n=3, seed=5)
    feats = compute_features(llama, input_ids, generated, context_len=C, stride=STRIDE, whiten=True)
    assert feats.whitened_samples.shape == (2, 3, K, 96) and feats.whitened_gt.shape == (2, 3, K, 96)
    phi, psi = feats.reward_inputs()  # whitened by default
    assert phi.shape == (2, K, 3, 96) and psi.shape == (2, K, 3, 96)
    gram = phi @ phi.mT
    torch.testing.assert_close(gram, torch.eye(3).expand_as(gram), atol=1e-5, rtol=0)
    torch.testing.assert_close(diversity(phi), torch.zeros(2, K, 3), atol=1e-5, rtol=0)
    # whitened ground truth = (W 1)_i psi, identical to ebft.whitening.whiten on the raw features
    raw_phi, raw_psi = feats.reward_inputs(whitened=False)
    ref = whiten(raw_phi, raw_psi)
    torch.testing.assert_close(phi, ref.samples, atol=1e-6, rtol=0)
    torch.testing.assert_close(psi, ref.gt, atol=1e-6, rtol=0)
    torch.testing.assert_close(psi, ref.scale[..., None] * raw_psi[:, :, None], atol=1e-6, rtol=0)


def test_whitening_per_feature_group_and_duplicates(llama) -> None:
    input_ids, generated = random_batch(B=1, n=3, seed=6)
    generated[:, 2] = generated[:, 0]  # duplicate sample
    feats = compute_features(
        llama, input_ids, generated, context_len=C, stride=STRIDE, hidden_state_method="stack", whiten=True
    )
    groups = feats.whitened_samples.unflatten(-1, (3, -1)).movedim(1, -2)  # [B, K, NF, n, D_g]
    gram = groups @ groups.mT
    expected = torch.tensor([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    torch.testing.assert_close(gram, expected.expand_as(gram), atol=1e-4, rtol=0)


def test_reward_inputs_without_whitening_raises(llama) -> None:
    input_ids, generated = random_batch(B=1, n=2)
    feats = compute_features(llama, input_ids, generated, context_len=C, stride=STRIDE)
    assert feats.whitened_samples is None and feats.whitened_gt is None and not feats.whitened
    with pytest.raises(ValueError):
        feats.reward_inputs(whitened=True)


# ---------------------------------------------------------------------------------------------------------
# batching, sharing, freezing
# ---------------------------------------------------------------------------------------------------------


def _assert_same(a: Features, b: Features, atol: float = ATOL) -> None:
    torch.testing.assert_close(a.gt, b.gt, atol=atol, rtol=0)
    torch.testing.assert_close(a.samples, b.samples, atol=atol, rtol=0)
    if a.whitened_samples is not None:
        torch.testing.assert_close(a.whitened_samples, b.whitened_samples, atol=1e-4, rtol=0)
        torch.testing.assert_close(a.whitened_gt, b.whitened_gt, atol=1e-4, rtol=0)


@pytest.mark.parametrize("embed_method", ["last_token", "concat", "token"])
def test_micro_batching_and_shared_chunk_match_one_batch(llama, embed_method: str) -> None:
    input_ids, generated = random_batch(B=3, n=2, seed=9)
    kwargs = dict(context_len=C, stride=STRIDE, embed_method=embed_method, whiten=True)
    full = compute_features(llama, input_ids, generated, **kwargs)
    for mbs in (1, 3, 4):  # 3 splits the replicas of a chunk across micro-batches
        _assert_same(full, compute_features(llama, input_ids, generated, micro_batch_size=mbs, **kwargs))
    layout = StridedLayout(L, C, STRIDE, G)
    for mbs in (None, 1, 4):
        config = FeatureConfig(embed_method=embed_method, whiten=True, micro_batch_size=mbs, share_chunk=True)
        shared = compute_features(llama, input_ids, generated, layout, config)
        _assert_same(full, shared)


def test_eager_attention_base_model_and_layout_argument() -> None:
    model = tiny_model("llama", attn="eager")
    input_ids, generated = random_batch(B=1, n=2)
    layout = StridedLayout(L, C, STRIDE, G)
    a = compute_features(model, input_ids, generated, layout=layout)
    b = compute_features(model, input_ids, generated, context_len=C, stride=STRIDE, share_chunk=True)
    assert a.layout == layout
    _assert_same(a, b)
    base = compute_features(model.model, input_ids, generated, layout=layout)  # a bare AutoModel-style body
    _assert_same(a, base, atol=0)


def test_feature_network_is_frozen(llama) -> None:
    model = tiny_model("llama", seed=11, dropout=0.5)
    model.train()
    net = FeatureNetwork(model, FeatureConfig(embed_method="mean_pooling", whiten=True, micro_batch_size=2))
    assert not model.training and not net.training
    assert all(not p.requires_grad for p in model.parameters())
    assert list(p for p in net.parameters() if p.requires_grad) == []
    net.train()  # a parent's .train() must not enable dropout
    assert not model.training and not net.training
    input_ids, generated = random_batch(B=2, n=2)
    with torch.enable_grad():
        out1 = net(input_ids, generated, context_len=C, stride=STRIDE)
        out2 = net(input_ids, generated, StridedLayout(L, C, STRIDE, G))
    assert not out1.samples.requires_grad and not out1.whitened_gt.requires_grad
    assert all(p.grad is None for p in model.parameters())
    _assert_same(out1, out2, atol=0)  # no dropout: deterministic
    assert out1.samples.dtype == torch.float32
    assert not model.training


def test_compute_features_restores_training_flag() -> None:
    model = tiny_model("llama", seed=12, dropout=0.5)
    input_ids, generated = random_batch(B=1, n=2)
    ref = compute_features(model, input_ids, generated, context_len=C, stride=STRIDE)
    model.train()
    out = compute_features(model, input_ids, generated, context_len=C, stride=STRIDE)
    assert model.training  # caller's flag restored
    assert all(p.requires_grad for p in model.parameters())  # a bare model's flags are not touched
    _assert_same(ref, out, atol=0)  # but it ran in eval mode (no dropout)


def test_bf16_model_returns_float32() -> None:
    model = tiny_model("qwen2", seed=4).to(torch.bfloat16)
    input_ids, generated = random_batch(B=1, n=2)
    generated[:, 0] = ground_truth_blocks(input_ids, 2)[:, 0]
    feats = compute_features(model, input_ids, generated, context_len=C, stride=STRIDE, whiten=True)
    assert feats.samples.dtype == torch.float32 and feats.whitened_samples.dtype == torch.float32
    norms = feats.samples.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.samples[:, 0], feats.gt, atol=2e-2, rtol=0)


def test_renormalize_blocks(llama) -> None:
    input_ids, generated = random_batch(B=1, n=2)
    feats = compute_features(
        llama, input_ids, generated, context_len=C, stride=STRIDE, embed_method="mean_pooling", renormalize_blocks=True
    )
    for x in (feats.samples, feats.gt):
        torch.testing.assert_close(x.norm(dim=-1), torch.ones(x.shape[:-1]), atol=1e-5, rtol=0)


def test_input_validation(llama) -> None:
    input_ids, generated = random_batch(B=1, n=2)
    with pytest.raises(ValueError):
        compute_features(llama, input_ids, generated)  # no geometry
    with pytest.raises(ValueError):
        compute_features(llama, input_ids, generated[:, :, :-1], context_len=C, stride=STRIDE)  # wrong K
    with pytest.raises(ValueError):
        compute_features(llama, input_ids, generated, context_len=C, stride=STRIDE, embed_method="max")
    with pytest.raises(ValueError):
        compute_features(llama, input_ids, generated, context_len=C, stride=STRIDE, answer_mask=torch.ones(1, L - 1))
    with pytest.raises(ValueError):
        compute_features(llama, input_ids, generated, context_len=C, stride=STRIDE, normalization="l1")


# ---------------------------------------------------------------------------------------------------------
# answer masking (docs/algorithm.md §3.6)
# ---------------------------------------------------------------------------------------------------------


def test_answer_mask_pools_only_answer_tokens(llama) -> None:
    input_ids, generated = random_batch(B=1, n=2, seed=13)
    # answer tokens at chunk positions 5..7 only. Windows (C + k*s .. +G-1): k=0: 2-5, k=1: 4-7, k=2: 6-9,
    # k=3: 8-11, k=4: 10-13  ->  last answer offset per block: 3, 3, 1, none, none
    answer = torch.zeros(1, L, dtype=torch.long)
    answer[0, 5:8] = 1
    kw = dict(context_len=C, stride=STRIDE)
    token = compute_features(llama, input_ids, generated, embed_method="token", **kw)
    masked_token = compute_features(llama, input_ids, generated, embed_method="token", answer_mask=answer, **kw)
    win = answer[0, StridedLayout(L, C, STRIDE, G).target_positions()].bool()  # [K, G]
    # question-token features are zeroed (after normalisation), answer tokens untouched
    torch.testing.assert_close(masked_token.gt[0], token.gt[0] * win[..., None], atol=0, rtol=0)
    torch.testing.assert_close(masked_token.samples[0], token.samples[0] * win[..., None], atol=0, rtol=0)

    last = compute_features(llama, input_ids, generated, embed_method="last_token", answer_mask=answer, **kw)
    expected_t = [3, 3, 1, None, None]
    for k, t in enumerate(expected_t):
        if t is None:
            assert torch.count_nonzero(last.gt[0, k]) == 0 and torch.count_nonzero(last.samples[0, :, k]) == 0
        else:
            torch.testing.assert_close(last.gt[0, k], token.gt[0, k, t], atol=0, rtol=0)
            torch.testing.assert_close(last.samples[0, :, k], token.samples[0, :, k, t], atol=0, rtol=0)
    mean = compute_features(llama, input_ids, generated, embed_method="mean_pooling", answer_mask=answer, **kw)
    torch.testing.assert_close(mean.gt[0], (token.gt[0] * win[..., None]).sum(1) / G, atol=1e-6, rtol=0)
    # the masked run agrees across paths (shared chunk, micro-batches)
    shared = compute_features(
        llama, input_ids, generated, embed_method="last_token", answer_mask=answer, share_chunk=True, **kw
    )
    _assert_same(last, shared)
    mb = compute_features(
        llama, input_ids, generated, embed_method="last_token", answer_mask=answer, micro_batch_size=1, **kw
    )
    _assert_same(last, mb)
    # an all-answer mask changes nothing
    full = compute_features(llama, input_ids, generated, embed_method="last_token", answer_mask=torch.ones(1, L), **kw)
    plain = compute_features(llama, input_ids, generated, embed_method="last_token", **kw)
    _assert_same(full, plain, atol=0)


def test_pool_blocks_shapes() -> None:
    feats = F.normalize(torch.randn(2, 3, K, G, 2, 8), dim=-1)
    assert pool_blocks(feats, "last_token").shape == (2, 3, K, 2, 8)
    assert pool_blocks(feats, "mean_pooling").shape == (2, 3, K, 2, 8)
    assert pool_blocks(feats, "concat").shape == (2, 3, K, 2, 8 * G)
    assert pool_blocks(feats, "token").shape == (2, 3, K, G, 2, 8)
    torch.testing.assert_close(pool_blocks(feats, "concat")[..., :8], feats[..., 0, :, :])
    hs = [torch.randn(5, 4) for _ in range(3)]
    tf = token_features(hs, LayerSelection((0, 2), "concat"))
    torch.testing.assert_close(tf, F.normalize(torch.cat([hs[0], hs[2]], -1), dim=-1)[:, None])
