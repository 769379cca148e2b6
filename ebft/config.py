"""Typed views of the validated workflow configuration.

The Snakefile validates ``config/*.yaml`` against ``workflow/schemas/config.schema.yaml`` and then every
rule hands the relevant *resolved* section to ``ebft <command>`` as a JSON file. This module turns those
sections into dataclasses and owns the two pieces of config logic that both the DAG and the package need:

* variant resolution: ``methods.<m>.defaults`` overlaid with ``methods.<m>.variants.<v>``, plus the
  Cartesian ``sweeps`` that name their variants with a format string;
* the run grid: every (task, method, variant, seed) the DAG trains.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ebft import paths
from ebft.distributed import DistributedSettings
from ebft.evaluation import EVALUATIONS, FAMILIES
from ebft.lora import LoraSettings
from ebft.methods import METHODS, REGISTRY

VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

__all__ = ["METHODS", "ConfigError", "TrainConfig", "TrackingConfig", "Run", "EvalJob", "EvalRule", "run_grid",
           "eval_plan", "eval_rules", "task_variants", "TRAIN_TASK_KEYS", "train_task_spec", "tracking_spec",
           "data_hash"]

#: The keys of ``tasks.<task>`` a training or evaluation job reads (:attr:`ebft.methods.TrainJob.task_spec`,
#: ``ebft evaluate --task-spec``): the record kind (packing, RLVR's verifier), the chunk length, EBFT's
#: strided geometry and feature pooling. The rules get only these, so editing another key of the task
#: (``evaluations``, say) changes no job's params: it adds or drops evaluation jobs and retrains nothing;
#: ``base_model``/``feature_model`` reach the jobs as input paths instead.
TRAIN_TASK_KEYS: tuple[str, ...] = ("kind", "seq_len", "geometry", "embed_method")


class ConfigError(ValueError):
    """A configuration value is inconsistent; the message names the offending key."""


def reject_unknown_keys(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    """Raise :class:`ConfigError` naming ``where`` and the keys of ``raw`` that are not in ``known``."""
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every method (one instance per run).

    ``batch_size`` counts sequences (SFT, EBFT: packed chunks; RLVR: prompts) per optimizer step over all
    processes; ``micro_batch_size`` counts them per forward/backward on one process, so the gradient
    accumulation factor is ``batch_size / (micro_batch_size * world_size)``. ``lora``: train LoRA adapters
    (:mod:`ebft.lora`) instead of every weight; None (the default) is full fine-tuning. ``distributed``: how
    the policy is spread over the processes (:mod:`ebft.distributed`: ``ddp`` replicated, ``fsdp`` sharded
    per decoder layer); None (the default) is ``ddp``.
    """

    lr: float = 1e-5
    schedule: str = "cosine"  # cosine | constant_with_warmup | linear
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None  # overrides warmup_ratio when set
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    max_steps: int | None = None  # wins over epochs when set
    epochs: float = 1.0
    batch_size: int = 16
    micro_batch_size: int = 16
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.95)
    checkpoint_steps: tuple[int, ...] = ()
    resume_every: int = 50
    log_every: int = 10
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 | fp16 (fp32 master weights in every case)
    seq_len: int = 256
    lora: LoraSettings | None = None
    distributed: DistributedSettings | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], **extra: Any) -> TrainConfig:
        """Build from a (resolved) method section, ignoring keys that belong to the objective."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in {**raw, **extra}.items() if k in names}
        if "adam_betas" in kwargs:
            kwargs["adam_betas"] = tuple(kwargs["adam_betas"])
        if "checkpoint_steps" in kwargs:
            kwargs["checkpoint_steps"] = tuple(sorted(int(s) for s in kwargs["checkpoint_steps"]))
        if isinstance(kwargs.get("lora"), dict):
            kwargs["lora"] = LoraSettings.from_dict(kwargs["lora"])
        if isinstance(kwargs.get("distributed"), dict):
            kwargs["distributed"] = DistributedSettings.from_dict(kwargs["distributed"])
        cfg = cls(**kwargs)
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        if self.max_steps is not None and any(s > self.max_steps for s in self.checkpoint_steps):
            raise ConfigError(f"checkpoint_steps {list(self.checkpoint_steps)} exceed max_steps {self.max_steps}")
        if self.schedule not in ("cosine", "constant_with_warmup", "linear"):
            raise ConfigError(f"schedule: unknown value {self.schedule!r}")
        if self.lora is not None:
            self.lora.check()
        if self.distributed is not None:
            self.distributed.check()
            if self.distributed.sharded and self.lora is not None:
                raise ConfigError("distributed.strategy: fsdp does not train LoRA adapters (use ddp with lora)")
            if self.distributed.sharded and self.mixed_precision not in ("no", "bf16"):
                raise ConfigError(f"distributed.strategy: fsdp takes mixed_precision no or bf16, not "
                                  f"{self.mixed_precision!r}")

    @property
    def sharded(self) -> bool:
        """True when the policy is sharded with FSDP (``distributed.strategy: fsdp``)."""
        return self.distributed is not None and self.distributed.sharded


#: ``tracking.backend`` -> the Python package its accelerate tracker needs (``none``: no tracker).
TRACKING_BACKENDS: dict[str, str | None] = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb",
                                             "mlflow": "mlflow"}


@dataclass(frozen=True)
class TrackingConfig:
    """Where the trainer also sends the metrics it writes to ``train_log.jsonl`` (the top-level ``tracking``
    section, resolved by :func:`tracking_spec`): an accelerate tracker ``backend``, the ``project`` (W&B
    project, MLflow experiment, TensorBoard sub-directory) and the ``group`` runs are grouped by (W&B group,
    MLflow tag; the config's name)."""

    backend: str = "none"
    project: str = "ebft"
    group: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> TrackingConfig:
        cfg = cls(**(raw or {}))
        cfg.check()
        return cfg

    @property
    def enabled(self) -> bool:
        return self.backend != "none"

    def check(self) -> None:
        if self.backend not in TRACKING_BACKENDS:
            raise ConfigError(f"tracking.backend: unknown value {self.backend!r} (expected one of "
                              f"{', '.join(TRACKING_BACKENDS)})")

    def require_package(self) -> None:
        """Raise :class:`ConfigError` naming the package when the backend's package is not installed
        (accelerate would silently drop the tracker)."""
        package = TRACKING_BACKENDS[self.backend]
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"tracking.backend {self.backend!r} needs the Python package {package!r}, which is not "
                              f"installed (pip install {package})")


