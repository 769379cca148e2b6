"""The one training loop shared by SFT, RLVR and EBFT (accelerate: CPU, one GPU, DDP or FSDP on many).

An optimizer step consumes ``batch_size`` sequences: ``accum = batch_size / (micro_batch_size * world)``
micro-batches per process, each passed to ``objective.compute_loss`` (which may generate rollouts inside),
gradients accumulated (no DDP all-reduce until the last micro-batch), clipped to ``max_grad_norm``, then
AdamW and the LR schedule step once. Weights stay fp32 (``mixed_precision`` only autocasts the forward).
An objective with ``updates_per_batch = E > 1`` (PPO-style RLVR) gets the same micro-batches for ``E``
consecutive optimizer steps: the data advances once per ``E`` steps and ``max_steps`` counts optimizer steps.

Files of one run (``out_dir`` is ``results/runs/{task}/{method}/{variant}/seed{seed}``)::

    out_dir/model/                 final HF checkpoint (declared output)
    out_dir/checkpoints/{name}/    HF checkpoints (declared outputs), one per name of
                                   :meth:`TrainConfig.checkpoint_names` (``step{N}``, ``frac{f}``), each
                                   with ``ebft_checkpoint.json``: its name, step and the run's total steps
    out_dir/train_log.jsonl        one JSON object per logged step (declared output); non-finite metric
                                   values are written as null (e.g. EBFT's ``ebft/cfm`` with one sample)
    out_dir/adapter/               LoRA runs only (not a declared output): the adapter alone
                                   (:func:`ebft.lora.save_adapter`); ``model/`` and the checkpoints are merged
    out_dir/tracking/              with a tracker only (not a declared output): TensorBoard event files
                                   (``tracking/<project>/``), W&B's local run files (``tracking/wandb/``)
    out_dir/resume/                NOT a declared output, so Snakemake leaves it alone on a rerun:
        latest.json                step, epoch, data position and fingerprint (with its parts) of the
                                   newest state
        state-step{N}/             accelerate state (model, optimizer, scheduler, RNG) + objective state
                                   (``objective_state_rank{r}.pt``, one per process); under FSDP the
                                   model and optimizer shards are in ``fsdp/`` (DCP), not in accelerate's
        checkpoints/{name}/        checkpoints staged here until training finishes
        train_log.jsonl            the live log, truncated to the resumed step on restart

Resume: a restarted run loads ``resume/state`` (when its fingerprint matches) and continues at
the saved step with the same data order (the sampler is a pure function of seed and epoch; the batches
already consumed in the current epoch are skipped) and the same RNG streams, so an interrupted run ends
with the same parameters as an uninterrupted one. A state written in the middle of an ``E``-step group
records the data position where the group's batches start; the resumed run draws them again. On success
the staged checkpoints and log are moved to their declared places and ``resume/`` is removed.

The fingerprint has three parts (:data:`FINGERPRINT_PARTS`), stored separately in ``latest.json`` and
compared one by one: the training ``config`` (:class:`TrainConfig` and the caller's other ``fingerprint_extra``),
the training ``data`` (SHA-256 of the training split, :func:`data_identity`) and the ``init_weights`` (the
initial model's weight, config and tokenizer files, :func:`model_identity`, or its state,
:func:`state_identity`). When one differs the run starts from step 0 and the warning names the parts that
changed.

LoRA: a ``peft`` model trains its adapters only (the optimizer gets the parameters that require gradients);
every model written is the merged one (:func:`ebft.modeling.save_pretrained_atomic`), and the resume state
holds the wrapped model's whole state dict, adapters included.

FSDP (``distributed: {strategy: fsdp}``, :mod:`ebft.distributed`), with more than one process: the policy is
sharded before the optimizer is built (the optimizer holds the fp32 shards); no DDP wrapper and no
:func:`average_gradients` (FSDP reduce-scatters the gradients); the gradient norm is clipped over the
DTensor gradients; the resume state writes the shards with ``torch.distributed.checkpoint``; checkpoints and
``model/`` are gathered full state dicts written as plain HF models by the main process.

Tracking (:class:`~ebft.config.TrackingConfig`): the accelerator is built with ``log_with`` = the backend and
``project_dir`` = ``out_dir/tracking``; ``init_trackers`` gets the flat run config (:func:`flat_config`), the
run name and the group, and every record written to ``train_log.jsonl`` is also sent to the tracker with
the same step (``accelerator.log``). A resumed run hides the TensorBoard events after the resumed step
(``purge_step``), as the log drops its records; a run that starts from step 0 starts ``tracking/`` afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from ebft.config import TrackingConfig, TrainConfig
from ebft.data.manifest import sha256_file
from ebft.distributed import (
    SHARDED_STATE_DIR,
    full_state_dict,
    is_sharded,
    load_sharded,
    plain_model,
    process_group_kwargs,
    save_sharded,
    shard_model,
)
from ebft.lora import ADAPTER_DIR, is_peft, save_adapter
from ebft.modeling import replace_dir, save_pretrained_atomic
from ebft.paths import CHECKPOINT_NAME

log = logging.getLogger(__name__)


class Objective(Protocol):
    """What a training method plugs into the loop.

    ``compute_loss`` gets the policy and one micro-batch from the collate function and returns the scalar
    loss to backpropagate plus float metrics (shared names, see the architecture doc). ``micro`` is the
    global index of the micro-batch within the optimizer step (``micro_step * world_size + rank``), so an
    objective that samples rollouts can seed them by ``(step, micro)`` and draw the same rollouts whatever
    the number of processes, and again after a resume. Objectives whose loss does not go through the
    model's ``forward`` (EBFT scores from hidden states to avoid [S, vocab] logits) set ``wrap_ddp = False``:
    the trainer then leaves the model unwrapped and all-reduces gradients itself.

    Optional: ``updates_per_batch`` (default 1): feed every micro-batch to ``compute_loss`` at that many
    consecutive optimizer steps (steps ``g*E .. g*E+E-1`` of group ``g`` see the same batches). State that an
    objective carries across steps goes in ``state_dict``; it is saved per process.
    """

    name: str
    wrap_ddp: bool

    def setup(self, accelerator: Accelerator, model: torch.nn.Module) -> None: ...

    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], step: int, micro: int
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EpochSampler(Sampler[int]):
    """Shuffles ``n`` indices with a generator seeded by ``(seed, epoch)``: the order is a pure function."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


