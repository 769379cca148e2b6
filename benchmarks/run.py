"""CPU benchmarks of issue 7 (docs/performance.md): strided sampler, EBFT step vs SFT step, scoring memory,
sandbox throughput.

    python -m benchmarks.run [--quick] [--out results/benchmarks/perf.json]

Every timing is the median of ``--repeats`` (>= 5 by default) *interleaved* repeats: each repeat runs every
variant of a section once, in rotating order, so that background load affects all variants alike, and each
ratio is taken against a baseline measured in the same run. The JSON holds the per-repeat times, medians,
ratios with their targets, the machine (cores, torch threads, load average before/after) and the geometry;
a short table is printed.

Sections
--------
``sampler``   KV-cached strided sampler (ours) vs (a) the recompute reference (full forward per step, mask
              rebuilt every step), (b) Hugging Face ``generate`` with KV cache over all ``K`` prefixes x ``n``
              (left-padded, one batch), and the floor: a plain batch-``n`` causal forward over ``S = L + G*K``
              tokens. Greedy (temperature 0); the tokens of all three samplers are checked to be identical.
``step``      one EBFT step (rollouts, features, rewards, policy forward/backward) vs one SFT step on the same
              chunks, with the chunk shared across samples (default) and unshared, a per-phase breakdown and
              the peak RSS increase.
``scoring``   peak memory of chunked log-prob scoring (:func:`ebft.strided.strided_logprobs`) vs full
              ``[rows, V]`` float32 logits, forward + backward, at a large vocabulary and a small width.
``sandbox``   programs/s on the HumanEval canonical solutions via :func:`ebft.evaluation.code.score_samples`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# geometry presets: the paper's code geometry on a tiny Qwen2 (full), a shorter chunk (quick), and a toy one
# for tests/test_benchmarks.py (seconds)
PRESETS: dict[str, dict[str, Any]] = {
    "full": {"layers": 4, "hidden": 128, "heads": 4, "kv_heads": 2, "intermediate": 512, "vocab": 4096,
             "L": 1024, "C": 8, "s": 8, "G": 8, "n": 4, "B": 1,
             "score_vocab": 150_000, "score_hidden": 64, "score_L": 256, "score_n": 2, "score_chunks": [64, 256],
             "sandbox_problems": 164},
    "quick": {"layers": 4, "hidden": 128, "heads": 4, "kv_heads": 2, "intermediate": 512, "vocab": 4096,
              "L": 512, "C": 8, "s": 8, "G": 8, "n": 4, "B": 1,
              "score_vocab": 150_000, "score_hidden": 64, "score_L": 256, "score_n": 2, "score_chunks": [64, 256],
              "sandbox_problems": 164},
    "tiny": {"layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "intermediate": 64, "vocab": 97,
             "L": 40, "C": 4, "s": 4, "G": 4, "n": 2, "B": 1,
             "score_vocab": 3000, "score_hidden": 16, "score_L": 24, "score_n": 2, "score_chunks": [16, 64],
             "sandbox_problems": 4},
}

TARGETS = {
    "sampler_vs_recompute_speedup": (">=", 8.0),
    "sampler_vs_generate_speedup": (">=", 100.0),
    "sampler_vs_floor_ratio": ("<=", 1.1),
    "ebft_vs_sft_ratio": ("<=", 9.0),
}


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------


def tiny_qwen2(g: dict[str, Any], seed: int, *, vocab: int | None = None, hidden: int | None = None,
               layers: int | None = None) -> torch.nn.Module:
    """Random fp32 Qwen2 with sdpa attention, no BOS/EOS/PAD (so generate never stops early)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    h = hidden or g["hidden"]
    cfg = Qwen2Config(vocab_size=vocab or g["vocab"], hidden_size=h, intermediate_size=4 * h if hidden else
                      g["intermediate"], num_hidden_layers=layers or g["layers"], num_attention_heads=g["heads"],
                      num_key_value_heads=g["kv_heads"], max_position_embeddings=4 * g["L"] + 64,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def chunks(g: dict[str, Any], vocab: int, L: int | None = None, B: int | None = None, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (B or g["B"], L or g["L"]), generator=torch.Generator().manual_seed(seed))


class PeakRSS:
    """Peak resident-set-size increase (MiB) of the process while the block runs.

    Before the block: ``gc.collect()``, a fixed glibc mmap threshold, ``malloc_trim(0)`` (free heap pages go
    back to the OS, so the block cannot hide its allocations in memory that an earlier step freed) and a reset
    of the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``); after it, ``VmHWM - VmRSS(before)``
    from /proc/self/status.
    Linux only; elsewhere the value is ``nan``.
    """

    def __init__(self) -> None:
        self.base_kb = 0
        self.peak_kb = 0
        self.ok = os.path.exists("/proc/self/clear_refs")

    @staticmethod
    def _status() -> dict[str, int]:
        out = {}
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0])
        return out

    def __enter__(self) -> PeakRSS:
        gc.collect()
        if self.ok:
            try:
                import ctypes

                libc = ctypes.CDLL("libc.so.6")
                # a fixed mmap threshold (M_MMAP_THRESHOLD = -3): glibc otherwise raises it after large frees,
                # so later buffers come from the heap, are not returned on free and inflate later peaks
                libc.mallopt(-3, 256 * 1024)
                libc.malloc_trim(0)
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
            except OSError:
                self.ok = False
            self.base_kb = self._status()["VmRSS"]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ok:
            self.peak_kb = self._status()["VmHWM"]

    @property
    def delta_mb(self) -> float:
        return (self.peak_kb - self.base_kb) / 1024 if self.ok else float("nan")


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every variant ``warmup`` times, then ``repeats`` rounds of all variants in rotating order."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            gc.collect()
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def check_target(name: str, value: float) -> dict[str, Any]:
    op, bound = TARGETS[name]
    ok = value >= bound if op == ">=" else value <= bound
    return {"value": round(value, 3), "target": f"{op} {bound}", "met": bool(ok)}