@dataclass(frozen=True)
class Run:
    """One training run of the grid."""

    task: str
    method: str
    variant: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def path(self) -> str:
        """``{task}/{method}/{variant}/seed{seed}``: the run's place below ``results/runs``."""
        return f"{self.task}/{self.method}/{self.variant}/seed{self.seed}"

    @property
    def dir(self) -> str:
        """The run directory (:data:`ebft.paths.RUN`)."""
        return paths.fill(paths.RUN, task=self.task, method=self.method, variant=self.variant, seed=self.seed)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def expand_sweep(sweep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Expand one ``sweeps`` entry into ``{variant name: overrides}``.

    ``sweep = {"name": "base_wh{whitening}_ce{ce_coef}", "grid": {"whitening": [true, false], ...},
    "overrides": {...}}``: the Cartesian product of ``grid``; booleans format as 1/0 in names.
    """
    grid = sweep["grid"]
    keys = list(grid)
    out: dict[str, dict[str, Any]] = {}
    for values in itertools.product(*(grid[k] for k in keys)):
        combo = dict(zip(keys, values, strict=True))
        try:
            name = sweep["name"].format(**{k: _fmt(v) for k, v in combo.items()})
        except KeyError as err:
            raise ConfigError(f"sweeps: name {sweep['name']!r} uses unknown grid key {err}") from err
        if name in out:
            raise ConfigError(f"sweeps: name {sweep['name']!r} does not separate grid points ({name})")
        out[name] = {**sweep.get("overrides", {}), **combo}
    return out


def method_variants(method_cfg: dict[str, Any], task: str | None = None) -> dict[str, dict[str, Any]]:
    """All variants of one method, each fully resolved.

    Precedence (later wins): ``defaults``, ``per_task[task]``, the variant's (or sweep point's) overrides.
    """
    defaults = {**method_cfg.get("defaults", {}), **(method_cfg.get("per_task", {}) or {}).get(task, {})}
    overrides: dict[str, dict[str, Any]] = dict(method_cfg.get("variants", {}) or {})
    for sweep in method_cfg.get("sweeps", []) or []:
        for name, ov in expand_sweep(sweep).items():
            if name in overrides:
                raise ConfigError(f"variant {name!r} is defined twice (variants and sweeps)")
            overrides[name] = ov
    resolved = {}
    for name, ov in overrides.items():
        if not VARIANT_NAME.match(name):
            raise ConfigError(f"variant name {name!r} must match {VARIANT_NAME.pattern}")
        resolved[name] = {**defaults, **(ov or {})}
    return resolved


def task_variants(config: dict[str, Any], method: str, task: str) -> dict[str, dict[str, Any]]:
    """Variants of ``method`` trained on ``task``: the method's own (minus those restricted to other tasks)
    plus, when ``scale.enabled``, ``{variant}.{model}`` copies with ``base_model`` set to each scale model
    (and ``distributed`` set to ``scale.distributed`` when that is given: the larger models train sharded)."""
    if method not in config.get("methods", {}):
        return {}
    own = method_variants(config["methods"][method], task)
    out = {name: p for name, p in own.items() if p.get("tasks") is None or task in p["tasks"]}
    if REGISTRY[method].rewards is not None:
        out = _verifiable(config, method, task, out)
    scale = config.get("scale") or {}
    if scale.get("enabled") and task in scale.get("tasks", []):
        for variant in scale.get("methods", {}).get(method, []):
            if variant not in own:
                raise ConfigError(f"scale.methods.{method}: no variant named {variant!r}")
            for model in scale["models"]:
                if model not in config["models"]:
                    raise ConfigError(f"scale.models: {model!r} is not a key of `models`")
                out[f"{variant}.{model}"] = {**own[variant], "base_model": model,
                                             **({"distributed": scale["distributed"]} if scale.get("distributed")
                                                else {})}
    return out


def _verifiable(config: dict[str, Any], method: str, task: str,
                variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Variants of a method that needs a verifier (``REGISTRY[method].rewards``) that can run on ``task``: none
    on a kind without a verifier (unless a variant names the task explicitly, which is an error), and each
    variant's ``reward`` must fit the kind."""
    kind = config["tasks"][task]["kind"]
    rewards = REGISTRY[method].rewards
    if kind not in rewards:
        named = [name for name, p in variants.items() if p.get("tasks") is not None]
        if named:
            raise ConfigError(f"methods.{method} variant {named[0]!r} lists task {task!r}, but its kind {kind!r} has "
                              f"no verifiable reward ({method.upper()} runs on kinds {sorted(rewards)})")
        return {}
    for name, p in variants.items():
        method_reward(method, kind, p.get("reward"), f"methods.{method} variant {name!r}", task)
    return variants


