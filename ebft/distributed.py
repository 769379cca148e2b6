"""Sharded training (FSDP2): the ``distributed`` training key of every method and what the trainer does with it.

``distributed: {strategy: ddp | fsdp, cpu_offload: bool, activation_checkpointing: bool}``
(:class:`DistributedSettings`, a field of :class:`ebft.config.TrainConfig`; unset is ``ddp``).

* ``ddp`` (default): every process holds the whole policy in fp32 with its AdamW state; gradients are
  all-reduced (DDP for objectives that go through ``model.forward``, :func:`ebft.trainer.average_gradients`
  for those that do not, ``wrap_ddp = False``).
* ``fsdp`` with more than one process: the policy is sharded with FSDP2
  (``torch.distributed.fsdp.fully_shard``, applied here, not through accelerate's FSDP plugin) by
  :func:`shard_model`: one FSDP unit per decoder layer, units for the modules around them
  (:func:`edge_units`: input embedding, final norm, LM head; one unit of the three when the head is tied to
  the input embedding, so both share one shard) and the causal LM as the root. The strided sampler and
  scorer call the body and the head directly (``backbone(model)(...)``, ``lm_head(model)(h)``), not
  ``model.forward``: FSDP2 hooks the forward of every module of a unit, so those calls all-gather the
  parameters they use too (tested: one and two processes train to the same parameters). Each process
  stores ``1/world`` of every parameter (fp32 master weights, a ``DTensor`` shard), of its gradient (fp32,
  reduce-scattered by FSDP, so the trainer's own all-reduce is skipped) and of the AdamW state (fp32).
  With ``mixed_precision: bf16`` the all-gathered compute copies are bf16 and gradients are reduced in
  fp32 (``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)``); otherwise they are fp32.
  ``cpu_offload`` keeps the shards (parameters, gradients, optimizer state) in CPU memory
  (``CPUOffloadPolicy``); ``activation_checkpointing`` recomputes each decoder layer in the backward
  (``gradient_checkpointing_enable``, non-reentrant). The frozen feature network and the KL reference are
  not sharded: every process holds a whole copy.
  With one process there is nothing to shard: the run trains as ``ddp`` does.

Saving: resume states hold the sharded model and optimizer state written with ``torch.distributed.checkpoint``
(:func:`save_sharded`, :func:`load_sharded`: one file per process, no gather); checkpoints and the final
model are gathered full state dicts (:func:`full_state_dict`) written by the main process as a normal
Hugging Face model (:func:`plain_model` + :func:`ebft.modeling.save_pretrained_atomic`), so evaluation does
not know how the model was trained.

This module imports torch only inside its functions: :class:`DistributedSettings` is part of
:class:`ebft.config.TrainConfig`, which Snakemake builds while it plans the DAG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from accelerate.utils import InitProcessGroupKwargs
    from transformers import PreTrainedModel

    from ebft.config import TrainConfig

#: ``distributed.strategy`` values.
STRATEGIES: tuple[str, ...] = ("ddp", "fsdp")

#: Directory of a resume state (``resume/state-step{N}/``) holding the sharded model and optimizer state.
SHARDED_STATE_DIR = "fsdp"

#: Attribute transformers reads to generate with ``synced_gpus`` (every process runs as many decoding steps
#: as the slowest one, so the all-gathers of the sharded layers stay matched across processes).
FSDP_MANAGED_ATTR = "_is_fsdp_managed_module"


@dataclass(frozen=True)
class DistributedSettings:
    """The ``distributed`` key of a method variant: how the policy is spread over the processes.

    ``strategy``: ``ddp`` (replicated) or ``fsdp`` (sharded per decoder layer, FSDP2); ``cpu_offload`` and
    ``activation_checkpointing`` apply to ``fsdp`` only (see the module docstring)."""

    strategy: str = "ddp"
    cpu_offload: bool = False
    activation_checkpointing: bool = False

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DistributedSettings:
        """Build from the ``distributed`` mapping of a resolved variant and validate it
        (:class:`ebft.config.ConfigError` naming the key)."""
        from ebft.config import reject_unknown_keys

        reject_unknown_keys(raw, {f.name for f in fields(cls)}, "distributed")
        settings = cls(**dict(raw))
        settings.check()
        return settings

    @property
    def sharded(self) -> bool:
        """True for ``strategy: fsdp``."""
        return self.strategy == "fsdp"

    def check(self) -> None:
        from ebft.config import ConfigError

        if self.strategy not in STRATEGIES:
            raise ConfigError(f"distributed.strategy: unknown value {self.strategy!r} (expected one of "
                              f"{', '.join(STRATEGIES)})")
        for key in ("cpu_offload", "activation_checkpointing"):
            if getattr(self, key) and not self.sharded:
                raise ConfigError(f"distributed.{key} needs distributed.strategy: fsdp")


def process_group_kwargs(cfg: TrainConfig) -> list[InitProcessGroupKwargs]:
    """The accelerator's process-group settings for a run of ``cfg``: a sharded run of several processes on
    GPUs gets a CPU backend next to NCCL (``cuda:nccl,cpu:gloo``, what accelerate itself picks for FSDP with
    offloaded parameters or full state dicts), because the CPU-offloaded shards' collectives (gradient norm,
    gathered state dicts) run on CPU tensors; otherwise accelerate's default (none here)."""
    import torch

    if not cfg.sharded or not torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return []
    from accelerate.utils import InitProcessGroupKwargs

    return [InitProcessGroupKwargs(backend="cuda:nccl,cpu:gloo")]


