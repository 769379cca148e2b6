"""Training objectives: the only part of a run that differs between methods.

Each objective implements :class:`ebft.trainer.Objective`. Metric names follow the shared namespace
(``train/loss``, ``train/ce``, ``train/rl_loss``, ``train/reward``, ``train/kl``, then ``ebft/*``, ``rlvr/*``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator


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


def rollout_seed(seed: int, step: int, micro: int) -> int:
    """Seed of the rollouts of one micro-batch: a pure function of (run seed, optimizer step, global
    micro-batch index), so rollouts do not depend on the number of processes and survive a resume."""
    return ((seed * 1_000_003 + step) * 1_009 + micro) % (2**63 - 1)


class EBFTObjective:
    """Energy-based fine-tuning (spec sections 2-5): one micro-batch of ``b`` packed chunks ``x`` [b, L].

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
        params: dict[str, Any],
        *,
        context_len: int,
        stride: int,
        gen_len: int,
        feature_model: torch.nn.Module,
        embed_method: str = "last_token",
        seed: int = 0,
        reference_model: torch.nn.Module | None = None,
    ) -> None:
        from ebft.features import FeatureNetwork

        self.C, self.s, self.G = context_len, stride, gen_len
        self.n, self.temperature, self.top_p = sampling_params(params, "ebft")
        self.rl_coef = float(params.get("rl_coef", 1.0))
        self.ce_coef = float(params.get("ce_coef", 0.0))
        self.kl_coef = float(params.get("kl_coef", 0.0))
        self.alpha = float(params.get("alignment_coef", 1.0))
        self.beta = float(params.get("diversity_coef", 1.0))
        self.whitening = bool(params.get("whitening", True))
        self.seed = seed
        # the chunk part of the n sequences of a chunk is identical: compute it once in the feature network
        # and in the policy forward/backward (same values and gradients up to round-off, tests/test_sharing.py)
        self.share_chunk = bool(params.get("share_chunk", True))
        micro_rows = params.get("micro_rollout_batch_size")
        self.features = FeatureNetwork(
            feature_model,
            hidden_state_method=params.get("hidden_state_method", "concat"),
            embed_method=params.get("embed_method", embed_method),
            whiten=self.whitening,
            micro_batch_size=None if micro_rows is None else int(micro_rows) * self.n,
            share_chunk=self.share_chunk,
        )
        self.reference = frozen_reference(reference_model, self.kl_coef, "ebft")

    def setup(self, accelerator: Accelerator, model: torch.nn.Module) -> None:
        self.accelerator = accelerator
        self.features.to(accelerator.device)
        if self.reference is not None:
            self.reference.to(accelerator.device)

    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], step: int, micro: int = 0
    ) -> tuple[torch.Tensor, dict[str, float]]:
        from ebft.rewards import alignment, block_to_token_advantages, cfm_loss, diversity, rloo_advantages
        from ebft.strided import strided_logprobs, strided_sample

        ids = batch["input_ids"]
        geometry = {"context_len": self.C, "stride": self.s}
        generator = torch.Generator(device=ids.device).manual_seed(rollout_seed(self.seed, step, micro))
        sample = strided_sample(model, ids, gen_len=self.G, num_samples=self.n, temperature=self.temperature,
                                top_p=self.top_p, generator=generator, **geometry)
        tokens = sample.tokens  # [b, n, K, G]
        feats = self.features(ids, tokens, **geometry)
        phi, psi = feats.reward_inputs(whitened=self.whitening)  # [b, K, n, D], [b, K, (n,) D]
        a, d = alignment(phi, psi), diversity(phi)  # [b, K, n]
        adv = rloo_advantages(a, d, self.alpha, self.beta)  # [b, K, n]
        token_adv = block_to_token_advantages(adv.transpose(1, 2), self.G)  # [b, n, K, G]

        gen_lp, chunk_lp = strided_logprobs(model, ids, tokens, temperature=self.temperature,
                                            share_chunk=self.share_chunk, **geometry)
        rl_loss = -(token_adv.detach().to(gen_lp.dtype) * gen_lp).mean()
        real = (batch["doc_ids"][:, 1:] >= 0).to(chunk_lp.dtype) if "doc_ids" in batch else torch.ones_like(chunk_lp)
        ce = -(chunk_lp * real).sum() / real.sum().clamp_min(1.0)
        loss = self.rl_coef * rl_loss + self.ce_coef * ce
        kl = torch.zeros((), device=ids.device)
        if self.reference is not None:
            with torch.no_grad():
                ref_lp, _ = strided_logprobs(self.reference, ids, tokens, temperature=self.temperature,
                                             share_chunk=self.share_chunk, **geometry)
            kl = 0.5 * (gen_lp - ref_lp).pow(2).mean()
            loss = loss + self.kl_coef * kl
        raw_phi, raw_psi = feats.reward_inputs(whitened=False)
        cfm = cfm_loss(raw_phi, raw_psi).mean() if self.n >= 2 else torch.full((), float("nan"))
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
        params: dict[str, Any],
        *,
        tokenizer: Any,
        kind: str,
        reward_fn: Any,
        seed: int = 0,
        reference_model: torch.nn.Module | None = None,
    ) -> None:
        self.tokenizer, self.kind, self.reward_fn, self.seed = tokenizer, kind, reward_fn, seed
        self.n, self.temperature, self.top_p = sampling_params(params, "rlvr")
        self.max_new_tokens = int(params.get("max_new_tokens", 128))
        self.advantage = params.get("advantage", "rloo")
        if self.advantage not in ("rloo", "grpo"):
            raise ValueError(f"rlvr: advantage must be rloo or grpo, got {self.advantage!r}")
        self.updates_per_batch = int(params.get("updates_per_batch", 1))
        if self.updates_per_batch < 1:
            raise ValueError(f"rlvr: updates_per_batch must be >= 1, got {self.updates_per_batch}")
        self.clip_eps = float(params.get("clip_eps", 0.2))
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"rlvr: clip_eps must be in (0, 1), got {self.clip_eps}")
        self._kept: dict[int, dict[str, Any]] = {}  # global micro index -> rollouts of the current group
        self.rl_coef = float(params.get("rl_coef", 1.0))
        self.kl_coef = float(params.get("kl_coef", 0.0))
        self.ce_coef = float(params.get("ce_coef", 0.0))
        self.reference = frozen_reference(reference_model, self.kl_coef, "rlvr")

    def setup(self, accelerator: Accelerator, model: torch.nn.Module) -> None:
        self.accelerator = accelerator
        if self.reference is not None:
            self.reference.to(accelerator.device)

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
                        max_new_tokens=self.max_new_tokens, seed=rollout_seed(self.seed, group_step, micro))
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
            kept = _to_device(self._kept[micro], next(model.parameters()).device)
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


