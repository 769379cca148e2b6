"""Experiment tracking through accelerate's trackers: the tracker gets exactly what train_log.jsonl gets."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ebft.cli import build_parser
from ebft.config import ConfigError, TrackingConfig, TrainConfig, tracking_spec
from ebft.data.packing import pack_records
from ebft.methods import TrainJob
from ebft.methods.sft import SFTObjective
from ebft.train import run_name, train
from ebft.trainer import Trainer, flat_config, read_log
from tests.helpers import TEXTS, tiny_model, tiny_tokenizer

CFG = dict(lr=3e-3, warmup_steps=2, max_steps=8, batch_size=4, micro_batch_size=2, resume_every=3, log_every=1,
           seed=3)
TENSORBOARD = TrackingConfig(backend="tensorboard", project="tiny", group="tiny")


def _fit(tmp: Path, tok, **kw) -> dict:
    data = pack_records([{"question": "", "answer": t} for t in TEXTS], tok, 32, "unstructured")
    trainer = Trainer(TrainConfig.from_dict(CFG), tmp / "run", tracking=TENSORBOARD, run_name="t/sft/default/seed3",
                      fingerprint_extra={"method": "sft", "spec": {"lr": 3e-3, "lora": None}}, show_progress=False)
    return trainer.fit(tiny_model(tok, seed=1), tok, data, SFTObjective(), **kw)


def _scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run / "tracking" / "tiny"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _logged(run: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_log(run / "train_log.jsonl")]


def _assert_same(run: Path, key: str) -> None:
    tracked, logged = _scalars(run, key), _logged(run, key)
    assert [s for s, _ in tracked] == [s for s, _ in logged], key
    assert [v for _, v in tracked] == pytest.approx([v for _, v in logged], rel=1e-6), key  # float32 in events


def test_tensorboard_scalars_equal_the_train_log(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    _fit(tmp_path, tok)
    run = tmp_path / "run"
    assert [s for s, _ in _logged(run, "train/loss")] == list(range(1, 9))
    for key in ("train/loss", "train/lr", "train/grad_norm"):
        _assert_same(run, key)
    assert (run / "model" / "config.json").exists()


def test_a_resumed_run_hides_the_events_of_the_steps_it_redoes(tmp_path):
    """Stopped after step 5, continued to a stop after step 7, then resumed from the step-5 state again (a
    crash after step 7 whose newest state is step 5): the events of steps 6-7 of the lost attempt are purged
    like their log records, so the tracker still equals the log."""
    tok = tiny_tokenizer(tmp_path)
    run = tmp_path / "run"
    assert _fit(tmp_path, tok, stop_after_step=5) == {"stopped_at": 5}
    shutil.copytree(run / "resume", tmp_path / "state5")
    assert _fit(tmp_path, tok, stop_after_step=7) == {"stopped_at": 7}
    shutil.rmtree(run / "resume")
    shutil.copytree(tmp_path / "state5", run / "resume")
    assert _fit(tmp_path, tok)["steps"] == 8
    _assert_same(run, "train/loss")


def test_a_missing_tracker_package_fails_at_start_naming_it(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"tracking.backend 'wandb' needs the Python package 'wandb'.*pip install"):
        Trainer(TrainConfig.from_dict(CFG), tmp_path / "run", tracking=TrackingConfig(backend="wandb"))
    job = TrainJob(task="t", task_spec={"kind": "code_qa", "seq_len": 32}, init="no/such-model", seed=0)
    with pytest.raises(ConfigError, match="'wandb'"):  # before the data or the model is read
        train("sft", job, {"lr": 1e-3}, tmp_path / "no-data", tmp_path / "run", tracking={"backend": "wandb"})
    with pytest.raises(ConfigError, match="tracking.backend: unknown value 'neptune'"):
        TrackingConfig.from_dict({"backend": "neptune"})


def test_tracking_settings_reach_the_job():
    assert tracking_spec({"name": "tiny-default"}) == {"backend": "none", "project": "tiny-default",
                                                       "group": "tiny-default"}
    assert tracking_spec({"name": "paper", "tracking": {"backend": "wandb", "project": "ebft"}}) == {
        "backend": "wandb", "project": "ebft", "group": "paper"}
    args = build_parser().parse_args(
        ["train", "--method", "sft", "--task", "code_qa", "--task-spec", '{"kind": "code_qa", "seq_len": 8}',
         "--spec", "{}", "--seed", "1", "--init", "m", "--data", "d", "--out", "o", "--variant", "default",
         "--tracking", '{"backend": "tensorboard", "project": "p", "group": "g"}'])
    assert TrackingConfig.from_dict(args.tracking) == TrackingConfig("tensorboard", "p", "g")
    job = TrainJob(task="code_qa", task_spec={}, init="m", seed=1, variant=args.variant)
    assert run_name("sft", job) == "code_qa/sft/default/seed1"
    assert not TrackingConfig().enabled


def test_flat_config():
    flat = flat_config({"train": {"lr": 1e-3, "adam_betas": (0.9, 0.95), "lora": None},
                        "spec": {"lora": {"r": 4, "target_modules": ["q_proj"]}}, "run": "a/b"})
    assert flat == {"train/lr": 1e-3, "train/adam_betas": "[0.9, 0.95]", "train/lora": "none",
                    "spec/lora/r": 4, "spec/lora/target_modules": '["q_proj"]', "run": "a/b"}
