"""Sharded training (FSDP2, :mod:`ebft.distributed`): the ``distributed`` key, and two-process CPU runs
(``torchrun --nproc_per_node 2``, gloo) of tests/fsdp_step.py against one process: same losses, gradient
norms and parameters for SFT (tied embeddings), EBFT (untied head, strided sampler and scorer calling the
sharded body and head directly) and RLVR (``generate`` rollouts), in fp32, bf16, with CPU offload and with
activation checkpointing; a run stopped after step 1 resumes from its sharded state to the parameters of an
uninterrupted run; every model written is a plain HF model.

``accelerate launch --cpu --num_processes 2`` starts one process (accelerate's simple launcher), so the
two-process runs use torchrun with ``ACCELERATE_USE_CPU=true`` (the accelerator then runs MULTI_CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ebft.config import ConfigError, TrainConfig
from ebft.distributed import SHARDED_STATE_DIR, DistributedSettings
from ebft.trainer import fingerprint_parts, read_log
from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "tests" / "fsdp_step.py")
#: metrics a step's log record must repeat between one and two processes (fp32)
METRICS = {"sft": ("train/loss", "train/grad_norm"),
           "ebft": ("train/loss", "train/rl_loss", "train/ce", "ebft/reward", "ebft/cfm", "train/grad_norm"),
           "rlvr": ("train/loss", "rlvr/reward_mean", "rlvr/completion_tokens", "train/grad_norm")}


# ------------------------------------------------------------------------------------------- the config
def test_distributed_key_builds_and_validates():
    cfg = TrainConfig.from_dict({"distributed": {"strategy": "fsdp", "cpu_offload": True,
                                                 "activation_checkpointing": True}})
    assert cfg.distributed == DistributedSettings("fsdp", True, True) and cfg.sharded
    assert not TrainConfig.from_dict({}).sharded and not TrainConfig.from_dict({"distributed": {}}).sharded
    for raw, message in [({"strategy": "zero3"}, "distributed.strategy: unknown value 'zero3'"),
                         ({"strategy": "ddp", "cpu_offload": True}, "distributed.cpu_offload needs"),
                         ({"stratgy": "fsdp"}, "distributed: unknown keys ['stratgy']")]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            TrainConfig.from_dict({"distributed": raw})
    with pytest.raises(ConfigError, match="fsdp does not train LoRA"):
        TrainConfig.from_dict({"distributed": {"strategy": "fsdp"}, "lora": {"r": 4}})
    with pytest.raises(ConfigError, match="fsdp takes mixed_precision no or bf16"):
        TrainConfig.from_dict({"distributed": {"strategy": "fsdp"}, "mixed_precision": "fp16"})


def test_unset_distributed_leaves_the_fingerprint_unchanged():
    """Resume states written before the key existed stay valid; setting it starts a new run."""
    cfg = TrainConfig.from_dict({"lr": 1e-3})
    assert fingerprint_parts(cfg, {}) == fingerprint_parts(replace(cfg, distributed=None), {})
    sharded = replace(cfg, distributed=DistributedSettings("fsdp"))
    assert fingerprint_parts(sharded, {})["config"] != fingerprint_parts(cfg, {})["config"]


# ------------------------------------------------------------------------------------------- the runs
def _run(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(one process, two processes): tests/fsdp_step.py's run directories for every variant."""
    tmp = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "true"}
    _run([sys.executable, SCRIPT, str(tmp / "one"), "fp32", "bf16"], env)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    _run([torchrun, "--standalone", "--nproc_per_node", "2", SCRIPT, str(tmp / "two"), "fp32", "bf16", "offload",
          "checkpointing"], env)
    return tmp / "one", tmp / "two"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("variant", ["fp32", "offload", "checkpointing"])
