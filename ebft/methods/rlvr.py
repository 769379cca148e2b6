"""RL from verifiable rewards (RLVR): sampled completions scored by a verifier, RLOO/GRPO advantages and a
clipped PPO surrogate."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ebft.config import ConfigError
from ebft.methods import TrainJob
from ebft.methods.base import SamplingConfig, frozen_reference, rollout_seed
from ebft.methods.sft import masked_token_nll

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass(frozen=True)
class RLVRConfig(SamplingConfig):
    """RLVR's own keys (``methods.rlvr``); see config/README.md for each.

    ``reward``: ``None`` takes the task kind's default (:data:`ebft.methods.REGISTRY` ``rlvr.rewards``).
    ``sandbox_timeout_s``: wall-clock limit of one sandboxed unit-test program (code rewards).
    ``chat_template``: sample from the prompts as user turns of the tokenizer's chat template
    (:func:`ebft.generation.chat_prompts`; instruction-tuned models), as the evaluation does with the same key.
    """

    max_new_tokens: int = 128
    advantage: str = "rloo"  # rloo | grpo
    updates_per_batch: int = 1
    clip_eps: float = 0.2
    reward: str | None = None
    sandbox_timeout_s: float = 5.0
    chat_template: bool = False

    def check(self) -> None:
        super().check()
        if self.advantage not in ("rloo", "grpo"):
            raise ConfigError(f"advantage must be rloo or grpo, got {self.advantage!r}")
        if self.updates_per_batch < 1:
            raise ConfigError(f"updates_per_batch must be >= 1, got {self.updates_per_batch}")
        if not 0 < self.clip_eps < 1:
            raise ConfigError(f"clip_eps must be in (0, 1), got {self.clip_eps}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


CONFIG = RLVRConfig


class RLVRObjective:
    """RL from verifiable rewards on prompts (one micro-batch = ``b`` records with ``question``).

    1. ``n`` completions per prompt with plain KV-cached generation at temperature ``T``
       (:func:`ebft.generation.generate`, seeded by :func:`rollout_seed`), cut at the task's stop sequences;
    2. a scalar reward per completion in [0, 1] (:mod:`ebft.rewards`: sandboxed unit tests for code,
       sentence chrF/BLEU for translation);
    3. advantages over the ``n`` samples of a prompt: RLOO ``A_i = r_i − mean_{j≠i} r_j`` (default) or
       group-normalised ``(r_i − mean r) / (std r + ε)``;
    4. the clipped PPO surrogate, averaged over generated tokens up to the first EOS (``#tokens``):
       ``rl = −Σ_t min(ρ_t A, clip(ρ_t, 1 − ε, 1 + ε) A) / #tokens`` with the per-token ratio
       ``ρ_t = π_T(y_t | ·) / π_old(y_t | ·)`` against the policy that sampled the rollouts;
       plus ``kl_coef`` × k2 KL ``½ (log π − log π_ref)²`` per token to a frozen copy of the initial policy
       and ``ce_coef`` × the cross-entropy of the reference answers (off by default):
       ``loss = rl_coef·rl + kl_coef·kl + ce_coef·ce``.

    ``updates_per_batch = E`` optimizer steps use each rollout batch (the trainer feeds the same prompts
    for ``E`` steps). The first step of a group samples and scores the rollouts and keeps them with their
    log-probs ``log π_old`` (detached); there ``ρ = 1`` and the gradient is the plain policy gradient
    ``−Σ A ∇log π / #tokens`` (so ``E = 1``, the default, is on-policy REINFORCE with a baseline and the
    clip never acts). Steps 2..E reuse the kept rollouts with the updated policy, where the clip bounds
    how far one batch can move it. Kept rollouts are part of the objective state, so a resume in the
    middle of a group continues with the same rollouts.

    Metrics: ``rlvr/reward_mean``, ``rlvr/pass_rate`` (fraction of completions with reward 1),
    ``rlvr/completion_tokens``, ``rlvr/clip_frac`` (tokens whose clipped term is the active one),
    ``rlvr/ratio_mean``, ``train/reward``, ``train/rl_loss``, ``train/kl``, ``train/loss``.
    """

    name = "rlvr"
    wrap_ddp = False

    def __init__(
        self,
        config: RLVRConfig | Mapping[str, Any],
        *,
        tokenizer: Any,
        kind: str,
        reward_fn: Any,
        seed: int = 0,
        reference_model: torch.nn.Module | None = None,
    ) -> None:
        self.config = cfg = RLVRConfig.coerce(config)
        self.tokenizer, self.kind, self.reward_fn, self.seed = tokenizer, kind, reward_fn, seed
        self.n, self.temperature, self.top_p = cfg.num_samples, cfg.temperature, cfg.top_p
        self.max_new_tokens = cfg.max_new_tokens
        self.advantage = cfg.advantage
        self.updates_per_batch = cfg.updates_per_batch
        self.clip_eps = cfg.clip_eps
        self.rl_coef, self.kl_coef, self.ce_coef = cfg.rl_coef, cfg.kl_coef, cfg.ce_coef
        self._kept: dict[int, dict[str, Any]] = {}  # global micro index -> rollouts of the current group
        self.reference = frozen_reference(reference_model, self.kl_coef, "rlvr")

    def setup(self, accelerator: Accelerator, model: torch.nn.Module) -> None:
        self.accelerator = accelerator
        if self.reference is not None:
            self.reference.to(accelerator.device)

    def device(self, model: torch.nn.Module) -> torch.device:
        """The compute device: the accelerator's once set up (FSDP with CPU offload keeps the parameters on
        the CPU), else the model's first parameter's."""
        accelerator = getattr(self, "accelerator", None)
        return accelerator.device if accelerator is not None else next(model.parameters()).device

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """[b, n] rewards -> [b, n] advantages."""
        from ebft.rewards import group_normalized_advantages, rloo_baseline

        if self.advantage == "rloo":
            return rewards - rloo_baseline(rewards)
        return group_normalized_advantages(rewards)

    def answer_ce(self, model: torch.nn.Module, records: list[dict], device: torch.device) -> torch.Tensor:
        """Teacher-forced CE of the reference answers given their questions (answer tokens + EOS)."""
        tok = self.tokenizer
        rows, masks = [], []
        for r in records:
            q = tok(r["question"], add_special_tokens=False)["input_ids"]
            a = tok(r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            rows.append(q + a)
            masks.append([0] * len(q) + [1] * len(a))
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([m + [0] * (width - len(m)) for m in masks], device=device)
        return masked_token_nll(model, ids, mask)[0]

    def rollouts(self, model: torch.nn.Module, records: list[dict], step: int, micro: int) -> dict[str, Any]:
        """Sample and score the rollouts of one micro-batch at the first step of its group.

        Returns ``gens`` (:class:`ebft.generation.Generations`, [b*n, ...]), ``rewards`` [b, n] and
        ``adv`` [b*n, 1]; ``old_logp`` [b*n, M] is added by the caller.
        """
        from ebft.generation import generate

        group_step = step - step % self.updates_per_batch
        gens = generate(model, self.tokenizer, [r["question"] for r in records], kind=self.kind,
                        num_samples=self.n, temperature=self.temperature, top_p=self.top_p,
                        max_new_tokens=self.max_new_tokens, seed=rollout_seed(self.seed, group_step, micro),
                        device=self.device(model), chat=self.config.chat_template)
        expanded = [r for r in records for _ in range(self.n)]
        rewards = self.reward_fn(expanded, gens.texts).float().view(len(records), self.n)
        adv = self.advantages(rewards).reshape(-1, 1).to(gens.completion_ids.device)  # [b*n, 1]
        return {"gens": gens, "rewards": rewards, "adv": adv}

    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], step: int, micro: int = 0
    ) -> tuple[torch.Tensor, dict[str, float]]:
        from ebft.generation import completion_logprobs

        records = batch["records"]
        position = step % self.updates_per_batch
        if position == 0 or micro not in self._kept:
            if position:
                raise RuntimeError(f"rlvr: no kept rollouts for micro-batch {micro} at step {step} (step "
                                   f"{position + 1} of {self.updates_per_batch} of its group)")
            kept = self.rollouts(model, records, step, micro)
            logp = completion_logprobs(model, kept["gens"], self.temperature)  # [b*n, M]
            kept["old_logp"] = logp.detach()
        else:
            kept = _to_device(self._kept[micro], self.device(model))
            logp = completion_logprobs(model, kept["gens"], self.temperature)
        if self.updates_per_batch > 1:
            if position == self.updates_per_batch - 1:
                self._kept.pop(micro, None)
            else:
                self._kept[micro] = _to_device(kept, torch.device("cpu"))
        gens, rewards, adv = kept["gens"], kept["rewards"], kept["adv"]
        mask = gens.completion_mask.to(logp.dtype)
        ratio = torch.exp(logp - kept["old_logp"])
        clipped = ratio.clamp(1.0 - self.clip_eps, 1.0 + self.clip_eps)
        surrogate = torch.minimum(ratio * adv, clipped * adv)
        tokens = mask.sum().clamp_min(1.0)
        rl_loss = -(surrogate * mask).sum() / tokens
        clip_frac = (((ratio * adv) > (clipped * adv)).to(mask.dtype) * mask).sum() / tokens
        loss = self.rl_coef * rl_loss
        kl = torch.zeros((), device=logp.device)
        if self.reference is not None:
            with torch.no_grad():
                ref = completion_logprobs(self.reference, gens, self.temperature)
            kl = (0.5 * (logp - ref).pow(2) * mask).sum() / mask.sum().clamp_min(1.0)
            loss = loss + self.kl_coef * kl
        ce = torch.zeros((), device=logp.device)
        if self.ce_coef > 0:
            ce = self.answer_ce(model, records, logp.device)
            loss = loss + self.ce_coef * ce
        metrics = {
            "train/loss": float(loss.detach()),
            "train/rl_loss": float(rl_loss.detach()),
            "train/kl": float(kl),
            "train/ce": float(ce.detach()),
            "train/reward": float(rewards.mean()),
            "rlvr/reward_mean": float(rewards.mean()),
            "rlvr/pass_rate": float((rewards >= 1.0).float().mean()),
            "rlvr/completion_tokens": float(mask.sum() / mask.shape[0]),
            "rlvr/clip_frac": float(clip_frac),
            "rlvr/ratio_mean": float((ratio.detach() * mask).sum() / tokens),
        }
        return loss, metrics

    def state_dict(self) -> dict[str, Any]:
        """The rollouts kept for the rest of the current group (empty when ``updates_per_batch`` = 1)."""
        return {"kept": {m: _to_device(k, torch.device("cpu")) for m, k in self._kept.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._kept = dict(state.get("kept", {}))


def _to_device(kept: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a kept-rollouts dict (and of its ``Generations``) to ``device``."""
    gens = kept["gens"]
    moved = dataclasses.replace(gens, **{f.name: getattr(gens, f.name).to(device)
                                         for f in dataclasses.fields(gens)
                                         if isinstance(getattr(gens, f.name), torch.Tensor)})
    return {**{k: v.to(device) for k, v in kept.items() if isinstance(v, torch.Tensor)}, "gens": moved}


def build(config: RLVRConfig, job: TrainJob) -> RLVRObjective:
    """The registry's factory: the task kind's verifiable reward, the tokenizer of the initial model and,
    with ``kl_coef > 0``, a frozen copy of the initial model as KL reference."""
    from ebft.config import rlvr_reward
    from ebft.modeling import load_model, load_tokenizer
    from ebft.rewards import make_verifiable_reward

    kind = job.task_spec["kind"]
    name = rlvr_reward(kind, config.reward, "ebft train --method rlvr", job.task)
    reward_kwargs = {"timeout_s": config.sandbox_timeout_s} if kind == "code_qa" else {}
    reference = load_model(job.init, dtype=job.frozen_dtype) if config.kl_coef > 0 else None
    return RLVRObjective(config, tokenizer=load_tokenizer(job.init), kind=kind,
                         reward_fn=make_verifiable_reward(name, **reward_kwargs), seed=job.seed,
                         reference_model=reference)
