"""FSDP runs on fixed data for tests/test_fsdp.py; run single-process or under ``torchrun --nproc_per_node 2``
with ``ACCELERATE_USE_CPU=true`` (``accelerate launch --cpu`` starts one process whatever ``--num_processes``
says). ``python tests/fsdp_step.py OUT_DIR VARIANT...`` writes, under ``OUT_DIR/VARIANT``, one run directory
per case (each ends with ``model/``, a plain HF model, and ``train_log.jsonl``):

* ``sft``: one SFT step of a tiny Qwen2 with tied embeddings (its LM head is the body's embedding);
* ``ebft``: one EBFT step of a tiny Llama with an untied LM head (strided sampler and scorer call the body
  and the head directly);
* ``rlvr``: one RLVR step of the tiny default's Qwen2 (HF ``generate`` rollouts, synced across processes);
* ``fp32`` only: ``ebft3``: three EBFT steps, a checkpoint at step 2; ``ebft3_resumed``: the same run stopped
  after step 1 (its resume state written; the state's file names go to ``stopped_state.json``) and continued
  by a fresh trainer from that state.

Variants (:data:`VARIANTS`): ``fp32``, ``bf16`` (``mixed_precision: bf16``), ``offload`` (``cpu_offload``),
``checkpointing`` (``activation_checkpointing``); every one trains with ``distributed: {strategy: fsdp}``
(sharded with two processes, plain with one).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from accelerate.state import AcceleratorState
from transformers import AutoModelForCausalLM, Qwen2Config

from ebft.config import TrainConfig
from ebft.data.packing import Packed
from ebft.methods.ebft import EBFTObjective
from ebft.methods.rlvr import RLVRObjective
from ebft.methods.sft import SFTObjective
from ebft.train import RecordDataset, collate_records
from ebft.trainer import Trainer
from tests.ddp_ebft_step import tiny_llama
from tests.helpers import tiny_model, tiny_tokenizer

#: second argument -> (mixed_precision, distributed)
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "fp32": ("no", {"strategy": "fsdp"}),
    "bf16": ("bf16", {"strategy": "fsdp"}),
    "offload": ("no", {"strategy": "fsdp", "cpu_offload": True}),
    "checkpointing": ("no", {"strategy": "fsdp", "activation_checkpointing": True}),
}


def tiny_qwen2(seed: int) -> torch.nn.Module:
    cfg = Qwen2Config(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


def data(n: int = 4) -> Packed:
    ids = torch.randint(0, 61, (n, 24), generator=torch.Generator().manual_seed(0))
    return Packed(ids, torch.ones_like(ids), torch.zeros_like(ids))


def config(steps: int, variant: str, **extra: object) -> TrainConfig:
    precision, distributed = VARIANTS[variant]
    return TrainConfig.from_dict({"lr": 1e-2, "max_steps": steps, "batch_size": 4, "micro_batch_size": 2,
                                  "warmup_steps": 0, "schedule": "constant_with_warmup", "log_every": 1, "seed": 5,
                                  "mixed_precision": precision, "distributed": distributed, **extra})


def ebft_objective() -> EBFTObjective:
    params = {"num_samples": 3, "temperature": 0.8, "ce_coef": 0.1, "whitening": True, "diversity_coef": 0.5,
              "hidden_state_method": "concat"}
    return EBFTObjective(params, context_len=4, stride=4, gen_len=4, feature_model=tiny_llama(1),
                         embed_method="last_token", seed=5)


def letter_reward(records: list[dict], texts: list[str]) -> torch.Tensor:
    """RLVR's reward in these runs: the share of the letter ``e`` in a completion."""
    return torch.tensor([t.count("e") / max(len(t), 1) for t in texts])


def rlvr_run(root: Path, variant: str) -> None:
    tok = tiny_tokenizer(root / f"tok{os.environ.get('RANK', '0')}")  # deterministic: the same on every rank
    records = [{"question": q} for q in ["def", "import", "Translate", "print"]]
    objective = RLVRObjective({"num_samples": 3, "temperature": 1.0, "max_new_tokens": 6}, tokenizer=tok,
                              kind="qa", reward_fn=letter_reward, seed=0)
    Trainer(config(1, variant), root / "rlvr", show_progress=False).fit(
        tiny_model(tok), tok, RecordDataset(records), objective, collate_fn=collate_records)


def run_variant(root: Path, variant: str) -> None:
    """The cases of one variant under ``root`` (see the module docstring)."""
    AcceleratorState._reset_state()  # the accelerator's mixed precision is per process, set again per variant
    Trainer(config(1, variant), root / "sft", show_progress=False).fit(tiny_qwen2(0), None, data(), SFTObjective())
    Trainer(config(1, variant), root / "ebft", show_progress=False).fit(tiny_llama(0), None, data(),
                                                                      ebft_objective())
    rlvr_run(root, variant)
    if variant != "fp32":
        return
    cfg = config(3, variant, checkpoint_steps=[2], resume_every=1)
    Trainer(cfg, root / "ebft3", show_progress=False).fit(tiny_llama(0), None, data(8), ebft_objective())
    trainer = Trainer(cfg, root / "ebft3_resumed", show_progress=False)
    stopped = trainer.fit(tiny_llama(0), None, data(8), ebft_objective(), stop_after_step=1)
    assert stopped == {"stopped_at": 1}, stopped
    if trainer.accelerator.is_main_process:
        state = trainer.resume_dir / "state-step1"
        files = sorted(str(p.relative_to(state)) for p in state.rglob("*") if p.is_file())
        (root / "stopped_state.json").write_text(json.dumps(files))
    Trainer(cfg, root / "ebft3_resumed", show_progress=False).fit(tiny_llama(0), None, data(8), ebft_objective())


def main(out: str, *variants: str) -> None:
    torch.set_num_threads(1)
    for variant in variants or ("fp32",):
        run_variant(Path(out) / variant, variant)


if __name__ == "__main__":
    main(*sys.argv[1:])