def _body_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body (:func:`ebft.modeling.backbone`) and the LM head (:func:`ebft.modeling.lm_head`)."""
    from ebft.modeling import backbone, lm_head

    body, head = backbone(model), lm_head(model)
    if body is model:
        raise ValueError("fsdp: the model must be a causal LM with a separate transformer body")
    return body, head


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a Llama/Qwen2-style causal LM (``backbone(model).layers``)."""
    body, _ = _body_and_head(model)
    layers = getattr(body, "layers", None)
    if layers is None:
        raise ValueError(f"fsdp: {type(body).__name__} has no `layers` to shard")
    return list(layers)


def shard_model(model: PreTrainedModel, settings: DistributedSettings, mixed_precision: str,
                device_type: str) -> None:
    """Shard ``model`` in place over every process of the default process group (see the module docstring):
    ``fully_shard`` on each decoder layer, on each of the :func:`edge_units`, then on the causal LM (the
    root). Parameters stay fp32 (the shards are the master weights); ``mixed_precision == "bf16"`` makes the
    compute copies bf16 with fp32 gradient reduction. ``activation_checkpointing`` is switched on before sharding."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    if mixed_precision not in ("no", "bf16"):
        raise ValueError(f"fsdp: mixed_precision {mixed_precision!r} is not supported (use no or bf16)")
    if settings.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mesh = init_device_mesh(device_type, (torch.distributed.get_world_size(),))
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if mixed_precision == "bf16" else MixedPrecisionPolicy())
    # pinned host memory needs an accelerator; a CPU-only run (tests) offloads to unpinned memory
    offload = CPUOffloadPolicy(pin_memory=device_type != "cpu") if settings.cpu_offload else OffloadPolicy()
    kwargs: dict[str, Any] = {"mesh": mesh, "mp_policy": mp, "offload_policy": offload}
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    for unit in edge_units(model):
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)  # the root (no parameters of its own left)
    # FSDP makes the first module to run forward the root: run one through the causal LM, so that the direct
    # calls of the body and the head (strided sampler, scorer) find the root set
    device = next(model.parameters()).device
    with torch.no_grad():
        model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device))
    setattr(model, FSDP_MANAGED_ATTR, True)


def edge_units(model: torch.nn.Module) -> list[list[torch.nn.Module]]:
    """The FSDP units of the modules around the decoder layers that hold parameters (the body's children
    other than ``layers``: input embedding, final norm; and the LM head): one unit each, or one unit of all
    when the head shares a parameter with them (tied embeddings: a parameter belongs to one unit)."""
    body, head = _body_and_head(model)
    edge = [m for name, m in body.named_children() if name != "layers" and any(True for _ in m.parameters())]
    edge_params = {id(p) for m in edge for p in m.parameters()}
    if any(id(p) in edge_params for p in head.parameters()):
        return [[*edge, head]]
    return [[m] for m in [*edge, head]]


def is_sharded(model: torch.nn.Module) -> bool:
    """True when :func:`shard_model` sharded ``model``."""
    return bool(getattr(model, FSDP_MANAGED_ATTR, False))


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole fp32 state dict of a sharded model, gathered to CPU on the main process (empty on the
    others); every process must call it (all-gathers)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def plain_model(model: PreTrainedModel, state: Mapping[str, torch.Tensor]) -> PreTrainedModel:
    """A plain (unsharded) copy of ``model``'s architecture holding ``state`` (a :func:`full_state_dict`):
    built on the meta device and assigned the gathered tensors, so it costs no second initialisation; what
    :func:`ebft.modeling.save_pretrained_atomic` writes."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    plain.load_state_dict(dict(state), assign=True, strict=False)
    plain.tie_weights()
    missing = [n for n, p in plain.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"fsdp: the gathered state dict lacks {missing[:5]}")
    if getattr(model, "generation_config", None) is not None:
        plain.generation_config = model.generation_config
    return plain


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Write the sharded model and optimizer state to ``path`` with ``torch.distributed.checkpoint`` (every
    process writes its own shards; collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path))


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Load what :func:`save_sharded` wrote into the sharded ``model`` and its ``optimizer`` (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
