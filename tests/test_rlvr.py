"""RLVR: generation helpers, verifiable rewards, advantages, zero-reward-spread gradients, and learning."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ebft.config import TrainConfig
from ebft.generation import completion_logprobs, generate, truncate_completion
from ebft.methods.rlvr import RLVRObjective
from ebft.rewards import TranslationMetricReward, UnitTestReward, make_verifiable_reward, split_test_cases
from ebft.trainer import Trainer, read_log
from tests.helpers import TINY_SPEC, tiny_model, tiny_tokenizer

RECORD = {
    "question": 'def add_three(x):\n    """Return x plus three."""\n',
    "answer": "    return x + 3\n",
    "entry_point": "add_three",
    "test": "def check(candidate):\n    assert candidate(1) == 4\n    assert candidate(-3) == 0\n",
}


def test_truncate_completion():
    assert truncate_completion("    return x\n\ndef other():\n    pass\n", "code_qa") == "    return x\n\n"
    assert truncate_completion("    y = 1\n    return y\nprint(3)", "code_qa") == "    y = 1\n    return y\n"
    assert truncate_completion(" Ich habe drei Äpfel.\nEnglish: more", "translation") == "Ich habe drei Äpfel."
    assert truncate_completion("\n", "translation") == ""


def test_unit_test_reward_runs_in_the_sandbox():
    reward = UnitTestReward(timeout_s=5)
    wrong = "    return x + 2\n"
    exits_early = "    import sys; sys.exit(0)\n"
    values = reward([RECORD] * 3, [RECORD["answer"], wrong, exits_early])
    assert values.tolist() == [1.0, 0.0, 0.0]


def test_translation_reward():
    rec = {"reference": "Ich habe drei Äpfel."}
    chrf = TranslationMetricReward("chrf")([rec, rec], ["Ich habe drei Äpfel.", "xyz"])
    assert chrf[0] == pytest.approx(1.0) and chrf[1] < 0.2
    assert make_verifiable_reward("bleu")([rec], ["Ich habe drei Äpfel."])[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown value"):
        make_verifiable_reward("comet")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_generation_is_seeded_and_logprobs_match_sampling(tok):
    model = tiny_model(tok)
    kw = dict(kind="code_qa", num_samples=3, temperature=0.8, max_new_tokens=6)
    a = generate(model, tok, ["def f(x):", "import"], seed=1, **kw)
    b = generate(model, tok, ["def f(x):", "import"], seed=1, **kw)
    c = generate(model, tok, ["def f(x):", "import"], seed=2, **kw)
    assert torch.equal(a.completion_ids, b.completion_ids) and not torch.equal(a.completion_ids, c.completion_ids)
    assert a.completion_ids.shape[0] == 6 and len(a.texts) == 6
    # scoring log-probs at T equal HF's processed sampling scores (temperature-warped, top_p = 1)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        ids, mask = a.prompt_ids, a.prompt_mask
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.8, top_p=1.0,
                             top_k=0, max_new_tokens=6, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             output_scores=True, return_dict_in_generate=True)
    scores = torch.stack(out.scores, dim=1).log_softmax(-1)
    sampled = scores.gather(-1, a.completion_ids.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        scored = completion_logprobs(model, a, temperature=0.8)
    m = a.completion_mask.bool()
    torch.testing.assert_close(scored[m], sampled[m], atol=1e-4, rtol=1e-4)


def test_advantages_sum_to_zero_and_equal_rewards_give_zero_gradient(tok):
    obj = RLVRObjective({"num_samples": 4, "temperature": 1.0, "max_new_tokens": 5}, tokenizer=tok,
                        kind="code_qa", reward_fn=lambda recs, texts: torch.full((len(texts),), 0.5))
    r = torch.rand(3, 4)
    assert obj.advantages(r).sum(-1).abs().max() < 1e-6
    obj.advantage = "grpo"
    assert obj.advantages(r).sum(-1).abs().max() < 1e-5
    obj.advantage = "rloo"
    model = tiny_model(tok)
    loss, metrics = obj.compute_loss(model, {"records": [RECORD, RECORD]}, step=0, micro=0)
    loss.backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    assert metrics["rlvr/reward_mean"] == pytest.approx(0.5) and metrics["rlvr/pass_rate"] == 0.0


def test_answer_ce_term(tok):
    obj = RLVRObjective({"num_samples": 2, "temperature": 1.0, "max_new_tokens": 3, "ce_coef": 1.0}, tokenizer=tok,
                        kind="code_qa", reward_fn=lambda recs, texts: torch.zeros(len(texts)))
    _, metrics = obj.compute_loss(tiny_model(tok), {"records": [RECORD]}, step=0, micro=0)
    assert metrics["train/ce"] > 0 and metrics["train/loss"] == pytest.approx(metrics["train/ce"], rel=1e-5)


def test_rlvr_raises_a_learnable_reward(tok, tmp_path):
    """Reward = fraction of the letter 'e' in the completion: a short seeded run must raise it."""

    def letter_reward(records, texts):
        return torch.tensor([t.count("e") / max(len(t), 1) for t in texts])

    records = [{"question": q} for q in ["def", "import", "Translate", "print", "English:", "return"]]
    from ebft.train import RecordDataset, collate_records

    obj = RLVRObjective({"num_samples": 6, "temperature": 1.0, "max_new_tokens": 8}, tokenizer=tok,
                        kind="qa", reward_fn=letter_reward, seed=0)
    cfg = TrainConfig.from_dict({"lr": 3e-2, "max_steps": 25, "batch_size": 6, "micro_batch_size": 6,
                                 "warmup_steps": 0, "schedule": "constant_with_warmup", "log_every": 1, "seed": 0})
    Trainer(cfg, tmp_path / "run", show_progress=False).fit(tiny_model(tok), tok, RecordDataset(records), obj,
                                                            collate_fn=collate_records)
    rewards = [r["rlvr/reward_mean"] for r in read_log(tmp_path / "run" / "train_log.jsonl")]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.1, (first, last)


# ------------------------------------------------------------------------------ fraction-of-tests reward
def test_split_test_cases_keeps_setup_and_one_assert_each():
    test = "K = 2\n\ndef check(candidate):\n    y = K\n    assert candidate(1) == 4\n    assert candidate(y) == 5\n"
    cases = split_test_cases(test)
    assert len(cases) == 2
    assert "candidate(1)" in cases[0] and "candidate(y)" not in cases[0] and "y = K" in cases[0]
    assert "candidate(y)" in cases[1] and "candidate(1)" not in cases[1] and cases[1].startswith("K = 2")
    loop = "def check(candidate):\n    for i in range(3):\n        assert candidate(i) == i + 3\n"
    assert split_test_cases(loop) == [loop]
    assert split_test_cases("def check(:") == ["def check(:"]


def test_unit_test_fraction_reward_counts_passed_cases():
    reward = make_verifiable_reward("unit_test_fraction", timeout_s=1)
    half = "    return 4 if x == 1 else x\n"  # passes candidate(1) == 4 only
    hangs = "    while True:\n        pass\n"
    values = reward([RECORD] * 4, [RECORD["answer"], half, "    return x + 2\n", hangs])
    assert values.tolist() == [1.0, 0.5, 0.0, 0.0]


# ---------------------------------------------------------------------- PPO ratio clipping, batch reuse
def _indexed_reward(values):
    """Reward by position within the micro-batch: ``values`` repeated over the prompts."""
    calls = []

    def reward(records, texts):
        calls.append(len(texts))
        return torch.tensor(values * (len(texts) // len(values)), dtype=torch.float32)

    return reward, calls


def _grads(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def test_first_update_of_a_group_is_the_plain_policy_gradient(tok):
    """At ρ = 1 the clipped surrogate has the REINFORCE gradient −Σ A ∇log π / #tokens."""
    reward, _ = _indexed_reward([1.0, 0.0, 0.25, 0.5])
    params = {"num_samples": 4, "temperature": 1.0, "max_new_tokens": 6, "updates_per_batch": 3}
    obj = RLVRObjective(params, tokenizer=tok, kind="code_qa", reward_fn=reward)
    model = tiny_model(tok)
    loss, metrics = obj.compute_loss(model, {"records": [RECORD, RECORD]}, step=0, micro=0)
    loss.backward()
    g = _grads(model)
    model.zero_grad()
    kept = obj._kept[0]
    logp = completion_logprobs(model, kept["gens"], 1.0)
    mask = kept["gens"].completion_mask.float()
    (-(kept["adv"] * logp * mask).sum() / mask.sum()).backward()
    torch.testing.assert_close(g, _grads(model), atol=1e-7, rtol=1e-5)
    assert metrics["rlvr/clip_frac"] == 0.0 and metrics["rlvr/ratio_mean"] == pytest.approx(1.0)


