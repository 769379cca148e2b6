"""One EBFT optimizer step on fixed data; run single-process or under `torchrun --nproc_per_node 2` (see
tests/test_ebft_objective.py). Writes the logged metrics, a parameter fingerprint and the number of
processes to argv[1]."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from ebft.config import TrainConfig
from ebft.data.packing import Packed
from ebft.methods.ebft import EBFTObjective
from ebft.trainer import Trainer, read_log


def tiny_llama(seed: int) -> torch.nn.Module:
    cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


def main(out: str) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 61, (4, 24), generator=g)
    data = Packed(ids, torch.ones_like(ids), torch.zeros_like(ids))
    params = {"num_samples": 3, "temperature": 0.8, "ce_coef": 0.1, "whitening": True, "diversity_coef": 0.5,
              "hidden_state_method": "concat"}
    objective = EBFTObjective(params, context_len=4, stride=4, gen_len=4, feature_model=tiny_llama(1),
                              embed_method="last_token", seed=5)
    cfg = TrainConfig.from_dict({"lr": 1e-2, "max_steps": 1, "batch_size": 4, "micro_batch_size": 2,
                                 "warmup_steps": 0, "schedule": "constant_with_warmup", "log_every": 1, "seed": 5})
    run = Path(out).with_suffix(".run")
    model = tiny_llama(0)
    trainer = Trainer(cfg, run, show_progress=False)
    trainer.fit(model, None, data, objective)
    if trainer.accelerator.is_main_process:
        unwrapped = trainer.accelerator.unwrap_model(model)
        fingerprint = [float(p.double().sum()) for p in unwrapped.parameters()]
        record = read_log(run / "train_log.jsonl")[0]
        world = trainer.accelerator.num_processes
        Path(out).write_text(json.dumps({"log": record, "params": fingerprint, "world_size": world}))


if __name__ == "__main__":
    main(sys.argv[1])
