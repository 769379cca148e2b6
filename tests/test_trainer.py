"""The shared training loop: SFT learns, checkpoints land where declared, and resume is exact."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import torch

from ebft.config import TrainConfig
from ebft.data.packing import pack_records
from ebft.methods.sft import SFTObjective, masked_token_nll
from ebft.modeling import load_model, save_pretrained_atomic
from ebft.trainer import FINGERPRINT_PARTS, Trainer, data_identity, model_identity, read_log, state_identity
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


def test_a_run_without_checkpoints_still_writes_the_declared_directory(tmp_path):
    """Rule train_* declares ``checkpoints/`` for every run; a run that saves none leaves it empty, not absent
    (Snakemake would fail the finished job on a missing output)."""
    tok = tiny_tokenizer(tmp_path)
    trainer = Trainer(TrainConfig.from_dict({**CFG, "checkpoint_steps": [], "max_steps": 2}), tmp_path / "run",
                      show_progress=False)
    trainer.fit(tiny_model(tok, seed=1), tok, _data(tok), SFTObjective())
    assert (tmp_path / "run" / "model" / "config.json").exists()
    assert (tmp_path / "run" / "checkpoints").is_dir() and not any((tmp_path / "run" / "checkpoints").iterdir())


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


# ------------------------------------------------------------------------------------- resume identity
def _identity_run(tmp, tok, data, split, init, **kw):
    """Train from the model saved in ``init`` with the fingerprint parts ``train`` builds (data, initial weights)."""
    extra = {"data": data_identity([split]), "init_weights": {"init": model_identity(init)}}
    trainer = Trainer(TrainConfig.from_dict(CFG), tmp / "run", fingerprint_extra=extra, show_progress=False)
    return trainer.fit(load_model(init), tok, data, SFTObjective(), **kw)


@pytest.mark.parametrize("change", ["nothing", "data", "init_weights"])
def test_resume_compares_data_and_initial_weights(tmp_path, caplog, change):
    """A run stopped at step 5 resumes only on the same training split and the same initial weights; otherwise
    it starts from step 0 and says which part of the fingerprint changed."""
    tok = tiny_tokenizer(tmp_path)
    data = _data(tok)
    split, init = tmp_path / "train.jsonl", tmp_path / "init"
    split.write_text('{"answer": "a"}\n')
    save_pretrained_atomic(tiny_model(tok, seed=1), tok, init)
    assert _identity_run(tmp_path, tok, data, split, init, stop_after_step=5) == {"stopped_at": 5}
    state = json.loads((tmp_path / "run" / "resume" / "latest.json").read_text())
    assert set(state["fingerprint_parts"]) == {"config", "data", "init_weights"}
    if change == "data":
        split.write_text('{"answer": "b"}\n')
    elif change == "init_weights":
        save_pretrained_atomic(tiny_model(tok, seed=2), tok, init)
    with caplog.at_level(logging.WARNING, logger="ebft.trainer"):
        result = _identity_run(tmp_path, tok, data, split, init)
    assert result["steps"] == 8
    rows = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    resumed = {"event": "resume", "step": 5} in rows
    if change == "nothing":
        assert resumed and "resumed from step 5" in caplog.text
    else:
        assert not resumed and rows[0]["event"] == "start"
        assert f"{FINGERPRINT_PARTS[change]} changed" in caplog.text and "starting from step 0" in caplog.text
        other = "data" if change == "init_weights" else "init_weights"
        assert FINGERPRINT_PARTS[other] not in caplog.text and FINGERPRINT_PARTS["config"] not in caplog.text


def test_resume_refusal_names_a_changed_config(tmp_path, caplog):
    tok = tiny_tokenizer(tmp_path)
    data = _data(tok)
    _train(tmp_path, "run", tok, data, stop_after_step=5)
    other = TrainConfig.from_dict({**CFG, "lr": 1e-3})
    with caplog.at_level(logging.WARNING, logger="ebft.trainer"):
        Trainer(other, tmp_path / "run", show_progress=False).fit(tiny_model(tok, seed=1), tok, data, SFTObjective())
    assert "the training config changed since it was written" in caplog.text


def test_identities_of_data_and_weights(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("x\n")
    b.write_text("y\n")
    assert data_identity([a]) == hashlib.sha256(b"x\n").hexdigest() != data_identity([b])
    assert data_identity([a, b]) != data_identity([b, a])
    assert model_identity("Qwen/Qwen2.5-1.5B", "v1") == "hub:Qwen/Qwen2.5-1.5B@v1"
    assert state_identity(tiny_model(tok, seed=1)) == state_identity(tiny_model(tok, seed=1))
    assert state_identity(tiny_model(tok, seed=1)) != state_identity(tiny_model(tok, seed=2))
    with pytest.raises(FileNotFoundError, match="no model files"):
        model_identity(tmp_path)