def test_clipped_tokens_carry_no_gradient(tok):
    """With ρ = e > 1 + ε everywhere, samples with A > 0 are clipped: changing their advantage leaves the
    gradient unchanged, while samples with A < 0 (unclipped side) still contribute."""
    reward, calls = _indexed_reward([1.0, 0.0, 0.0, 0.0])  # RLOO: A = 1, -1/3, -1/3, -1/3
    params = {"num_samples": 4, "temperature": 1.0, "max_new_tokens": 6, "updates_per_batch": 2, "clip_eps": 0.2}
    model = tiny_model(tok)
    grads, metrics = [], []
    for boost in (1.0, 5.0):
        obj = RLVRObjective(params, tokenizer=tok, kind="code_qa", reward_fn=reward)
        obj.compute_loss(model, {"records": [RECORD]}, step=0, micro=0)  # samples and keeps the rollouts
        kept = obj._kept[0]
        kept["old_logp"] = kept["old_logp"] - 1.0  # ρ = e at step 1
        kept["adv"] = kept["adv"] * torch.tensor([[boost], [1.0], [1.0], [1.0]])
        model.zero_grad()
        loss, m = obj.compute_loss(model, {"records": [RECORD]}, step=1, micro=0)
        loss.backward()
        grads.append(_grads(model).clone())
        metrics.append(m)
        assert 0 not in obj._kept  # the group is over: its rollouts are dropped
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0
    mask = kept["gens"].completion_mask.float()
    assert metrics[0]["rlvr/clip_frac"] == pytest.approx(float(mask[0].sum() / mask.sum()))
    assert metrics[0]["rlvr/ratio_mean"] == pytest.approx(math.e, rel=1e-5)
    assert calls == [4, 4]  # one reward call per group, none at the reused step