# --------------------------------------------------------------------------------------------------------
# 1. sampler
# --------------------------------------------------------------------------------------------------------


def per_prefix_generate(model: torch.nn.Module, ids: torch.Tensor, C: int, s: int, G: int, n: int) -> torch.Tensor:
    """HF ``generate`` (greedy, KV cache) over all ``K`` prefixes x ``n`` samples of every chunk in one
    left-padded batch; returns block-major ``[B, n, K, G]``."""
    B, L = ids.shape
    K = (L - G - C) // s + 1
    width = C + (K - 1) * s
    rows, masks = [], []
    for b in range(B):
        for k in range(K):
            p = C + k * s
            for _ in range(n):
                rows.append(torch.cat([ids.new_zeros(width - p), ids[b, :p]]))
                masks.append(torch.cat([ids.new_zeros(width - p), ids.new_ones(p)]))
    batch, mask = torch.stack(rows), torch.stack(masks)
    with torch.no_grad():
        out = model.generate(batch, attention_mask=mask, do_sample=False, max_new_tokens=G, min_new_tokens=G,
                             pad_token_id=0, use_cache=True)
    return out[:, width:].reshape(B, K, n, G).transpose(1, 2)


def bench_sampler(g: dict[str, Any], repeats: int) -> dict[str, Any]:
    from ebft.strided import StridedLayout, strided_generate, strided_generate_recompute

    model = tiny_qwen2(g, seed=0)
    ids = chunks(g, g["vocab"])
    C, s, G, n = g["C"], g["s"], g["G"], g["n"]
    layout = StridedLayout(g["L"], C, s, G)
    S = layout.total_len
    kw = dict(num_samples=n, temperature=0.0)
    floor_ids = chunks(g, g["vocab"], L=S, B=g["B"] * n, seed=1)
    out: dict[str, torch.Tensor] = {}

    def ours() -> None:
        out["ours"] = strided_generate(model, ids, layout, **kw)

    def recompute() -> None:
        out["recompute"] = strided_generate_recompute(model, ids, layout, **kw)

    def generate() -> None:
        out["generate"] = per_prefix_generate(model, ids, C, s, G, n)

    @torch.no_grad()
    def floor() -> None:
        model(input_ids=floor_ids, use_cache=False)

    @torch.no_grad()
    def floor_body() -> None:
        model.model(input_ids=floor_ids, use_cache=False)

    times = interleaved({"ours": ours, "recompute": recompute, "generate": generate, "floor": floor,
                         "floor_no_lm_head": floor_body}, repeats)
    m = {k: med(v) for k, v in times.items()}
    return {
        "geometry": {"B": g["B"], "n": n, "L": g["L"], "C": C, "s": s, "G": G, "K": layout.num_blocks, "S": S},
        "times_s": times,
        "median_s": m,
        "greedy_identical": {"recompute": bool(torch.equal(out["ours"], out["recompute"])),
                             "generate": bool(torch.equal(out["ours"], out["generate"]))},
        "ratios": {
            "sampler_vs_recompute_speedup": check_target("sampler_vs_recompute_speedup", m["recompute"] / m["ours"]),
            "sampler_vs_generate_speedup": check_target("sampler_vs_generate_speedup", m["generate"] / m["ours"]),
            "sampler_vs_floor_ratio": check_target("sampler_vs_floor_ratio", m["ours"] / m["floor"]),
        },
        "sampler_vs_floor_no_lm_head_ratio": round(m["ours"] / m["floor_no_lm_head"], 3),
        "notes": "floor = plain causal LM forward (with logits) over [B*n, S] random tokens, no grad",
    }