def method_reward(method: str, kind: str, reward: str | None, where: str, task: str) -> str:
    """The reward a verifier-based method uses on a task of ``kind``: ``reward`` if it fits the kind, the
    kind's default if None."""
    rewards = REGISTRY[method].rewards or {}
    if kind not in rewards:
        raise ConfigError(f"{where}: task {task!r} of kind {kind!r} has no verifiable reward ({method.upper()} "
                          f"runs on kinds {sorted(rewards)})")
    name = reward or rewards[kind][0]
    if name not in rewards[kind]:
        raise ConfigError(f"{where}: reward {name!r} does not fit task {task!r} (kind {kind!r} takes "
                          f"{' or '.join(rewards[kind])})")
    return name


def rlvr_reward(kind: str, reward: str | None, where: str, task: str) -> str:
    """:func:`method_reward` of RLVR."""
    return method_reward("rlvr", kind, reward, where, task)


def run_grid(config: dict[str, Any], methods: tuple[str, ...] = METHODS) -> list[Run]:
    """Every (task, method, variant, seed) the config trains with ``methods``, in a stable order."""
    runs = []
    for task in config["tasks"]:
        for method in methods:
            for variant, params in task_variants(config, method, task).items():
                for seed in config["seeds"]:
                    runs.append(Run(task, method, variant, int(seed), params))
    return runs


def base_models(config: dict[str, Any], task: str, runs: list[Run]) -> list[str]:
    """Model keys evaluated as ``base`` for ``task``: its base model and any scale models its runs use."""
    keys = [config["tasks"][task]["base_model"]]
    for run in runs:
        key = run.params.get("base_model")
        if run.task == task and key and key not in keys:
            keys.append(key)
    return keys


@dataclass(frozen=True)
class EvalJob:
    group: str
    task: str
    method: str  # base | a key of ebft.methods.REGISTRY
    variant: str  # the model key for base
    seed: int
    ckpt: str  # final | step<N>

    @property
    def path(self) -> str:
        return paths.fill(paths.EVAL_RESULT, task=self.task, method=self.method, variant=self.variant,
                          seed=self.seed, ckpt=self.ckpt, group=self.group)


