"""One training job: the base model's pretraining (tiny default) or a fine-tuning run of a registered method.

``ebft train`` and ``ebft pretrain`` call these functions; everything that differs between methods comes from
the method registry (:mod:`ebft.methods`): the typed config, the objective and what a training item is.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ebft.config import TrackingConfig, TrainConfig
from ebft.data.jsonl import interleave, read_split
from ebft.data.manifest import manifest_kind, verify_split
from ebft.methods import TrainJob, get_method

log = logging.getLogger(__name__)


class RecordDataset:
    """Map-style dataset of JSON records (the prompts of methods whose ``inputs`` are ``prompts``)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.records[i]


def collate_records(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A micro-batch of prompts: ``{"records": [record, ...]}``."""
    return {"records": rows}


def read_train_split(path: str | Path, kind: str) -> list[dict[str, Any]]:
    """A task's training split: every record valid for ``kind`` (errors name ``file:line`` and the key), at
    least one record, and the file's SHA-256 as ``prepare-data`` recorded it in the manifest next to it."""
    rows = read_split(path, kind)
    verify_split(path)
    return rows


def read_corpora(data: list[str]) -> list[dict[str, Any]]:
    """The records of several tasks' train splits, interleaved (a prefix samples every corpus); each split is
    checked by :func:`read_train_split` against its task's kind from its manifest (``unstructured``, the
    common keys, when it has none)."""
    return interleave([read_train_split(p, manifest_kind(p) or "unstructured") for p in data])


def train_tokenizer(data: list[str], vocab_size: int, max_chars: int, out: str | Path) -> int:
    """Train the tiny default's byte-level BPE on question + answer texts of ``data`` (interleaved, so the
    character budget samples every corpus); returns the vocabulary size."""
    from ebft.tokenizer import limited, train_bpe

    texts = (r["question"] + r["answer"] for r in read_corpora(data))
    return len(train_bpe(limited(texts, max_chars), vocab_size, out))


def pretrain(tokenizer: str | Path, data: list[str], spec: Mapping[str, Any], out: str | Path) -> dict[str, Any]:
    """Pretrain a tiny causal LM from scratch on unstructured packing of every corpus (``models.<name>``
    section ``spec``: architecture and ``pretrain`` settings); writes ``<out>/model`` and the training log."""
    from ebft.data.packing import pack_records
    from ebft.methods.sft import SFTObjective
    from ebft.modeling import build_tiny_model, count_parameters, load_tokenizer
    from ebft.trainer import Trainer, data_identity, model_identity, state_identity

    records = read_corpora(data)
    tok = load_tokenizer(tokenizer)
    pt = spec["pretrain"]
    packed = pack_records(records, tok, pt["seq_len"], "unstructured")
    model = build_tiny_model(dict(spec), tok, seed=pt.get("seed", 0))
    log.info("pretraining %s (%d parameters) on %d chunks x %d tokens", spec.get("architecture"),
             count_parameters(model), len(packed), pt["seq_len"])
    cfg = TrainConfig.from_dict({**pt, "micro_batch_size": pt.get("micro_batch_size", pt["batch_size"])})
    extra = {"spec": dict(spec), "data": data_identity(data),
             "init_weights": {"model": state_identity(model), "tokenizer": model_identity(tokenizer)}}
    return Trainer(cfg, out, fingerprint_extra=extra).fit(model, tok, packed, SFTObjective())


def train(method: str, job: TrainJob, spec: Mapping[str, Any], data_dir: str | Path, out: str | Path,
          tracking: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune ``job.init`` with ``method`` on ``<data_dir>/train.jsonl``; ``spec`` is the resolved variant
    (optimisation keys for :class:`TrainConfig`, the method's keys for its typed config). Resumes from
    ``<out>/resume`` when its fingerprint matches; returns the trainer's summary.

    With ``lora`` in ``spec`` the policy is wrapped with LoRA adapters (:mod:`ebft.lora`) after the objective
    is built, so the frozen feature network and KL reference are the initial model without adapters;
    ``<out>/model`` is the merged model and ``<out>/adapter`` the adapter. ``tracking``: the resolved
    ``tracking`` section (:class:`TrackingConfig`); the tracker's run is named :func:`run_name`.
    """
    from ebft.data.packing import pack_records
    from ebft.modeling import count_parameters, load_model, load_tokenizer
    from ebft.slurm import check_visible_gpus, expected_gpus
    from ebft.trainer import Trainer, data_identity, model_identity

    check_visible_gpus(expected_gpus())  # a Slurm job given N GPUs must see N (plugin issues #316, #459)
    entry = get_method(method)
    kind = job.task_spec["kind"]
    if not entry.trains_on(kind):
        raise ValueError(f"{method} needs a verifiable reward; task {job.task} of kind {kind!r} has none")
    cfg = TrainConfig.from_dict(dict(spec), seed=job.seed, seq_len=job.task_spec["seq_len"])
    if cfg.mixed_precision == "bf16":  # frozen networks only run forwards under bf16 autocast: half the memory
        job = dataclasses.replace(job, frozen_dtype="bfloat16")
    method_cfg = entry.config(spec, f"methods.{method}")
    tracker = TrackingConfig.from_dict(dict(tracking or {}))
    tracker.require_package()  # before the data and the model: a missing package fails in seconds
    train_rows = read_train_split(Path(data_dir) / "train.jsonl", kind)  # before the model: fails in seconds
    tok = load_tokenizer(job.init)
    model = load_model(job.init)
    objective = entry.build(method_cfg, job)
    if cfg.lora is not None:
        from ebft.lora import wrap

        model = wrap(model, cfg.lora)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("LoRA r=%d on %s: %d of %d parameters train", cfg.lora.r, cfg.lora.target_modules, trainable,
                 count_parameters(model))
    collate = None
    if entry.inputs == "prompts":
        dataset, collate = RecordDataset(train_rows), collate_records
    else:
        dataset = pack_records(train_rows, tok, cfg.seq_len, kind)
    log.info("training %s on %s: %d training items", method, job.task, len(dataset))
    extra = {"method": method, "task": dict(job.task_spec), "init": str(job.init), "spec": dict(spec),
             "feature_model": str(job.feature_model), "data": data_identity([Path(data_dir) / "train.jsonl"]),
             "init_weights": {"init": model_identity(job.init)}}
    if job.feature_model is not None and str(job.feature_model) != str(job.init):
        extra["init_weights"]["feature_model"] = model_identity(job.feature_model)
    trainer = Trainer(cfg, out, fingerprint_extra=extra, tracking=tracker, run_name=run_name(method, job))
    summary = trainer.fit(model, tok, dataset, objective, collate_fn=collate)
    log.info("done: %s", summary)
    return summary


def run_name(method: str, job: TrainJob) -> str:
    """``{task}/{method}/{variant}/seed{seed}`` (the run's path below ``results/runs``; without the variant
    when the job has none): the tracker's name of the run."""
    parts = [job.task, method, *([job.variant] if job.variant else []), f"seed{job.seed}"]
    return "/".join(parts)
