"""Energy-based fine-tuning (EBFT): strided rollouts, frozen-feature rewards, RLOO and a REINFORCE update."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ebft import rewards
from ebft.config import ConfigError
from ebft.methods import TrainJob
from ebft.methods.base import SamplingConfig, frozen_reference, rollout_seed

if TYPE_CHECKING:  # the feature network and the strided code load transformers: imported where they are used
    from accelerate import Accelerator

    from ebft.strided import StridedLayout


@dataclass(frozen=True)
class EBFTConfig(SamplingConfig):
    """EBFT's own keys (``methods.ebft``); see config/README.md for each.

    Reward ``r = alignment_coef·a − diversity_coef·d`` on (optionally ``whitening``-whitened) features of the
    layers ``hidden_state_method`` names, pooled by ``embed_method`` (``None``: the task's
    ``embed_method``). ``share_chunk`` computes the chunk once per chunk for its ``num_samples`` rollouts
    (same values up to round-off). ``micro_rollout_batch_size`` caps the chunks per feature-network forward.
    """

    alignment_coef: float = 1.0
    diversity_coef: float = 1.0
    whitening: bool = True
    hidden_state_method: str = "concat"
    embed_method: str | None = None
    share_chunk: bool = True
    micro_rollout_batch_size: int | None = None

    def check(self) -> None:
        super().check()
        if self.micro_rollout_batch_size is not None and self.micro_rollout_batch_size < 1:
            raise ConfigError(f"micro_rollout_batch_size must be >= 1, got {self.micro_rollout_batch_size}")


CONFIG = EBFTConfig


class EBFTObjective:
    """Energy-based fine-tuning (docs/algorithm.md): one micro-batch of ``b`` packed chunks ``x`` [b, L].

    1. strided sampling (KV-cached) of ``n`` rollouts per chunk: ``ŷ`` [b, n, K, G] from the policy at
       temperature ``T``; the generator is seeded by :func:`rollout_seed`;
    2. frozen feature network on ``[x | ŷ]`` with the strided mask: ``psi`` [b, K, D], ``phi`` [b, n, K, D]
       (optionally whitened per chunk and block over the ``n`` samples);
    3. rewards ``r = α·a − β·d`` with ``a = 2 cos(phi_i, psi)``, ``d = 2 mean_{j≠i} <phi_i, phi_j>``, RLOO
       advantages ``A`` [b, n, K] (sum to zero over samples for n ≥ 3), broadcast to the G tokens of a block;
    4. one policy forward on ``[x | ŷ]`` (no [S, vocab] logits, :func:`ebft.strided.strided_logprobs`; with
       ``share_chunk`` (default) the chunk is computed once per chunk and its KV cache reused by the ``n``
       samples, in the feature network and in the policy forward/backward):
       ``rl = mean over sequences and generated tokens of −A·log π_T(ŷ)``,
       ``ce = mean over real chunk targets of −log π_1(x_{j+1} | x_{≤j})``,
       ``loss = rl_coef·rl + ce_coef·ce + kl_coef·k2`` with ``k2 = ½ (log π_T − log π_ref,T)²`` on
       generated tokens (a frozen copy of the initial policy; off unless ``kl_coef > 0``).

    Metrics: ``ebft/alignment``, ``ebft/diversity``, ``ebft/reward`` (means over samples and blocks, on the
    features the rewards use), ``ebft/cfm`` (the unbiased CFM estimator on unwhitened features, mean over
    blocks), ``train/ce``, ``train/rl_loss``, ``train/kl``, ``train/loss``, ``train/reward``.
    """

    name = "ebft"
    wrap_ddp = False  # the policy is scored from hidden states; the trainer all-reduces gradients

    def __init__(
        self,
        config: EBFTConfig | Mapping[str, Any],
        *,
        feature_model: torch.nn.Module,
        layout: StridedLayout | None = None,
        context_len: int | None = None,
        stride: int | None = None,
        gen_len: int | None = None,
        embed_method: str = "last_token",
        seed: int = 0,
        reference_model: torch.nn.Module | None = None,
    ) -> None:
        """``layout``: the strided geometry of the training chunks; or ``context_len``/``stride``/``gen_len``,
        and the layout is built for each chunk length seen."""
        from ebft.features import FeatureConfig, FeatureNetwork

        self.config = cfg = EBFTConfig.coerce(config)
        if (layout is None) == (context_len is None or stride is None or gen_len is None):
            raise ValueError("EBFTObjective: give either layout or context_len, stride and gen_len")
        self.layout = layout
        self.geometry = (layout.context_len, layout.stride, layout.gen_len) if layout else (context_len, stride,
                                                                                            gen_len)
        self.G = self.geometry[2]
        self.n, self.temperature, self.top_p = cfg.num_samples, cfg.temperature, cfg.top_p
        self.rl_coef, self.ce_coef, self.kl_coef = cfg.rl_coef, cfg.ce_coef, cfg.kl_coef
        self.alpha, self.beta = cfg.alignment_coef, cfg.diversity_coef
        self.whitening = cfg.whitening
        self.seed = seed
        # the chunk part of the n sequences of a chunk is identical: compute it once in the feature network
        # and in the policy forward/backward (same values and gradients up to round-off, tests/test_sharing.py)
        self.share_chunk = cfg.share_chunk
        micro_rows = cfg.micro_rollout_batch_size
        self.features = FeatureNetwork(feature_model, FeatureConfig(
            hidden_state_method=cfg.hidden_state_method,
            embed_method=cfg.embed_method or embed_method,
            whiten=self.whitening,
            micro_batch_size=None if micro_rows is None else micro_rows * self.n,
            share_chunk=self.share_chunk,
        ))
        self.reference = frozen_reference(reference_model, self.kl_coef, "ebft")

    def layout_for(self, seq_len: int) -> StridedLayout:
        """The strided layout of chunks of ``seq_len`` tokens (built once per length)."""
        from ebft.strided import StridedLayout

        if self.layout is None or self.layout.seq_len != seq_len:
            C, s, G = self.geometry
            self.layout = StridedLayout(seq_len=seq_len, context_len=C, stride=s, gen_len=G)
        return self.layout

    def setup(self, accelerator: Accelerator, model: torch.nn.Module) -> None:
        self.accelerator = accelerator
        self.features.to(accelerator.device)
        if self.reference is not None:
            self.reference.to(accelerator.device)

    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], step: int, micro: int = 0
    ) -> tuple[torch.Tensor, dict[str, float]]:
        from ebft.strided import strided_logprobs, strided_sample

        ids = batch["input_ids"]
        layout = self.layout_for(ids.shape[1])
        generator = torch.Generator(device=ids.device).manual_seed(rollout_seed(self.seed, step, micro))
        sample = strided_sample(model, ids, layout, num_samples=self.n, temperature=self.temperature,
                                top_p=self.top_p, generator=generator)
        tokens = sample.tokens  # [b, n, K, G]
        feats = self.features(ids, tokens, layout)
        phi, psi = feats.reward_inputs(whitened=self.whitening)  # [b, K, n, D], [b, K, (n,) D]
        a, d = rewards.alignment(phi, psi), rewards.diversity(phi)  # [b, K, n]
        adv = rewards.rloo_advantages(a, d, self.alpha, self.beta)  # [b, K, n]
        token_adv = rewards.block_to_token_advantages(adv.transpose(1, 2), self.G)  # [b, n, K, G]

        gen_lp, chunk_lp = strided_logprobs(model, ids, tokens, layout, temperature=self.temperature,
                                            share_chunk=self.share_chunk)
        rl_loss = -(token_adv.detach().to(gen_lp.dtype) * gen_lp).mean()
        real = (batch["doc_ids"][:, 1:] >= 0).to(chunk_lp.dtype) if "doc_ids" in batch else torch.ones_like(chunk_lp)
        ce = -(chunk_lp * real).sum() / real.sum().clamp_min(1.0)
        loss = self.rl_coef * rl_loss + self.ce_coef * ce
        kl = torch.zeros((), device=ids.device)
        if self.reference is not None:
            with torch.no_grad():
                ref_lp, _ = strided_logprobs(self.reference, ids, tokens, layout, temperature=self.temperature,
                                             share_chunk=self.share_chunk)
            kl = 0.5 * (gen_lp - ref_lp).pow(2).mean()
            loss = loss + self.kl_coef * kl
        raw_phi, raw_psi = feats.reward_inputs(whitened=False)
        cfm = rewards.cfm_loss(raw_phi, raw_psi).mean() if self.n >= 2 else torch.full((), float("nan"))
        reward = (self.alpha * a - self.beta * d).mean()
        metrics = {
            "train/loss": float(loss.detach()),
            "train/rl_loss": float(rl_loss.detach()),
            "train/ce": float(ce.detach()),
            "train/kl": float(kl.detach()),
            "train/reward": float(reward),
            "ebft/alignment": float(a.mean()),
            "ebft/diversity": float(d.mean()),
            "ebft/reward": float(reward),
            "ebft/cfm": float(cfm),
            "ebft/advantage_abs": float(adv.abs().mean()),
        }
        return loss, metrics

    def state_dict(self) -> dict[str, Any]:
        return {}  # rollouts are seeded by (seed, step, micro): nothing to save

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def build(config: EBFTConfig, job: TrainJob) -> EBFTObjective:
    """The registry's factory: the task's strided geometry, the frozen feature network (``job.feature_model``,
    default the initial model) and, with ``kl_coef > 0``, a frozen copy of the initial model, both in
    ``job.frozen_dtype``."""
    from ebft.modeling import load_model
    from ebft.strided import StridedLayout

    geometry = job.task_spec.get("geometry")
    if geometry is None:
        raise ConfigError(f"tasks.{job.task}.geometry is required for EBFT")
    feature_model = load_model(job.feature_model or job.init, dtype=job.frozen_dtype)
    reference = load_model(job.init, dtype=job.frozen_dtype) if config.kl_coef > 0 else None
    layout = StridedLayout(seq_len=job.task_spec["seq_len"], **geometry)
    return EBFTObjective(config, layout=layout, feature_model=feature_model, reference_model=reference,
                         embed_method=job.task_spec.get("embed_method", "last_token"), seed=job.seed)
