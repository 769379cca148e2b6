"""What every training method shares: the typed method config and the pieces of on-policy objectives.

A method's settings arrive as one resolved variant (``methods.<m>.defaults`` ← ``per_task`` ← the variant, see
:func:`ebft.config.method_variants`): a flat mapping that also holds the optimisation keys of
:class:`ebft.config.TrainConfig` and the workflow's own keys (``init``, ``tasks``, ``base_model``,
``checkpoint_steps``, ...). :meth:`MethodConfig.from_dict` keeps the keys its dataclass declares and
ignores the rest, so one variant builds both typed configs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Self, TypeVar

import torch

from ebft.config import ConfigError

C = TypeVar("C", bound="MethodConfig")


@dataclass(frozen=True)
class MethodConfig:
    """Base of the per-method configs: typed, frozen, validated where it is built."""

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "") -> Self:
        """Build from a resolved variant; keys of other configs are ignored. ``where`` prefixes errors
        (e.g. ``methods.ebft variant 'default'``) so a bad value names its key path."""
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in raw.items() if k in names})
        try:
            cfg.check()
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}" if where else str(err)) from None
        return cfg

    @classmethod
    def coerce(cls, value: Self | Mapping[str, Any]) -> Self:
        """``value`` itself if it is already this config, else :meth:`from_dict` of the mapping."""
        return value if isinstance(value, cls) else cls.from_dict(value)

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the key of an inconsistent value (subclasses extend it)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SamplingConfig(MethodConfig):
    """Settings of an on-policy objective that samples ``num_samples`` completions per input.

    The policy loss scores the tempered distribution the samples come from, so greedy decoding
    (``temperature`` 0) is an error.
    """

    num_samples: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    rl_coef: float = 1.0
    kl_coef: float = 0.0
    ce_coef: float = 0.0

    def check(self) -> None:
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0 (the policy loss uses tempered log-probs)")
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


def rollout_seed(seed: int, step: int, micro: int) -> int:
    """Seed of the rollouts of one micro-batch: a pure function of (run seed, optimizer step, global
    micro-batch index), so rollouts do not depend on the number of processes and survive a resume."""
    return ((seed * 1_000_003 + step) * 1_009 + micro) % (2**63 - 1)


def frozen_reference(model: torch.nn.Module | None, kl_coef: float, name: str) -> torch.nn.Module | None:
    """The frozen initial policy of the k2 KL term (eval mode, no gradients); required when ``kl_coef > 0``."""
    if kl_coef > 0 and model is None:
        raise ValueError(f"{name}: kl_coef > 0 needs a reference model")
    if model is not None:
        model.eval().requires_grad_(False)
    return model