#: The parts of the resume fingerprint and what each covers. ``data`` and ``init_weights`` are the
#: ``fingerprint_extra`` entries of those names; ``config`` is the :class:`TrainConfig` and every other entry.
FINGERPRINT_PARTS: dict[str, str] = {
    "config": "the training config",
    "data": "the training data",
    "init_weights": "the initial weights",
}

#: Files of a model directory that decide the initial weights (and the tokenization) of a run.
MODEL_FILES: tuple[str, ...] = ("*.safetensors", "*.bin", "config.json", "tokenizer.json", "tokenizer_config.json")


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: :class:`TrainConfig` fields added after resume states were first written: left out of the fingerprint
#: while at their defaults (unset), so the states of runs that do not use them stay valid.
LATER_TRAIN_FIELDS: tuple[str, ...] = ("lora", "distributed", "checkpoint_fractions", "checkpoint_log_count",
                                       "checkpoint_log_first")


def fingerprint_parts(cfg: TrainConfig, extra: dict[str, Any]) -> dict[str, str]:
    """Hash of each :data:`FINGERPRINT_PARTS` entry: what must match for a resume state to be reused."""
    rest = {k: v for k, v in extra.items() if k not in FINGERPRINT_PARTS}
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    train = {k: v for k, v in asdict(cfg).items() if not (k in LATER_TRAIN_FIELDS and v == defaults[k])}
    return {"config": _digest({"train": train, "extra": rest}),
            **{part: _digest(extra.get(part)) for part in FINGERPRINT_PARTS if part != "config"}}


