"""Low-rank adaptation (LoRA) through ``peft``: the optional ``lora`` training key of every method.

A variant with ``lora: {r, alpha, dropout, target_modules}`` trains adapters instead of the whole policy:
:func:`wrap` turns the loaded policy into a ``peft`` model whose base weights are frozen, so the optimizer
sees only the ``lora_A``/``lora_B`` matrices. The frozen feature network and the KL reference are separate
copies of the initial model and are never wrapped. Every model a LoRA run writes (checkpoints and the final
``model/``) is the *merged* model ``W + (alpha / r)·B·A`` (:func:`merged_state_dict`, bit-identical to
``peft``'s ``merge_and_unload``), written by :func:`ebft.modeling.save_pretrained_atomic`, so evaluation and
``from_pretrained`` need no ``peft``; the adapter alone goes to ``<run>/adapter/`` (:func:`save_adapter`).

This module imports neither torch nor ``peft`` at import time: :class:`LoraSettings` is part of
:class:`ebft.config.TrainConfig`, which Snakemake builds while it plans the DAG.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

#: ``target_modules`` value that adapts every linear layer except the output layer (``peft``'s shorthand).
ALL_LINEAR = "all-linear"

#: Directory of a LoRA run (next to ``model/``) that holds the adapter (``adapter_config.json`` and
#: ``adapter_model.safetensors``); not a declared output of the workflow.
ADAPTER_DIR = "adapter"


@dataclass(frozen=True)
class LoraSettings:
    """The ``lora`` key of a method variant: rank ``r``, scaling ``alpha`` (the update is
    ``(alpha / r)·B·A``), ``dropout`` on the adapter input and the adapted modules (names or name suffixes
    such as ``q_proj``, or ``"all-linear"``)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ALL_LINEAR

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LoraSettings:
        """Build from the ``lora`` mapping of a resolved variant and validate it
        (:class:`ebft.config.ConfigError` naming the key)."""
        from ebft.config import ConfigError

        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"lora: unknown keys {sorted(unknown)}")
        kwargs = dict(raw)
        if isinstance(kwargs.get("target_modules"), list | tuple):
            kwargs["target_modules"] = tuple(kwargs["target_modules"])
        settings = cls(**kwargs)
        settings.check()
        return settings

    def check(self) -> None:
        from ebft.config import ConfigError

        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"lora.r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        targets = self.target_modules
        if isinstance(targets, str):
            if targets != ALL_LINEAR:
                raise ConfigError(f"lora.target_modules must be a list of module names or {ALL_LINEAR!r}, "
                                      f"got {targets!r}")
        elif not targets or not all(isinstance(t, str) and t for t in targets):
            raise ConfigError(f"lora.target_modules must be a non-empty list of module names, got {targets!r}")

    def peft_config(self) -> Any:
        """The ``peft.LoraConfig`` of a causal LM with these settings (no bias training)."""
        from peft import LoraConfig, TaskType

        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          bias="none", task_type=TaskType.CAUSAL_LM)


def wrap(model: torch.nn.Module, settings: LoraSettings) -> PeftModel:
    """``model`` with LoRA adapters (``peft.get_peft_model``): base weights frozen, adapters trainable
    (``lora_B`` starts at zero, so the wrapped model computes what ``model`` did)."""
    from peft import get_peft_model

    return get_peft_model(model, settings.peft_config())


def is_peft(model: object) -> bool:
    """Whether ``model`` is a ``peft`` model (False without importing ``peft`` when nothing has)."""
    if "peft" not in sys.modules:
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merged_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """The state dict of the merged model ``merge_and_unload`` would give, without changing ``model``.

    Keys are those of the plain model (``...q_proj.base_layer.weight`` -> ``...q_proj.weight``, adapter
    tensors dropped); each adapted weight is ``W + get_delta_weight(adapter)`` summed over the active
    adapters, the same arithmetic as ``peft``'s merge (tested bit for bit). Unadapted tensors are the
    model's own (no copies, so tied embeddings stay tied); merged ones are new CPU tensors.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    state = {name.replace(".base_layer.", "."): tensor for name, tensor in base.state_dict().items()
             if ".lora_" not in name}
    with torch.no_grad():
        for name, module in base.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            weight = module.get_base_layer().weight.detach().clone()
            for adapter in module.active_adapters:
                if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                    weight += module.get_delta_weight(adapter)
            state[f"{name}.weight"] = weight.cpu()
    return state


def save_adapter(model: PeftModel, out: str | Path) -> None:
    """Write the adapter alone (``save_pretrained`` of the ``peft`` model: ``adapter_config.json``,
    ``adapter_model.safetensors``) to ``out``, atomically (:func:`ebft.modeling.staged_dir`)."""
    from ebft.modeling import staged_dir

    with staged_dir(Path(out)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