@pytest.mark.parametrize("case", ["sft", "ebft", "rlvr"])
def test_two_sharded_processes_match_one_process(runs, case, variant):
    """One SFT / EBFT / RLVR step: same logged metrics (gradient norm included, which Adam's first step would not
    show in the parameters) and same parameters as one process accumulating both micro-batches."""
    one, two = runs
    a, b = read_log(one / "fp32" / case / "train_log.jsonl")[0], read_log(two / variant / case / "train_log.jsonl")[0]
    for key in METRICS[case]:
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert _max_diff(_weights(one / "fp32" / case), _weights(two / variant / case)) < 1e-5


@pytest.mark.parametrize("case", ["sft", "ebft"])
def test_bf16_sharded_step_matches_one_process_with_autocast(runs, case):
    """bf16 compute copies (FSDP mixed precision) vs one process under bf16 autocast: the same step up to
    bf16 round-off; parameters stay fp32."""
    one, two = runs
    a, b = read_log(one / "bf16" / case / "train_log.jsonl")[0], read_log(two / "bf16" / case / "train_log.jsonl")[0]
    for key in ("train/loss", "train/grad_norm"):
        assert b[key] == pytest.approx(a[key], rel=1e-3), key
    weights = _weights(two / "bf16" / case)
    assert all(t.dtype == torch.float32 for t in weights.values())
    # Adam's first step moves each weight by about ±lr: a weight whose tiny gradient flips sign under bf16
    # round-off moves the other way, so compare the share of weights that moved alike
    ref = _weights(one / "bf16" / case)
    same = sum(int(((weights[k] - ref[k]).abs() < 1e-4).sum()) for k in ref)
    assert same / sum(t.numel() for t in ref.values()) > 0.99


def test_stopped_sharded_run_resumes_to_the_uninterrupted_parameters(runs):
    one, two = runs
    state = json.loads((two / "fp32" / "stopped_state.json").read_text())
    assert any(name.startswith(f"{SHARDED_STATE_DIR}/") for name in state), state  # the DCP shards
    assert "objective_state_rank1.pt" in state
    uninterrupted, resumed = two / "fp32" / "ebft3", two / "fp32" / "ebft3_resumed"
    assert _max_diff(_weights(uninterrupted), _weights(resumed)) == 0.0
    def metrics(run: Path) -> list[dict[str, float]]:
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_log(run / "train_log.jsonl")]

    assert metrics(resumed) == metrics(uninterrupted)
    assert _max_diff(_weights(one / "fp32" / "ebft3"), _weights(uninterrupted)) < 1e-5
    assert not (resumed / "resume").exists()


def test_sharded_runs_write_plain_hf_models(runs):
    """The final model and the checkpoints load with ``from_pretrained``; a tied head stays tied."""
    from transformers import AutoModelForCausalLM

    _, two = runs
    for path in (two / "fp32" / "sft" / "model", two / "fp32" / "ebft3" / "checkpoints" / "step2"):
        model = AutoModelForCausalLM.from_pretrained(path)
        assert not any(type(p).__name__ == "DTensor" for p in model.parameters())
    tied = AutoModelForCausalLM.from_pretrained(two / "fp32" / "sft" / "model")
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()
    step2 = load_file(two / "fp32" / "ebft3" / "checkpoints" / "step2" / "model.safetensors")
    assert _max_diff(step2, _weights(two / "fp32" / "ebft3")) > 0  # step 2, not the final step 3


def test_sharded_gpu_runs_get_a_cpu_backend_next_to_nccl(monkeypatch):
    """CPU-offloaded shards and gathered state dicts need CPU collectives: ``cuda:nccl,cpu:gloo`` (as accelerate
    picks for its own FSDP with offload); a replicated, single-process or CPU run keeps accelerate's default."""
    from ebft.distributed import process_group_kwargs

    sharded, replicated = TrainConfig.from_dict({"distributed": {"strategy": "fsdp"}}), TrainConfig.from_dict({})
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [k.backend for k in process_group_kwargs(sharded)] == ["cuda:nccl,cpu:gloo"]
    assert process_group_kwargs(replicated) == []
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert process_group_kwargs(sharded) == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_group_kwargs(sharded) == []