def files_identity(files: list[Path]) -> str:
    """SHA-256 over the names and contents of ``files``, in the given order."""
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return h.hexdigest()


def data_identity(splits: list[str | Path]) -> str:
    """The training data's part of the fingerprint: the SHA-256 of the training split (over the splits in
    order when there are several, as in pretraining). The file is hashed, not its manifest entry, so a split
    replaced by hand counts as changed."""
    paths = [Path(p) for p in splits]
    return sha256_file(paths[0]) if len(paths) == 1 else files_identity(paths)


def model_identity(init: str | Path, revision: str | None = None) -> str:
    """The initial weights' part of the fingerprint for a run starting from ``init``: SHA-256 over the
    :data:`MODEL_FILES` of a local model directory (computed once per job, cheap for small models), or
    ``hub:<id>@<revision>`` for a hub id that is not a local directory."""
    path = Path(init)
    if not path.is_dir():
        return f"hub:{init}@{revision or 'main'}"
    files = sorted({f for pattern in MODEL_FILES for f in path.glob(pattern) if f.is_file()})
    if not files:
        raise FileNotFoundError(f"{path}: no model files ({', '.join(MODEL_FILES)}) to fingerprint")
    return files_identity(files)


def state_identity(model: torch.nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes, bytes): the initial weights' part of the
    fingerprint for a model built in memory (pretraining from scratch)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Trainer:
    """Runs one training job; see the module docstring for the loop and the files it writes."""

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: str | Path,
        *,
        fingerprint_extra: dict[str, Any] | None = None,
        accelerator: Accelerator | None = None,
        show_progress: bool = True,
        tracking: TrackingConfig | None = None,
        run_name: str | None = None,
    ) -> None:
        """``tracking``: send the logged metrics to an accelerate tracker as well (its package must be
        installed; the trainer then builds the accelerator, so ``accelerator`` must be None); ``run_name``:
        the tracker's run name (default: the run directory's name)."""
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.resume_dir = self.out_dir / "resume"
        self.fingerprint_extra = fingerprint_extra or {}
        self.fingerprint_parts = fingerprint_parts(cfg, self.fingerprint_extra)
        self.fingerprint = _digest(self.fingerprint_parts)  # the whole, also stored (and shown) in latest.json
        self.tracking = tracking or TrackingConfig()
        self.run_name = run_name or self.out_dir.name
        if self.tracking.enabled:
            self.tracking.require_package()
            if accelerator is not None:
                raise ValueError("Trainer: tracking needs the accelerator the trainer builds; pass no accelerator")
            accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=self.tracking.backend,
                                      project_dir=str(self.tracking_dir), kwargs_handlers=process_group_kwargs(cfg))
        self.accelerator = accelerator or Accelerator(mixed_precision=cfg.mixed_precision,
                                                      kwargs_handlers=process_group_kwargs(cfg))
        world = self.accelerator.num_processes
        if cfg.batch_size % (cfg.micro_batch_size * world):
            raise ValueError(
                f"batch_size {cfg.batch_size} is not divisible by micro_batch_size {cfg.micro_batch_size} "
                f"x {world} processes"
            )
        self.accum = cfg.batch_size // (cfg.micro_batch_size * world)
        self.show_progress = show_progress
        self._sharded: tuple[torch.nn.Module, torch.optim.Optimizer] | None = None  # FSDP: (model, optimizer)

    # ------------------------------------------------------------------------------------------ helpers
    def total_steps(self, num_examples: int, updates_per_batch: int = 1) -> int:
        """Optimizer steps: ``max_steps``, else ``epochs`` passes over the data (:meth:`TrainConfig.total_steps`)."""
        return self.cfg.total_steps(num_examples, updates_per_batch)

    def _scheduler(self, optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LRScheduler:
        cfg = self.cfg
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(math.ceil(cfg.warmup_ratio * total))
        if cfg.schedule == "cosine":
            return get_scheduler(
                "cosine_with_min_lr",
                optimizer,
                num_warmup_steps=warmup,
                num_training_steps=total,
                scheduler_specific_kwargs={"min_lr_rate": cfg.min_lr_ratio},
            )
        return get_scheduler(cfg.schedule, optimizer, num_warmup_steps=warmup, num_training_steps=total)

    def _log_path(self) -> Path:
        return self.resume_dir / "train_log.jsonl"

    @property
    def tracking_dir(self) -> Path:
        """Where trackers write locally (TensorBoard events, W&B offline runs): ``out_dir/tracking``."""
        return self.out_dir / "tracking"

    @contextmanager
    def _tracked(self, objective: str, resumed_at: int | None) -> Iterator[None]:
        """Start the tracker (when one is configured) for the block and end it afterwards, also when the
        block raises, so the tracker's files are flushed. ``resumed_at``: the step a resumed run continues
        from (None: from step 0, and the tracking directory starts afresh)."""
        acc, tracking = self.accelerator, self.tracking
        if not tracking.enabled:
            yield
            return
        if acc.is_main_process:
            if resumed_at is None and self.tracking_dir.exists():
                shutil.rmtree(self.tracking_dir)
            self.tracking_dir.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, dict[str, Any]] = {
            "tensorboard": {"purge_step": resumed_at + 1} if resumed_at else {},
            "wandb": {"name": self.run_name, "group": tracking.group, "dir": str(self.tracking_dir)},
            "mlflow": {"run_name": self.run_name, **({"tags": {"group": tracking.group}} if tracking.group else {})},
        }
        config = flat_config({"run": self.run_name, "objective": objective, "train": asdict(self.cfg),
                              **self.fingerprint_extra})
        acc.init_trackers(tracking.project, config=config, init_kwargs={tracking.backend: kwargs[tracking.backend]})
        try:
            yield
        finally:
            acc.end_training()

    def _track(self, record: dict[str, Any]) -> None:
        """Send one ``train_log.jsonl`` record to the tracker, at its step; values the log writes as null
        (non-finite) are left out."""
        if self.tracking.enabled:
            values = {k: v for k, v in finite_or_null(record).items() if k != "step" and v is not None}
            self.accelerator.log(values, step=record["step"])

    def _write_log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self._log_path(), "a") as fh:
                fh.write(json.dumps(finite_or_null(record), allow_nan=False) + "\n")

    def _truncate_log(self, step: int) -> None:
        path = self._log_path()
        if not path.exists() or not self.accelerator.is_main_process:
            return
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)

    def _save_state(self, step: int, epoch: int, consumed: int, objective: Objective) -> None:
        """Write ``resume/state-step{N}`` then point ``resume/latest.json`` at it (one atomic rename), so a
        kill at any moment leaves a complete state to resume from; older states are removed afterwards."""
        acc = self.accelerator
        acc.wait_for_everyone()
        target = self.resume_dir / f"state-step{step}"
        if acc.is_main_process and target.exists():
            shutil.rmtree(target)
        acc.wait_for_everyone()
        acc.save_state(str(target))
        if self._sharded is not None:  # FSDP: the model and optimizer shards, one file per process
            save_sharded(*self._sharded, target / SHARDED_STATE_DIR)
        torch.save(objective.state_dict(), target / f"objective_state_rank{acc.process_index}.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            meta = {
                "step": step,
                "epoch": epoch,
                "consumed_in_epoch": consumed,
                "state": target.name,
                "fingerprint": self.fingerprint,
                "fingerprint_parts": self.fingerprint_parts,
                "objective": objective.name,
                "time": time.time(),
            }
            tmp = self.resume_dir / "latest.json.tmp"
            tmp.write_text(json.dumps(meta, indent=1))
            os.replace(tmp, self.resume_dir / "latest.json")
            for old in self.resume_dir.glob("state-step*"):
                if old.name != target.name:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _try_resume(self) -> dict[str, Any] | None:
        meta_path = self.resume_dir / "latest.json"
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        reason = self._resume_refusal(meta)
        if reason is not None:
            log.warning("resume state in %s not reused: %s; starting from step 0", self.resume_dir, reason)
            if self.accelerator.is_main_process:
                shutil.rmtree(self.resume_dir)
                self.resume_dir.mkdir(parents=True)
            self.accelerator.wait_for_everyone()
            return None
        return meta

    def _resume_refusal(self, meta: dict[str, Any]) -> str | None:
        """Why the state ``latest.json`` (``meta``) points at cannot be resumed, naming the fingerprint parts
        that changed since it was written; None when it can."""
        stored = meta.get("fingerprint_parts")
        if not isinstance(stored, dict):
            return "it was written without fingerprint parts (by an older version)"
        changed = [FINGERPRINT_PARTS[p] for p in FINGERPRINT_PARTS if stored.get(p) != self.fingerprint_parts[p]]
        if changed:
            return f"{' and '.join(changed)} changed since it was written"
        if not (self.resume_dir / meta["state"]).is_dir():
            return f"its state directory {meta['state']} is missing"
        return None

    # ---------------------------------------------------------------------------------------------- fit
    def fit(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None,
        dataset: Dataset,
        objective: Objective,
        *,
        collate_fn: Any = None,
        stop_after_step: int | None = None,
    ) -> dict[str, Any]:
        """Train ``model`` with ``objective`` on ``dataset``; returns a summary dict.

        ``stop_after_step`` ends the process-equivalent of a crash right after that step's resume state is
        written (tests use it to check that resuming reproduces an uninterrupted run).
        """
        cfg, acc = self.cfg, self.accelerator
        set_seed(cfg.seed)
        self.resume_dir.mkdir(parents=True, exist_ok=True)
        reuse = int(getattr(objective, "updates_per_batch", 1))
        if reuse < 1:
            raise ValueError(f"{objective.name}: updates_per_batch must be >= 1, got {reuse}")
        if len(dataset) < cfg.batch_size:
            raise ValueError(f"{len(dataset)} training examples are fewer than one batch of {cfg.batch_size}")
        total = self.total_steps(len(dataset), reuse)
        saves: dict[int, list[str]] = {}  # optimizer step -> the checkpoint names saved after it
        for name, at in cfg.checkpoint_plan(total).items():
            saves.setdefault(at, []).append(name)

        shard = cfg.sharded and acc.num_processes > 1
        if shard:  # before the optimizer: it must hold the sharded parameters
            shard_model(model, cfg.distributed, cfg.mixed_precision, acc.device.type)
        model.train()
        trained = [p for p in model.parameters() if p.requires_grad]  # a LoRA model: its adapters
        decay = [p for p in trained if p.ndim >= 2]
        no_decay = [p for p in trained if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=cfg.adam_betas,
        )
        scheduler = self._scheduler(optimizer, total)
        sampler = EpochSampler(len(dataset), cfg.seed)
        loader = DataLoader(
            dataset, batch_size=cfg.micro_batch_size, sampler=sampler, collate_fn=collate_fn, drop_last=True
        )
        # FSDP reduce-scatters gradients itself: no DDP wrapper, no own all-reduce; the model and optimizer
        # stay out of accelerate (its state would hold the main process's shards only), the resume state
        # writes them with torch.distributed.checkpoint
        wrap = getattr(objective, "wrap_ddp", True) and not shard
        if shard:
            loader = acc.prepare(loader)
            self._sharded = (model, optimizer)
        else:
            model = acc.prepare_model(model, evaluation_mode=not wrap)
            optimizer, loader = acc.prepare(optimizer, loader)
        acc.register_for_checkpointing(scheduler)
        objective.setup(acc, model)

        step, epoch, consumed = 0, 0, 0
        meta = self._try_resume()
        if meta is not None:
            state_dir = self.resume_dir / meta["state"]
            acc.load_state(str(state_dir))
            if self._sharded is not None:
                load_sharded(*self._sharded, state_dir / SHARDED_STATE_DIR)
            step, epoch, consumed = meta["step"], meta["epoch"], meta["consumed_in_epoch"]
            objective.load_state_dict(
                torch.load(state_dir / f"objective_state_rank{acc.process_index}.pt", weights_only=False))
            self._truncate_log(step)
            log.warning("resumed from step %d (epoch %d, %d micro-batches into it) in %s", step, epoch, consumed,
                        self.resume_dir)
            self._write_log({"event": "resume", "step": step})
        else:
            if acc.is_main_process and self._log_path().exists():
                self._log_path().unlink()
            self._write_log({"event": "start", "step": 0, "total_steps": total, "objective": objective.name})

        def batches() -> Iterator[dict[str, Any]]:
            nonlocal epoch, consumed
            while True:
                loader.set_epoch(epoch)
                it = acc.skip_first_batches(loader, consumed) if consumed else loader
                for batch in it:
                    consumed += 1
                    yield batch
                epoch, consumed = epoch + 1, 0

        data = batches()
        # the micro-batches of the current E-step group and the data position where they start
        group_start = (epoch, consumed)
        held = [next(data) for _ in range(self.accum)] if step % reuse else []
        with self._tracked(objective.name, step if meta is not None else None):
            start_step, t0, tokens_seen = step, time.time(), 0
            bar = tqdm(total=total, initial=step, disable=not (self.show_progress and acc.is_main_process),
                       desc=f"train {objective.name}", dynamic_ncols=True)
            while step < total:
                sums: dict[str, float] = {}
                if step % reuse == 0:
                    group_start = (epoch, consumed)
                    held = [next(data) for _ in range(self.accum)]
                for micro, batch in enumerate(held):
                    sync = micro == self.accum - 1
                    global_micro = micro * acc.num_processes + acc.process_index
                    torch.manual_seed(micro_seed(cfg.seed, step, global_micro))  # dropout: exact on resume
                    with nullcontext() if (sync or not wrap) else acc.no_sync(model), acc.autocast():
                        loss, metrics = objective.compute_loss(model, batch, step, global_micro)
                    acc.backward(loss / self.accum)
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + float(v) / self.accum
                    if "input_ids" in batch:
                        tokens_seen += int(batch["input_ids"].numel())
                if not wrap and acc.num_processes > 1 and not shard:
                    average_gradients(model, acc.num_processes)
                if shard:  # DTensor gradients: the norm is reduced over the shards
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                else:
                    grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)

                if step % cfg.log_every == 0 or step == total or step == start_step + 1:
                    reduced = {k: acc.reduce(torch.tensor(v, device=acc.device), "mean").item()
                               for k, v in sums.items()}
                    elapsed = time.time() - t0
                    record = {"step": step, "epoch": epoch, **reduced, "train/grad_norm": float(grad_norm),
                              "train/lr": lr, "time/elapsed_s": round(elapsed, 3),
                              "time/tokens_per_s": round(tokens_seen * acc.num_processes / max(elapsed, 1e-9), 1)}
                    self._write_log(record)
                    self._track(record)
                    bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in reduced.items() if k == "train/loss"})
                for name in saves.get(step, []):
                    self._save_checkpoint(model, tokenizer, self.resume_dir / "checkpoints" / name,
                                          {"name": name, "step": step, "total_steps": total})
                due = step % cfg.resume_every == 0 or step in saves or step == stop_after_step
                if due and step < total:
                    self._save_state(step, *((epoch, consumed) if step % reuse == 0 else group_start), objective)
                if stop_after_step is not None and step >= stop_after_step and step < total:
                    bar.close()
                    return {"stopped_at": step}
            bar.close()
            return self._finish(model, tokenizer, total, time.time() - t0)

    # ------------------------------------------------------------------------------------------ outputs
    def _save_checkpoint(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None, path: Path,
                         meta: dict[str, Any] | None = None) -> None:
        """Write the model (+ tokenizer) to ``path`` as a plain HF model; ``meta`` (a checkpoint's name, step and
        the run's total steps) goes into it as :data:`ebft.paths.CHECKPOINT_META`."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if is_sharded(model):  # gathered on every process, written by the main one as a plain HF model
            state = full_state_dict(model)
            if acc.is_main_process:
                save_pretrained_atomic(plain_model(model, state), tokenizer, path, meta)
        elif acc.is_main_process:
            save_pretrained_atomic(acc.unwrap_model(model), tokenizer, path, meta)
        acc.wait_for_everyone()

    def _finish(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None, total: int,
                seconds: float) -> dict[str, Any]:
        acc = self.accelerator
        self._save_checkpoint(model, tokenizer, self.out_dir / "model")  # merged, for a LoRA model
        if acc.is_main_process:
            unwrapped = acc.unwrap_model(model)
            if is_peft(unwrapped):
                save_adapter(unwrapped, self.out_dir / ADAPTER_DIR)
            self._write_log({"event": "end", "step": total})
            (self.out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)  # declared even when empty
            staged_dirs = (self.resume_dir / "checkpoints").glob("*")
            for staged in sorted(d for d in staged_dirs if re.fullmatch(CHECKPOINT_NAME, d.name)):
                replace_dir(staged, self.out_dir / "checkpoints" / staged.name)
            tmp = self.out_dir / "train_log.jsonl.tmp"
            shutil.copyfile(self._log_path(), tmp)
            os.replace(tmp, self.out_dir / "train_log.jsonl")
            shutil.rmtree(self.resume_dir, ignore_errors=True)
        acc.wait_for_everyone()
        return {"steps": total, "seconds": seconds}


def micro_seed(seed: int, step: int, micro: int) -> int:
    """Seed of torch's global RNG for one micro-batch (set before ``compute_loss``): a pure function of (run
    seed, optimizer step, global micro-batch index), so what draws from it in the loss forward (LoRA or model
    dropout) is the same after a resume and for any number of processes. Rollouts draw from their own
    generators (:func:`ebft.methods.base.rollout_seed`); this stream is independent of theirs."""
    digest = hashlib.sha256(f"micro:{seed}:{step}:{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def average_gradients(model: torch.nn.Module, world: int) -> None:
    """All-reduce (mean) the gradients of an unwrapped model over processes, bucketed into one flat tensor."""
    from torch.distributed import all_reduce

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def flat_config(value: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested run description as one flat mapping for a tracker's run config: nested keys joined by
    ``/`` (``train/lr``, ``spec/lora/r``), lists and tuples as JSON text, None as ``"none"``; scalars stay
    (TensorBoard's hparams, W&B and MLflow all take such values)."""
    if isinstance(value, dict):
        flat: dict[str, bool | int | float | str] = {}
        for key, item in value.items():
            flat.update(flat_config(item, f"{prefix}/{key}" if prefix else str(key)))
        return flat
    if isinstance(value, bool | int | float | str):
        return {prefix: value}
    if value is None:
        return {prefix: "none"}
    if isinstance(value, list | tuple):
        return {prefix: json.dumps(value, default=str)}
    return {prefix: str(value)}


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf), also inside dicts and lists, as ``None``, so that
    ``train_log.jsonl`` stays valid JSON (``json.dumps`` would write the bare token ``NaN``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The step records of a ``train_log.jsonl`` (events such as start/resume/end are skipped); a metric
    that was not finite reads as ``None``."""
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [r for r in rows if "event" not in r]