# --------------------------------------------------------------------------------------------------------
# 2. EBFT step vs SFT step
# --------------------------------------------------------------------------------------------------------


def bench_step(g: dict[str, Any], repeats: int) -> dict[str, Any]:
    from ebft.methods.ebft import EBFTObjective
    from ebft.methods.sft import SFTObjective
    from ebft.rewards import alignment, block_to_token_advantages, cfm_loss, diversity, rloo_advantages
    from ebft.strided import StridedLayout, strided_logprobs, strided_sample

    policy = tiny_qwen2(g, seed=0).train()
    ids = chunks(g, g["vocab"])
    batch = {"input_ids": ids, "loss_mask": torch.ones_like(ids), "doc_ids": torch.zeros_like(ids)}
    params = {"num_samples": g["n"], "temperature": 0.6, "ce_coef": 0.03, "whitening": True}
    geo = dict(context_len=g["C"], stride=g["s"], gen_len=g["G"])
    objs = {share: EBFTObjective({**params, "share_chunk": share}, feature_model=tiny_qwen2(g, seed=1), seed=0, **geo)
            for share in (True, False)}
    sft = SFTObjective()
    peaks: dict[str, list[float]] = {"sft": [], "ebft_shared": [], "ebft_unshared": []}

    def run(obj: Any) -> Callable[[], None]:
        def step() -> None:
            policy.zero_grad(set_to_none=True)
            loss, _ = obj.compute_loss(policy, batch, step=0, micro=0)
            loss.backward()
        return step

    variants = {"sft": run(sft), "ebft_shared": run(objs[True]), "ebft_unshared": run(objs[False])}
    times = interleaved(variants, repeats)
    for _ in range(2):  # peak memory in separate, untimed runs (the polling thread costs a little CPU)
        for key, fn in variants.items():
            with PeakRSS() as mem:
                fn()
            peaks[key].append(mem.delta_mb)
    m = {k: med(v) for k, v in times.items()}

    # phase breakdown of the shared EBFT step (the phases of EBFTObjective.compute_loss, timed one by one)
    obj = objs[True]
    layout = StridedLayout(g["L"], g["C"], g["s"], g["G"])
    phases: dict[str, list[float]] = {"sampling": [], "features": [], "reward_maths": [], "policy_fwd_bwd": []}
    for _ in range(max(1, repeats)):
        policy.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        sample = strided_sample(policy, ids, layout, num_samples=g["n"], temperature=0.6,
                                generator=torch.Generator().manual_seed(0))
        t1 = time.perf_counter()
        feats = obj.features(ids, sample.tokens, layout)
        t2 = time.perf_counter()
        phi, psi = feats.reward_inputs(whitened=True)
        a, d = alignment(phi, psi), diversity(phi)
        adv = rloo_advantages(a, d, 1.0, 1.0)
        token_adv = block_to_token_advantages(adv.transpose(1, 2), g["G"])
        raw_phi, raw_psi = feats.reward_inputs(whitened=False)
        cfm_loss(raw_phi, raw_psi).mean()
        t3 = time.perf_counter()
        gen_lp, chunk_lp = strided_logprobs(policy, ids, sample.tokens, layout, temperature=0.6, share_chunk=True)
        loss = -(token_adv * gen_lp).mean() - 0.03 * chunk_lp.mean()
        loss.backward()
        t4 = time.perf_counter()
        for key, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            phases[key].append(dt)
    breakdown = {k: med(v) for k, v in phases.items()}
    # the same breakdown expressed in SFT steps
    breakdown_vs_sft = {k: round(v / m["sft"], 3) for k, v in breakdown.items()}
    L, n, K, G = g["L"], g["n"], layout.num_blocks, g["G"]
    return {
        "geometry": {"B": g["B"], "n": n, "L": L, "C": g["C"], "s": g["s"], "G": G, "K": K},
        "times_s": times,
        "median_s": m,
        "peak_rss_increase_mb": {k: round(med(v), 1) for k, v in peaks.items()},
        "breakdown_s": breakdown,
        "breakdown_in_sft_steps": breakdown_vs_sft,
        "ratios": {
            "ebft_vs_sft_ratio": check_target("ebft_vs_sft_ratio", m["ebft_shared"] / m["sft"]),
            "ebft_unshared_vs_sft_ratio": round(m["ebft_unshared"] / m["sft"], 3),
            "sharing_speedup": round(m["ebft_unshared"] / m["ebft_shared"], 3),
        },
    }