def sampling_params(params: dict[str, Any], name: str) -> tuple[int, float, float]:
    """``(num_samples, temperature, top_p)`` of an on-policy objective; the policy loss scores the tempered
    distribution the samples come from, so greedy decoding (temperature 0) is an error."""
    temperature = float(params.get("temperature", 1.0))
    if temperature <= 0:
        raise ValueError(f"{name}: temperature must be > 0 (the policy loss uses tempered log-probs)")
    return int(params.get("num_samples", 4)), temperature, float(params.get("top_p", 1.0))


def frozen_reference(model: torch.nn.Module | None, kl_coef: float, name: str) -> torch.nn.Module | None:
    """The frozen initial policy of the k2 KL term (eval mode, no gradients); required when ``kl_coef > 0``."""
    if kl_coef > 0 and model is None:
        raise ValueError(f"{name}: kl_coef > 0 needs a reference model")
    if model is not None:
        model.eval().requires_grad_(False)
    return model


def _to_device(kept: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a kept-rollouts dict (and of its ``Generations``) to ``device``."""
    gens = kept["gens"]
    moved = dataclasses.replace(gens, **{f.name: getattr(gens, f.name).to(device)
                                         for f in dataclasses.fields(gens)
                                         if isinstance(getattr(gens, f.name), torch.Tensor)})
    return {**{k: v.to(device) for k, v in kept.items() if isinstance(v, torch.Tensor)}, "gens": moved}
