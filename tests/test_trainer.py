"""The shared training loop: SFT learns, checkpoints land where declared, and resume is exact."""

from __future__ import annotations

import json

import pytest
import torch

from ebft.config import TrainConfig
from ebft.data.packing import pack_records
from ebft.methods.sft import SFTObjective, masked_token_nll
from ebft.modeling import load_model
from ebft.trainer import Trainer, read_log
from tests.helpers import TEXTS, tiny_model, tiny_tokenizer

CFG = dict(lr=3e-3, schedule="cosine", warmup_steps=2, max_steps=8, batch_size=4, micro_batch_size=2,
           checkpoint_steps=[4], resume_every=3, log_every=1, seed=3, seq_len=32)


def _data(tok):
    records = [{"question": "", "answer": t} for t in TEXTS]
    return pack_records(records, tok, 32, "unstructured")


def _train(tmp, out, tok, data, **kw):
    model = tiny_model(tok, seed=1)
    trainer = Trainer(TrainConfig.from_dict(CFG), tmp / out, show_progress=False)
    result = trainer.fit(model, tok, data, SFTObjective(), **kw)
    return model, result


def test_sft_reduces_loss_and_writes_outputs(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    data = _data(tok)
    with torch.no_grad():
        before, _ = masked_token_nll(tiny_model(tok, seed=1), data.input_ids, data.loss_mask)
    model, result = _train(tmp_path, "run", tok, data)
    with torch.no_grad():
        after, _ = masked_token_nll(model, data.input_ids, data.loss_mask)
    assert result["steps"] == 8
    assert float(after) < float(before) - 0.5
    run = tmp_path / "run"
    assert (run / "model" / "config.json").exists() and (run / "checkpoints" / "step4" / "config.json").exists()
    assert not (run / "resume").exists()
    steps = [r["step"] for r in read_log(run / "train_log.jsonl")]
    assert steps == list(range(1, 9))
    reloaded = load_model(run / "model")
    for p, q in zip(model.parameters(), reloaded.parameters(), strict=True):
        assert torch.equal(p.detach(), q)


def test_resume_matches_uninterrupted_run(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    data = _data(tok)
    full, _ = _train(tmp_path, "full", tok, data)
    # "crash" after step 5: the last resume state is step 5 (written because stop_after_step asks for it)
    _, partial = _train(tmp_path, "resumed", tok, data, stop_after_step=5)
    assert partial == {"stopped_at": 5}
    state = json.loads((tmp_path / "resumed" / "resume" / "latest.json").read_text())
    assert state["step"] == 5
    resumed, result = _train(tmp_path, "resumed", tok, data)
    assert result["steps"] == 8
    for p, q in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    rows = [json.loads(x) for x in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert {"event": "resume", "step": 5} in rows
    assert [r["step"] for r in rows if "event" not in r] == list(range(1, 9))
    full_log = read_log(tmp_path / "full" / "train_log.jsonl")
    resumed_log = read_log(tmp_path / "resumed" / "train_log.jsonl")
    assert [r["train/loss"] for r in full_log] == [r["train/loss"] for r in resumed_log]


def test_resume_state_from_another_config_is_discarded(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    data = _data(tok)
    _train(tmp_path, "run", tok, data, stop_after_step=5)
    model = tiny_model(tok, seed=1)
    other = TrainConfig.from_dict({**CFG, "lr": 1e-3})
    Trainer(other, tmp_path / "run", show_progress=False).fit(model, tok, data, SFTObjective())
    rows = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert rows[0]["event"] == "start" and not any(r.get("event") == "resume" for r in rows)


def test_fewer_examples_than_one_batch_is_an_error_not_a_hang(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    data = _data(tok)
    cfg = TrainConfig.from_dict({**CFG, "batch_size": len(data) + 2, "micro_batch_size": len(data) + 2})
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(cfg, tmp_path / "run", show_progress=False).fit(tiny_model(tok), tok, data, SFTObjective())