# --------------------------------------------------------------------------------------------------------
# 3. scoring memory
# --------------------------------------------------------------------------------------------------------


def bench_scoring(g: dict[str, Any], repeats: int) -> dict[str, Any]:
    from ebft.strided import StridedLayout, build_strided_mask_and_positions, build_strided_sequence, strided_logprobs

    V, L, n = g["score_vocab"], g["score_L"], g["score_n"]
    model = tiny_qwen2(g, seed=0, vocab=V, hidden=g["score_hidden"], layers=1).train()
    ids = chunks(g, V, L=L)
    layout = StridedLayout(L, g["C"], g["s"], g["G"])
    K, G = layout.num_blocks, layout.gen_len
    gen = torch.randint(0, V, (ids.shape[0], n, K, G), generator=torch.Generator().manual_seed(3))
    rows = ids.shape[0] * n * layout.total_len

    def full_logits() -> None:
        seq = build_strided_sequence(ids, gen)
        mask, pos = build_strided_mask_and_positions(layout, G)
        logits = model(input_ids=seq, attention_mask=mask, position_ids=pos.expand(seq.shape[0], -1)).logits
        lp = torch.log_softmax(logits.float(), dim=-1)
        rows_ = layout.prediction_rows().reshape(-1)
        picked = lp[:, rows_].reshape(-1, V).gather(-1, gen.reshape(-1, 1))
        (-(picked.mean()) - lp[::n, :-1].gather(-1, ids[:, 1:, None]).mean()).backward()

    def chunked(size: int, share: bool) -> Callable[[], None]:
        def fn() -> None:
            gl, cl = strided_logprobs(model, ids, gen, layout, logits_chunk_size=size, share_chunk=share)
            (-(gl.mean()) - cl.mean()).backward()
        return fn

    variants = {"full_logits": full_logits}
    for size in g["score_chunks"]:
        variants[f"chunked_{size}"] = chunked(size, False)
        variants[f"chunked_{size}_shared"] = chunked(size, True)
    peaks: dict[str, list[float]] = {k: [] for k in variants}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(max(1, min(repeats, 3))):
        for name, fn in variants.items():
            model.zero_grad(set_to_none=True)
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
            peaks[name].append(mem.delta_mb)
    logits_mb = rows * V * 4 / 2**20
    peak = {k: round(med(v), 1) for k, v in peaks.items()}
    smallest = f"chunked_{g['score_chunks'][0]}"
    grads_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    return {
        "geometry": {"V": V, "hidden": g["score_hidden"], "L": L, "n": n, "K": K, "G": G, "rows": rows},
        "full_fp32_logits_mb": round(logits_mb, 1),
        "chunk_fp32_logits_mb": {str(c): round(c * V * 4 / 2**20, 1) for c in g["score_chunks"]},
        "peak_rss_increase_mb": peak,
        "median_s": {k: round(med(v), 4) for k, v in times.items()},
        # the chunked path never holds even one [rows, V] fp32 tensor (the full path holds several)
        "chunked_never_materialises_full_logits": bool(max(peak[k] for k in peak if k != "full_logits") < logits_mb),
        "parameter_gradients_mb": round(grads_mb, 1),
        "full_over_chunked_peak": round(peak["full_logits"] / max(peak[smallest], 1e-3), 2),
    }


# --------------------------------------------------------------------------------------------------------
# 4. sandbox throughput
# --------------------------------------------------------------------------------------------------------


