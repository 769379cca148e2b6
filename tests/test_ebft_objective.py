"""The EBFT objective on the shared trainer: loss pieces, zero-advantage gradients, multi-process equality."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ebft.methods.base import rollout_seed
from ebft.methods.ebft import EBFTObjective
from ebft.methods.sft import masked_token_nll
from tests.ddp_ebft_step import tiny_llama
from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]


def objective(**params) -> EBFTObjective:
    base = {"num_samples": 3, "temperature": 0.7, "whitening": False}
    obj = EBFTObjective({**base, **params}, context_len=4, stride=2, gen_len=3, feature_model=tiny_llama(1),
                        embed_method="last_token", seed=0)
    obj.features.to(torch.empty(0).device)
    return obj


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 61, (2, 17), generator=torch.Generator().manual_seed(seed))  # K = (17-3-4)/2+1 = 6
    return {"input_ids": ids, "doc_ids": torch.zeros_like(ids)}


def test_metrics_and_reward_identity():
    obj = objective(diversity_coef=1.0)
    loss, m = obj.compute_loss(tiny_llama(0), batch(), step=0, micro=0)
    assert loss.requires_grad and torch.isfinite(loss)
    assert m["ebft/reward"] == pytest.approx(m["ebft/alignment"] - m["ebft/diversity"], abs=1e-5)
    # unit features without whitening (docs/algorithm.md §5.2): mean(a - d/2) = 1 - CFM, per block and so on average
    assert m["ebft/alignment"] - m["ebft/diversity"] / 2 == pytest.approx(1 - m["ebft/cfm"], abs=1e-5)


def test_zero_advantages_give_zero_gradient_and_ce_equals_causal_lm_loss(monkeypatch):
    import ebft.rewards as rewards

    monkeypatch.setattr(rewards, "rloo_advantages", lambda a, d, *args: torch.zeros_like(a))
    model = tiny_llama(0)
    b = batch()
    loss, _ = objective(ce_coef=0.0).compute_loss(model, b, 0, 0)
    loss.backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    model.zero_grad()
    loss, m = objective(ce_coef=1.0, rl_coef=1.0).compute_loss(model, b, 0, 0)
    with torch.no_grad():
        ref, _ = masked_token_nll(model, b["input_ids"], torch.ones_like(b["input_ids"]))
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5)
    assert m["train/ce"] == pytest.approx(float(ref), rel=1e-5)


def test_rollouts_are_seeded_by_step_and_micro_batch():
    obj = objective()
    model = tiny_llama(0)
    _, m1 = obj.compute_loss(model, batch(), 3, 1)
    _, m2 = obj.compute_loss(model, batch(), 3, 1)
    _, m3 = obj.compute_loss(model, batch(), 4, 1)
    assert m1 == m2 and m1 != m3
    assert rollout_seed(0, 3, 1) != rollout_seed(0, 3, 2)


def test_kl_term_is_zero_against_an_identical_reference():
    obj = EBFTObjective({"num_samples": 2, "temperature": 1.0, "kl_coef": 0.5}, context_len=4, stride=2,
                        gen_len=3, feature_model=tiny_llama(1), reference_model=tiny_llama(0))
    obj.features.to(torch.empty(0).device)
    _, m = obj.compute_loss(tiny_llama(0), batch(), 0, 0)
    assert m["train/kl"] == pytest.approx(0.0, abs=1e-10)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """Two processes (torchrun; accelerate on CPU): same loss and same parameters after one EBFT step as one
    process accumulating the same two micro-batches (rollouts are seeded per global micro-batch).
    (`accelerate launch --cpu --num_processes 2` starts a single process on CPU, so it cannot test this.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "true"}
    script = str(ROOT / "tests" / "ddp_ebft_step.py")
    single = subprocess.run([sys.executable, script, str(tmp_path / "one.json")], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            script, str(tmp_path / "two.json")],
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert multi.returncode == 0, multi.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for key in ("train/loss", "train/rl_loss", "train/ce", "ebft/reward", "ebft/cfm"):
        assert two["log"][key] == pytest.approx(one["log"][key], rel=1e-5, abs=1e-6), key
    assert two["params"] == pytest.approx(one["params"], rel=1e-5, abs=1e-6)
