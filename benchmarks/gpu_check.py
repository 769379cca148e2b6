"""GPU check (run where CUDA is available): EBFT invariants on CUDA and a few bf16 training steps per method.

    python benchmarks/gpu_check.py OUT.json

Writes a JSON report: invariant checks (max deviations, token equality), bf16 step losses and times for SFT
and EBFT on a random mid-size Qwen2 at the paper's code geometry, and sampler timings (KV-cached vs the
reference recompute scheme) with their ratio, and one strided attention call at Qwen2.5-1.5B shapes: SDPA with
the additive mask vs flex_attention with a block mask (issue 7, benchmark 5).
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from ebft.config import TrainConfig
from ebft.data.packing import Packed
from ebft.features import FeatureNetwork
from ebft.methods.ebft import EBFTObjective
from ebft.methods.sft import SFTObjective
from ebft.rewards import rloo_advantages
from ebft.strided import (
    strided_generate,
    strided_generate_recompute,
    strided_generate_with_logprobs,
    strided_logprobs,
)
from ebft.trainer import Trainer, read_log

DEV = torch.device(os.environ.get("EBFT_CHECK_DEVICE", "cuda"))


def _reset_peak() -> None:
    if DEV.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEV.type == "cuda" else float("nan")


def tiny(arch: str, seed: int = 0, **kw) -> torch.nn.Module:
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, bos_token_id=None, eos_token_id=None,
                pad_token_id=None)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cls(**{**base, **kw}), dtype=torch.float32).to(DEV).eval()


def invariants() -> dict:
    out = {}
    for arch in ("llama", "qwen2"):
        model = tiny(arch)
        for L, C, s, G in [(24, 4, 4, 4), (25, 3, 2, 4), (40, 8, 8, 8)]:
            key = f"{arch}_L{L}_C{C}_s{s}_G{G}"
            ids = torch.randint(0, 97, (2, L), device=DEV, generator=torch.Generator(DEV).manual_seed(1))
            greedy = strided_generate(model, ids, context_len=C, stride=s, gen_len=G, temperature=0.0)
            K = greedy.shape[2]
            match = True
            for k in range(K):
                prefix = ids[:, : C + k * s]
                ref = model.generate(prefix, attention_mask=torch.ones_like(prefix), do_sample=False,
                                     max_new_tokens=G, min_new_tokens=G)[:, prefix.shape[1]:]
                match &= bool(torch.equal(ref, greedy[:, 0, k]))
            g1, g2 = (torch.Generator(DEV).manual_seed(7) for _ in range(2))
            kw = dict(context_len=C, stride=s, gen_len=G, num_samples=3, temperature=0.7, top_p=0.9)
            cached, lp = strided_generate_with_logprobs(model, ids, generator=g1, **kw)
            recompute = strided_generate_recompute(model, ids, generator=g2, **kw)
            score, _ = strided_logprobs(model, ids, cached, context_len=C, stride=s, temperature=0.7)
            out[key] = {"greedy_equals_generate": match,
                        "cached_equals_recompute": bool(torch.equal(cached, recompute)),
                        "sampling_vs_scoring_logprob_maxdiff": float((lp - score).abs().max())}
    a = torch.randn(4, 8, 5, device=DEV)
    d = torch.randn(4, 8, 5, device=DEV)
    out["rloo_sum_maxabs"] = float(rloo_advantages(a, d).sum(-1).abs().max())
    feats = FeatureNetwork(tiny("qwen2", 3), whiten=True)
    ids = torch.randint(0, 97, (2, 24), device=DEV)
    gen = strided_generate(tiny("qwen2"), ids, context_len=4, stride=4, gen_len=4, num_samples=4, temperature=1.0)
    f = feats(ids, gen, context_len=4, stride=4)
    gram = torch.einsum("bnkd,bmkd->bknm", f.whitened_samples, f.whitened_samples)
    out["whitened_gram_identity_maxdiff"] = float((gram - torch.eye(4, device=DEV)).abs().max())
    return out


def train_steps(method: str, steps: int = 5) -> dict:
    cfg = Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    L = 1024
    ids = torch.randint(0, 32000, (64, L))
    data = Packed(ids, torch.ones_like(ids), torch.zeros_like(ids))
    if method == "sft":
        objective, batch, micro = SFTObjective(), 16, 8
    else:
        torch.manual_seed(1)
        features = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        objective = EBFTObjective({"num_samples": 4, "temperature": 0.6, "ce_coef": 0.03, "whitening": True},
                                  context_len=8, stride=8, gen_len=8, feature_model=features, seed=0)
        batch, micro = 4, 2
    tc = TrainConfig.from_dict({"lr": 1e-4, "max_steps": steps, "batch_size": batch, "micro_batch_size": micro,
                                "warmup_steps": 0, "schedule": "constant_with_warmup", "log_every": 1,
                                "mixed_precision": "bf16", "seq_len": L})
    run = f"/tmp/gpu_check_{method}"
    _reset_peak()
    t0 = time.time()
    Trainer(tc, run, show_progress=False).fit(model, None, data, objective)
    total = time.time() - t0
    log = read_log(f"{run}/train_log.jsonl")
    keys = ["train/loss", "train/ce", "train/rl_loss", "ebft/reward", "ebft/cfm", "train/grad_norm", "time/elapsed_s"]
    return {"steps": [{k: r[k] for k in keys if k in r} for r in log], "total_s": total,
            "peak_mem_gb": _peak_gb(), "batch_chunks": batch, "seq_len": L}


def rlvr_steps(steps: int = 5) -> dict:
    """RLVR in bf16 autocast: a BPE tokenizer trained here, a random Qwen2, a chrF reward on echo prompts."""
    import tempfile

    from ebft.methods.rlvr import RLVRObjective
    from ebft.rewards import TranslationMetricReward
    from ebft.tokenizer import train_bpe
    from ebft.train import RecordDataset, collate_records

    words = [f"item{i} value{i * 7 % 13}" for i in range(200)]
    tok = train_bpe([f"Repeat: {w}\n {w}\n" for w in words] * 5, 600, tempfile.mkdtemp())
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    records = [{"question": f"Repeat: {w}\n", "reference": w} for w in words]
    objective = RLVRObjective({"num_samples": 4, "temperature": 1.0, "max_new_tokens": 32}, tokenizer=tok,
                              kind="translation", reward_fn=TranslationMetricReward("chrf"), seed=0)
    tc = TrainConfig.from_dict({"lr": 1e-4, "max_steps": steps, "batch_size": 16, "micro_batch_size": 8,
                                "warmup_steps": 0, "schedule": "constant_with_warmup", "log_every": 1,
                                "mixed_precision": "bf16"})
    _reset_peak()
    t0 = time.time()
    Trainer(tc, "/tmp/gpu_check_rlvr", show_progress=False).fit(model, tok, RecordDataset(records), objective,
                                                               collate_fn=collate_records)
    log = read_log("/tmp/gpu_check_rlvr/train_log.jsonl")
    keys = ["train/loss", "rlvr/reward_mean", "rlvr/completion_tokens", "train/grad_norm", "time/elapsed_s"]
    return {"steps": [{k: r[k] for k in keys if k in r} for r in log], "total_s": time.time() - t0,
            "peak_mem_gb": _peak_gb(), "batch_prompts": 16, "num_samples": 4}


def sampler_timing() -> dict:
    cfg = Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).to(DEV).eval()
    ids = torch.randint(0, 32000, (2, 1024), device=DEV)
    kw = dict(context_len=8, stride=8, gen_len=8, num_samples=4, temperature=0.0)
    out = {}
    for name, fn in [("kv_cached", strided_generate), ("recompute", strided_generate_recompute)]:
        fn(model, ids, **kw)
        torch.cuda.synchronize()
        t0 = time.time()
        for _ in range(3):
            tokens = fn(model, ids, **kw)
        torch.cuda.synchronize()
        out[f"{name}_s"] = (time.time() - t0) / 3
        out[f"{name}_tokens"] = tokens
    out["same_greedy_tokens"] = bool(torch.equal(out.pop("kv_cached_tokens"), out.pop("recompute_tokens")))
    out["speedup"] = out["recompute_s"] / out["kv_cached_s"]
    out["setting"] = "Qwen2 8x512 bf16, B=2 chunks x n=4, L=1024, C=s=G=8 (K=127)"
    return out


def strided_attention_timing(L: int = 1024, C: int = 8, s: int = 8, G: int = 8, n: int = 4, reps: int = 10,
                             compile_flex: bool = True) -> dict:
    """Issue 7, benchmark 5: one strided attention call at Qwen2.5-1.5B shapes (12 query heads, 2 KV heads,
    head_dim 128), bf16, random inputs: SDPA with the additive ``[1, 1, S, S]`` mask vs ``flex_attention``
    with a block mask built from the same rule (docs/algorithm.md §2.4), forward and forward+backward, and the largest
    output difference between the two."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from ebft.strided import StridedLayout, build_strided_allowed, build_strided_mask_and_positions

    layout = StridedLayout(L, C, s, G)
    S, K = layout.total_len, layout.num_blocks
    heads, kv_heads, dim = 12, 2, 128
    gen = torch.Generator(DEV).manual_seed(0)
    q = torch.randn(n, heads, S, dim, device=DEV, dtype=torch.bfloat16, generator=gen)
    k = torch.randn(n, kv_heads, S, dim, device=DEV, dtype=torch.bfloat16, generator=gen)
    v = torch.randn(n, kv_heads, S, dim, device=DEV, dtype=torch.bfloat16, generator=gen)
    mask, _ = build_strided_mask_and_positions(layout, G, dtype=torch.bfloat16, device=DEV)
    allowed, _ = build_strided_allowed(layout, G, device=DEV)

    def mask_mod(b, h, q_idx, kv_idx):  # the strided rule of docs/algorithm.md §2.4, elementwise
        q_gen, k_gen = q_idx >= L, kv_idx >= L
        q_block = (q_idx - L) % K
        prefix = torch.where(q_gen, C + q_block * s, q_idx + 1)
        chunk_ok = (~k_gen) & (kv_idx < prefix)
        same_ok = q_gen & k_gen & ((kv_idx - L) % K == q_block) & (kv_idx <= q_idx)
        return chunk_ok | same_ok

    block_mask = create_block_mask(mask_mod, None, None, S, S, device=DEV)
    flex = torch.compile(flex_attention) if compile_flex else flex_attention

    def sdpa_fn(qq, kk, vv):
        return torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, enable_gqa=True)

    def flex_fn(qq, kk, vv):
        return flex(qq, kk, vv, block_mask=block_mask, enable_gqa=True)

    out = {"shape": {"n": n, "heads": heads, "kv_heads": kv_heads, "head_dim": dim, "S": S, "K": K},
           "allowed_fraction": float(allowed.float().mean())}
    out["max_abs_diff"] = float((flex_fn(q, k, v).float() - sdpa_fn(q, k, v).float()).abs().max())

    def sync() -> None:
        if DEV.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn, backward: bool, reps: int = 10) -> float:
        qq, kk, vv = (x.detach().requires_grad_(backward) for x in (q, k, v))
        for _ in range(3):
            y = fn(qq, kk, vv)
            if backward:
                y.float().sum().backward()
        sync()
        t0 = time.time()
        for _ in range(reps):
            y = fn(qq, kk, vv)
            if backward:
                y.float().sum().backward()
        sync()
        return (time.time() - t0) / reps

    for name, fn in [("sdpa_additive_mask", sdpa_fn), ("flex_block_mask", flex_fn)]:
        out[f"{name}_fwd_ms"] = 1000 * timed(fn, False, reps)
    out["flex_speedup_fwd"] = out["sdpa_additive_mask_fwd_ms"] / out["flex_block_mask_fwd_ms"]
    try:  # flex_attention has no CPU backward
        for name, fn in [("sdpa_additive_mask", sdpa_fn), ("flex_block_mask", flex_fn)]:
            out[f"{name}_fwd_bwd_ms"] = 1000 * timed(fn, True, reps)
        out["flex_speedup_fwd_bwd"] = out["sdpa_additive_mask_fwd_bwd_ms"] / out["flex_block_mask_fwd_bwd_ms"]
    except NotImplementedError as err:
        out["fwd_bwd_error"] = str(err)
    return out


def main(path: str) -> None:
    report = {"device": torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu", "torch": torch.__version__}
    for name, fn in [("invariants", invariants), ("sft_bf16", lambda: train_steps("sft")),
                     ("ebft_bf16", lambda: train_steps("ebft")), ("rlvr_bf16", rlvr_steps),
                     ("sampler", sampler_timing), ("strided_attention", strided_attention_timing)]:
        t0 = time.time()
        try:
            report[name] = fn()
        except Exception as err:  # report and continue: one failing section must not hide the others
            report[name] = {"error": f"{type(err).__name__}: {err}"}
        report[name + "_wall_s"] = round(time.time() - t0, 2)
        print(name, json.dumps(report[name], default=str)[:2000], flush=True)
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
