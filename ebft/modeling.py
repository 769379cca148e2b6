"""Models and tokenizers: the tiny from-scratch factory, loading by hub id or local path, atomic saving.

Every trained model is written with ``save_pretrained`` so that ``AutoModelForCausalLM.from_pretrained(dir)``
and ``AutoTokenizer.from_pretrained(dir)`` load it; the tokenizer is saved next to the weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

ARCHITECTURES = {"qwen2": Qwen2Config, "llama": LlamaConfig}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_tiny_model(spec: dict[str, Any], tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised causal LM of the ``models.<name>`` spec (``source: pretrain``).

    ``spec`` holds ``architecture`` (qwen2 | llama) and the usual size keys; the vocabulary and special
    token ids come from the tokenizer so the pair is consistent.
    """
    arch = spec.get("architecture", "qwen2")
    if arch not in ARCHITECTURES:
        raise ValueError(f"models.*.architecture: unknown value {arch!r} (expected one of {sorted(ARCHITECTURES)})")
    size_keys = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
    )
    cfg = ARCHITECTURES[arch](
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=spec.get("tie_word_embeddings", True),
        rope_theta=spec.get("rope_theta", 10000.0),
        **{k: spec[k] for k in size_keys if k in spec},
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.config.use_cache = True
    return model


def load_model(
    path: str | Path, *, dtype: str = "float32", attn_implementation: str | None = "sdpa"
) -> PreTrainedModel:
    """Load a causal LM from a local directory or a hub id (hub ids only where the network is allowed).

    Training keeps fp32 master weights, so the default dtype is float32 even for bf16 checkpoints.
    """
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer saved with a model; give it a pad token (= EOS) when it has none (Llama-3.2)."""
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def save_pretrained_atomic(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, out: Path) -> None:
    """Write ``model`` (+ tokenizer) to ``out`` via a sibling temp dir and a rename: readers never see half a model."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, replacing an existing ``dst`` (both on one filesystem)."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