def bench_sandbox(g: dict[str, Any], repeats: int, workers: int = 2) -> dict[str, Any]:
    from ebft.evaluation.code import humaneval_problems, score_samples

    problems = humaneval_problems()
    tasks = sorted(problems, key=lambda t: int(t.split("/")[1]))[: g["sandbox_problems"]]
    samples = [{"task_id": t, "completion": problems[t]["canonical_solution"]} for t in tasks]
    sub = {t: problems[t] for t in tasks}
    times, pass1 = [], []
    for _ in range(max(1, min(repeats, 3))):
        t0 = time.perf_counter()
        res = score_samples(samples, sub, ks=(1,), workers=workers)  # no cache: every program runs
        times.append(time.perf_counter() - t0)
        pass1.append(res["pass@1"])
    return {"programs": len(samples), "workers": workers, "times_s": times,
            "programs_per_s": round(len(samples) / med(times), 2), "pass@1": pass1[-1]}


# --------------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------------

SECTIONS = {"sampler": bench_sampler, "step": bench_step, "scoring": bench_scoring, "sandbox": bench_sandbox}


def machine() -> dict[str, Any]:
    import transformers

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(), "loadavg_start": os.getloadavg()}


def table(report: dict[str, Any]) -> str:
    lines = [f"{'measurement':44s} {'value':>12s}  target"]

    def row(name: str, value: Any, target: str = "") -> None:
        lines.append(f"{name:44s} {value!s:>12s}  {target}")

    if "sampler" in report:
        r = report["sampler"]
        for k, v in r["median_s"].items():
            row(f"sampler {k} (s)", f"{v:.3f}")
        for k, v in r["ratios"].items():
            row(k, v["value"], f"{v['target']} {'ok' if v['met'] else 'MISSED'}")
        row("greedy tokens identical (recompute, generate)",
            f"{r['greedy_identical']['recompute']},{r['greedy_identical']['generate']}")
    if "step" in report:
        r = report["step"]
        for k, v in r["median_s"].items():
            row(f"step {k} (s)", f"{v:.3f}")
        for k, v in r["breakdown_s"].items():
            row(f"  ebft phase {k} (s)", f"{v:.3f}")
        for k, v in r["peak_rss_increase_mb"].items():
            row(f"  peak RSS increase {k} (MB)", v)
        t = r["ratios"]["ebft_vs_sft_ratio"]
        row("ebft_vs_sft_ratio (shared chunk)", t["value"], f"{t['target']} {'ok' if t['met'] else 'MISSED'}")
        row("ebft_unshared_vs_sft_ratio", r["ratios"]["ebft_unshared_vs_sft_ratio"])
    if "scoring" in report:
        r = report["scoring"]
        row("scoring: full [rows,V] fp32 logits (MB)", r["full_fp32_logits_mb"])
        for k, v in r["peak_rss_increase_mb"].items():
            row(f"scoring peak RSS increase {k} (MB)", v)
        row("chunked never materialises full logits", r["chunked_never_materialises_full_logits"])
    if "sandbox" in report:
        r = report["sandbox"]
        row(f"sandbox programs/s ({r['programs']} progs, {r['workers']} workers)", r["programs_per_s"],
            f"pass@1={r['pass@1']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter chunk (L=512), a few minutes on 2 cores")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="geometry preset (overrides --quick)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats per timing (median reported)")
    ap.add_argument("--only", nargs="*", choices=sorted(SECTIONS), help="run only these sections")
    ap.add_argument("--workers", type=int, default=2, help="sandbox workers")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared 2-core machine 2 threads oversubscribe "
                         "the cores and make timings bimodal)")
    ap.add_argument("--out", default="results/benchmarks/perf.json")
    args = ap.parse_args(argv)
    preset = args.preset or ("quick" if args.quick else "full")
    g = PRESETS[preset]
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, preset, g)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, preset: str, g: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {"preset": preset, "repeats": args.repeats, "machine": machine(),
                              "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()}}
    for name in args.only or list(SECTIONS):
        t0 = time.perf_counter()
        if name == "sandbox":
            report[name] = bench_sandbox(g, args.repeats, workers=args.workers)
        else:
            report[name] = SECTIONS[name](g, args.repeats)
        report[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(f"[{name}] done in {report[name]['wall_s']} s", flush=True)
    report["machine"]["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(table(report))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
