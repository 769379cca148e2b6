"""Models and tokenizers: the tiny from-scratch factory, loading by hub id or local path, atomic saving, and
the model plumbing of the strided sampler, scorer and feature network.

Every trained model is written with ``save_pretrained`` so that ``AutoModelForCausalLM.from_pretrained(dir)``
and ``AutoTokenizer.from_pretrained(dir)`` load it; the tokenizer is saved next to the weights.

Model plumbing
--------------
A ``transformers`` causal LM is split into a *backbone* (the transformer body, :func:`backbone`) returning
final hidden states ``h [..., H]`` and an LM head (:func:`lm_head`); the logits are
``z = lm_head(h) [..., V]`` (:func:`lm_logits`, float32). The strided code runs the backbone directly (so the
``[S, V]`` logits are only computed where needed, or never, for the feature network) with a KV cache that is
passed under the name :func:`cache_kwarg` gives and created by :func:`new_cache`.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from ebft.lora import is_peft, merged_state_dict
from ebft.paths import CHECKPOINT_META

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


def save_pretrained_atomic(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, out: Path,
                           meta: dict[str, Any] | None = None) -> None:
    """Write ``model`` (+ tokenizer) to ``out`` via a sibling temp dir and a rename: readers never see half a model.
    ``meta`` (a checkpoint's name and step) is written next to the weights as :data:`ebft.paths.CHECKPOINT_META`.

    A ``peft`` model (a LoRA run) is written as the merged plain model (:func:`ebft.lora.merged_state_dict`),
    so every saved model loads with ``from_pretrained`` and no ``peft``.
    """
    with staged_dir(Path(out)) as tmp:
        if is_peft(model):
            model.get_base_model().save_pretrained(tmp, state_dict=merged_state_dict(model), safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if meta is not None:
            (tmp / CHECKPOINT_META).write_text(json.dumps(meta, sort_keys=True) + "\n")


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A fresh temp directory next to ``out`` to write into; when the block ends without an exception it
    replaces ``out`` (:func:`replace_dir`), otherwise it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
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


# --------------------------------------------------------------------------------------------------------
# Model plumbing (strided sampler, strided scorer, feature network)
# --------------------------------------------------------------------------------------------------------


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The ``transformers`` model inside a ``peft`` wrapper (``get_base_model()``: the causal LM whose linear
    layers carry the adapters), else ``model`` itself."""
    return model.get_base_model() if is_peft(model) else model


def backbone(model: nn.Module) -> nn.Module:
    """The transformer body that returns final hidden states: ``model.base_model``.

    That is ``model.model`` for a Llama/Qwen2 causal LM and the model itself for a bare ``AutoModel`` body
    (``PreTrainedModel.base_model`` falls back to ``self``). A ``peft`` model is unwrapped first
    (:func:`unwrap_peft`; its own ``base_model`` is the ``LoraModel`` wrapper, not the body), so the body
    runs with its adapters. Its output's ``last_hidden_state [..., H]`` is the state after the final norm,
    the input of :func:`lm_head`.
    """
    model = unwrap_peft(model)
    return getattr(model, "base_model", model)


def lm_head(model: nn.Module) -> nn.Module:
    """The output embedding ``H -> V`` of a causal LM (``get_output_embeddings()``, else ``model.lm_head``;
    inside the wrapper for a ``peft`` model).

    Raises:
        ValueError: for a model without one (a bare transformer body cannot sample or score).
    """
    model = unwrap_peft(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        head = getattr(model, "lm_head", None)
    if head is None:
        raise ValueError("model must be a causal LM with an output embedding (lm_head); got a bare transformer body")
    return head


def lm_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``z = lm_head(hidden)`` in float32: ``[..., H] -> [..., V]``, with Gemma-style final soft-capping
    ``z <- c * tanh(z / c)`` where ``config.final_logit_softcapping = c`` is set.

    Assumes the causal LM's logits are exactly ``lm_head(final hidden state)`` (true for Llama, Qwen2/3,
    Mistral, SmolLM2); models that rescale logits in their ``forward`` (e.g. Granite, Cohere) are not handled.
    """
    logits = lm_head(model)(hidden).float()
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of ``model`` (``model.dtype``, else that of its first parameter): the dtype of the
    additive attention masks fed to it."""
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return next(model.parameters()).dtype


def model_device(model: nn.Module, default: torch.device) -> torch.device:
    """The device of ``model``'s first parameter (``default`` for a model without parameters)."""
    param = next(model.parameters(), None)
    return default if param is None else param.device


def cache_kwarg(module: nn.Module) -> str:
    """Name of the KV-cache argument of ``module.forward``: ``cache`` in transformers >= 5.x,
    ``past_key_values`` before."""
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return "cache"
    return "cache" if "cache" in params or "past_key_values" not in params else "past_key_values"


def new_cache(model: nn.Module) -> DynamicCache:
    """An empty ``DynamicCache`` for ``model`` (per layer ``keys, values [batch, kv_heads, tokens, head_dim]``
    once filled)."""
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # pragma: no cover - older transformers
        return DynamicCache()


def checkpointing_drops_cache(module: nn.Module) -> bool:
    """True when ``module`` has activation checkpointing on and would drop the KV cache in this forward (a
    training-mode forward with autograd enabled)."""
    return bool(module.training and torch.is_grad_enabled() and getattr(module, "gradient_checkpointing", False))