class _RecordingObjective:
    """Test double: records which batch each optimizer step saw; the loss is a plain function of a weight."""

    name, wrap_ddp, updates_per_batch = "recording", True, 2

    def __init__(self):
        self.seen = []

    def setup(self, accelerator, model):
        pass

    def compute_loss(self, model, batch, step, micro):
        self.seen.append((step, micro, tuple(r["question"] for r in batch["records"])))
        return sum(p.sum() for p in model.parameters()) * 0.0, {"train/loss": 0.0}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_trainer_feeds_each_batch_for_updates_per_batch_steps(tok, tmp_path):
    from ebft.train import RecordDataset, collate_records

    records = [{"question": f"q{i}"} for i in range(8)]
    cfg = TrainConfig.from_dict({"lr": 1e-3, "epochs": 1, "batch_size": 4, "micro_batch_size": 2,
                                 "warmup_steps": 0, "schedule": "constant_with_warmup", "seed": 0})
    obj = _RecordingObjective()
    result = Trainer(cfg, tmp_path / "run", show_progress=False).fit(tiny_model(tok), tok, RecordDataset(records),
                                                                     obj, collate_fn=collate_records)
    assert result["steps"] == 4  # one epoch = 2 batches x 2 updates each
    by_step = {}
    for step, _micro, qs in obj.seen:
        by_step.setdefault(step, []).append(qs)
    assert by_step[0] == by_step[1] and by_step[2] == by_step[3] and by_step[0] != by_step[2]
    assert sorted(q for qs in by_step[0] + by_step[2] for q in qs) == sorted(r["question"] for r in records)


def _ppo_run(tok, out, stop_after_step=None):
    from ebft.train import RecordDataset, collate_records

    def letter_reward(records, texts):
        return torch.tensor([t.count("e") / max(len(t), 1) for t in texts])

    records = [{"question": q} for q in ["def", "import", "Translate", "print", "English:", "return"]]
    obj = RLVRObjective({"num_samples": 3, "temperature": 1.0, "max_new_tokens": 5, "updates_per_batch": 3,
                         "clip_eps": 0.1}, tokenizer=tok, kind="qa", reward_fn=letter_reward, seed=0)
    cfg = TrainConfig.from_dict({"lr": 3e-2, "max_steps": 6, "batch_size": 4, "micro_batch_size": 2,
                                 "warmup_steps": 0, "schedule": "constant_with_warmup", "log_every": 1,
                                 "resume_every": 100, "seed": 0})
    model = tiny_model(tok)
    result = Trainer(cfg, out, show_progress=False).fit(model, tok, RecordDataset(records), obj,
                                                        collate_fn=collate_records, stop_after_step=stop_after_step)
    return model, result