def task_evaluations(config: dict[str, Any], task: str) -> list[str]:
    """Evaluation groups of ``task``: the universal ones, then those ``tasks.<task>.evaluations`` lists;
    ``cfm_by_length`` only when ``evaluation.cfm_by_length.gen_lens`` is set."""
    extra = [g for g in config["tasks"][task].get("evaluations", []) if not EVALUATIONS[g].universal]
    groups = [g for g in EVALUATIONS if EVALUATIONS[g].universal] + extra
    by_length = (config.get("evaluation", {}).get("cfm_by_length") or {}).get("gen_lens")
    return [g for g in groups if g != "cfm_by_length" or by_length]


def on_checkpoints(config: dict[str, Any], group: str) -> bool:
    """Whether ``group`` is evaluated on declared checkpoints (``evaluation.<group>.checkpoints``, else the
    registry's default)."""
    settings = config.get("evaluation", {}).get(group, {}) or {}
    return bool(settings.get("checkpoints", EVALUATIONS[group].checkpoints))


@dataclass(frozen=True)
class EvalRule:
    r"""One generated evaluation rule: the groups of ``family`` that one job computes for one model.

    ``ckpt`` is the rule's ``ckpt`` wildcard pattern: ``final`` (final and base models), ``step\d+``
    (declared checkpoints) or both, when a model gets the same groups either way.
    """

    name: str
    family: str
    groups: tuple[str, ...]
    ckpt: str


def eval_rules(config: dict[str, Any]) -> list[EvalRule]:
    """The evaluation rules of ``config``: per family (:data:`ebft.evaluation.FAMILIES`), one rule
    ``eval_<family>`` for the groups any task gets, or, when checkpoints get fewer of them, ``eval_<family>``
    for final models and ``eval_<family>_ckpt`` for checkpoints."""
    asked = {g for task in config["tasks"] for g in task_evaluations(config, task)}
    rules = []
    for family, members in FAMILIES.items():
        final = tuple(g for g in members if g in asked)
        ckpts = tuple(g for g in final if on_checkpoints(config, g))
        if not final:
            continue
        if ckpts == final:
            rules.append(EvalRule(f"eval_{family}", family, final, r"final|step\d+"))
            continue
        rules.append(EvalRule(f"eval_{family}", family, final, "final"))
        if ckpts:
            rules.append(EvalRule(f"eval_{family}_ckpt", family, ckpts, r"step\d+"))
    return rules


def eval_plan(config: dict[str, Any], runs: list[Run]) -> list[EvalJob]:
    """Every evaluation the config asks for: each task's groups on its base model(s) and on every run's
    final model, plus declared checkpoints for groups evaluated over training."""
    jobs = []
    for task in config["tasks"]:
        for group in task_evaluations(config, task):
            with_ckpts = on_checkpoints(config, group)
            for key in base_models(config, task, runs):
                jobs.append(EvalJob(group, task, "base", key, 0, "final"))
            for run in runs:
                if run.task != task:
                    continue
                steps = run.params.get("checkpoint_steps", []) if with_ckpts else []
                for ckpt in ["final", *[f"step{s}" for s in steps]]:
                    jobs.append(EvalJob(group, task, run.method, run.variant, run.seed, ckpt))
    return jobs


def train_task_spec(config: dict[str, Any], task: str) -> dict[str, Any]:
    """The part of ``tasks.<task>`` a training job reads (:data:`TRAIN_TASK_KEYS`, those that are set)."""
    spec = config["tasks"][task]
    return {k: spec[k] for k in TRAIN_TASK_KEYS if k in spec}


def tracking_spec(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved ``tracking`` section a training job gets (:class:`TrackingConfig` fields): ``backend``
    (default ``none``), ``project`` (default: the config's ``name``) and ``group`` (the config's ``name``)."""
    tracking = config.get("tracking") or {}
    name = config.get("name", "ebft")
    return {"backend": tracking.get("backend", "none"), "project": tracking.get("project", name), "group": name}


def data_hash(config: dict[str, Any], task: str) -> str:
    """A short SHA-256 of ``tasks.<task>.data`` (canonical JSON): a training rule's param, so that changing
    the task's data settings retrains its runs, not only ``prepare_data``."""
    blob = json.dumps(config["tasks"][task]["data"], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object written by a rule (``params`` are passed to ``ebft`` as JSON files or strings)."""
    with open(path) as fh:
        return json.load(fh)
