"""Supervised fine-tuning: teacher-forced cross-entropy on packed chunks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ebft.methods.base import MethodConfig

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass(frozen=True)
class SFTConfig(MethodConfig):
    """SFT has no settings of its own: everything it needs is in :class:`ebft.config.TrainConfig`."""


CONFIG = SFTConfig


def masked_token_nll(
    model: torch.nn.Module, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token negative log-likelihood over masked targets.

    ``input_ids``, ``loss_mask``: [B, L]. Target ``input_ids[:, j+1]`` is predicted by logit row ``j`` and
    counts where ``loss_mask[:, j+1] == 1``. Returns (mean NLL as a 0-dim tensor, number of target tokens).
    """
    logits = model(input_ids=input_ids).logits[:, :-1].float()  # [B, L-1, V]
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:].to(logits.dtype)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    n = mask.sum()
    return (nll * mask.reshape(-1)).sum() / n.clamp_min(1.0), n


class SFTObjective:
    """Teacher-forced cross-entropy: ``loss = mean over target tokens of -log p(x_{j+1} | x_{<=j})``.

    Targets come from the packed ``loss_mask``: answer tokens (+ their closing EOS) for question/answer
    tasks, every real token for unstructured data (see :mod:`ebft.data.packing`). Pretraining the tiny base
    model uses the same objective on unstructured packing of all training corpora.
    """

    name = "sft"
    wrap_ddp = True

    def __init__(self, config: SFTConfig | None = None) -> None:
        self.config = config or SFTConfig()

    def setup(self, accelerator: Accelerator, model: torch.nn.Module) -> None:
        self.accelerator = accelerator

    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], step: int, micro: int = 0
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, n = masked_token_nll(model, batch["input_ids"], batch["loss_mask"])
        value = float(loss.detach())
        return loss, {"train/loss": value, "train/ce": value, "train/target_tokens": float(n)}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def build(config: SFTConfig, job: Any) -> SFTObjective:
    """The registry's factory (``job``: :class:`ebft.methods.registry.TrainJob`)."""
    return SFTObjective(config)