def test_resume_in_the_middle_of_a_ppo_group_matches_an_uninterrupted_run(tok, tmp_path):
    full, _ = _ppo_run(tok, tmp_path / "full")
    _, partial = _ppo_run(tok, tmp_path / "resumed", stop_after_step=4)  # mid-group: steps 3-5 share rollouts
    assert partial == {"stopped_at": 4}
    state = json.loads((tmp_path / "resumed" / "resume" / "latest.json").read_text())
    kept = torch.load(tmp_path / "resumed" / "resume" / state["state"] / "objective_state_rank0.pt",
                      weights_only=False)["kept"]
    assert sorted(kept) == [0, 1]  # both micro-batches' rollouts are kept for the group's last update
    resumed, _ = _ppo_run(tok, tmp_path / "resumed")
    for p, q in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    log = read_log(tmp_path / "full" / "train_log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert log[0]["rlvr/ratio_mean"] == pytest.approx(1.0) and log[1]["rlvr/ratio_mean"] != pytest.approx(1.0)
    # the reward of a group is the same at its three updates
    assert log[0]["train/reward"] == log[1]["train/reward"] == log[2]["train/reward"]


# ------------------------------------------------------------------ learning on the tiny code task
@pytest.mark.slow
def test_rlvr_raises_the_unit_test_reward_on_the_tiny_code_task(tmp_path):
    """SFT warm start on 16 synthetic code problems, then 25 seeded RLVR steps with sandboxed unit-test
    rewards on the same prompts (16 prompts x 4 samples, T = 1, lr 1e-3). Measured: mean reward of the
    first five steps 0.272, of the last five 0.478 (~45 s on 2 CPU cores)."""
    import random

    from ebft.data import code_qa
    from ebft.data.packing import pack_records
    from ebft.methods.sft import SFTObjective
    from ebft.modeling import build_tiny_model
    from ebft.tokenizer import train_bpe
    from ebft.train import RecordDataset, collate_records

    rng = random.Random(0)
    families = ["add_constant", "multiply_constant"]
    records = [code_qa.build_record(code_qa.FAMILIES[families[i % 2]](rng)) for i in range(16)]
    tok = train_bpe([r["question"] + r["answer"] for r in records] * 4, 400, tmp_path / "tok")
    model = build_tiny_model({**TINY_SPEC, "hidden_size": 64, "intermediate_size": 128}, tok, seed=0)

    def config(**kw):
        return TrainConfig.from_dict({"log_every": 1, "seed": 0, **kw})

    Trainer(config(lr=3e-3, max_steps=200, batch_size=4, micro_batch_size=4, warmup_steps=2, schedule="cosine"),
            tmp_path / "sft", show_progress=False).fit(model, tok, pack_records(records, tok, 64, "code_qa"),
                                                       SFTObjective())
    obj = RLVRObjective({"num_samples": 4, "temperature": 1.0, "max_new_tokens": 16}, tokenizer=tok, kind="code_qa",
                        reward_fn=make_verifiable_reward("unit_tests", timeout_s=5), seed=0)
    Trainer(config(lr=1e-3, max_steps=25, batch_size=16, micro_batch_size=16, warmup_steps=0,
                   schedule="constant_with_warmup"), tmp_path / "rl", show_progress=False
            ).fit(model, tok, RecordDataset(records), obj, collate_fn=collate_records)
    rewards = [r["rlvr/reward_mean"] for r in read_log(tmp_path / "rl" / "train_log.jsonl") if "rlvr/reward_mean" in r]
    assert len(rewards) == 25
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert 0.0 < first < 0.5, first  # the warm start passes some tests, not most
    assert last > first + 0.1, (first, last)


def test_rollouts_go_to_the_accelerators_device_not_the_first_parameters(tok, monkeypatch):
    """FSDP with CPU offload keeps parameters on the CPU: RLVR asks the accelerator where to compute."""
    import types

    obj = RLVRObjective({"num_samples": 2, "temperature": 1.0, "max_new_tokens": 3}, tokenizer=tok, kind="code_qa",
                        reward_fn=lambda recs, texts: torch.zeros(len(texts)))
    model = tiny_model(tok)
    assert obj.device(model) == torch.device("cpu")  # before setup: the model's own device
    obj.setup(types.SimpleNamespace(device=torch.device("meta")), model)
    assert obj.device(model) == torch.device("meta")
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["device"])
        raise RuntimeError("stop")

    monkeypatch.setattr("ebft.generation.generate", spy)
    with pytest.raises(RuntimeError, match="stop"):
        obj.rollouts(model, [{"question": "def f(x):\n"}], step=0, micro=0)
    assert seen == [torch.device("meta")]
