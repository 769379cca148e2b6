"""RLVR: generation helpers, verifiable rewards, advantages, zero-reward-spread gradients, and learning."""

from __future__ import annotations

import pytest
import torch

from ebft.config import TrainConfig
from ebft.generation import completion_logprobs, generate, truncate_completion
from ebft.objectives import RLVRObjective
from ebft.rewards import TranslationMetricReward, UnitTestReward, make_verifiable_reward
from ebft.trainer import Trainer, read_log
from tests.helpers import tiny_model, tiny_tokenizer

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
    from ebft.cli import RecordDataset, collate_records

    obj = RLVRObjective({"num_samples": 6, "temperature": 1.0, "max_new_tokens": 8}, tokenizer=tok,
                        kind="qa", reward_fn=letter_reward, seed=0)
    cfg = TrainConfig.from_dict({"lr": 3e-2, "max_steps": 25, "batch_size": 6, "micro_batch_size": 6,
                                 "warmup_steps": 0, "schedule": "constant_with_warmup", "log_every": 1, "seed": 0})
    Trainer(cfg, tmp_path / "run", show_progress=False).fit(tiny_model(tok), tok, RecordDataset(records), obj,
                                                            collate_fn=collate_records)
    rewards = [r["rlvr/reward_mean"] for r in read_log(tmp_path / "run" / "train_log.jsonl")]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.1, (first, last)
