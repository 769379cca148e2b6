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
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ebft import paths
from ebft.distributed import DistributedSettings
from ebft.evaluation import EVALUATIONS
from ebft.lora import LoraSettings
from ebft.methods import METHODS, REGISTRY

VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

__all__ = ["METHODS", "ConfigError", "TrainConfig", "TrackingConfig", "Run", "EvalJob", "EvalRule", "run_grid",
           "eval_plan", "eval_rules", "task_variants", "TRAIN_TASK_KEYS", "train_task_spec", "tracking_spec",
           "data_hash", "plan_spec", "plan_models", "checkpoint_names", "log_spaced_fractions"]

#: The keys of ``tasks.<task>`` a training or evaluation job reads (:attr:`ebft.methods.TrainJob.task_spec`,
#: ``ebft evaluate --task-spec``): the record kind (packing, RLVR's verifier), the chunk length, EBFT's
#: strided geometry and feature pooling. The rules get only these, so editing another key of the task
#: (``evaluations``, say) changes no job's params: it adds or drops evaluation jobs and retrains nothing;
#: ``base_model``/``feature_model`` reach the jobs as input paths instead.
TRAIN_TASK_KEYS: tuple[str, ...] = ("kind", "seq_len", "geometry", "embed_method")


#: ``checkpoint_log_first`` default: the first of the log-spaced checkpoints at 10^-2.1 of the run (about
#: 0.8 %), as the reference implementation spaces its checkpoints.
LOG_FIRST_DEFAULT = 0.00794
#: the smallest fraction of a run a checkpoint may be given at (its name stays a plain decimal)
MIN_FRACTION = 1e-4


def log_spaced_fractions(count: int, first: float = LOG_FIRST_DEFAULT) -> list[float]:
    """``count`` fractions of a run spaced evenly in log scale from ``first`` to 1 (the final model), each
    rounded to 3 significant digits so that it names a checkpoint exactly: ``first ** (1 - i / (count - 1))``
    for ``i = 0 .. count-1``. ``count = 0`` gives none."""
    if count == 0:
        return []
    return [float(f"{first ** (1 - i / (count - 1)):.3g}") for i in range(count)]


def fraction_name(fraction: float) -> str:
    """The checkpoint name of a fraction of the run: ``frac0.25`` (up to 6 significant digits)."""
    return f"frac{fraction:.6g}"


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
    checkpoint_fractions: tuple[float, ...] = ()
    checkpoint_log_count: int = 0
    checkpoint_log_first: float = LOG_FIRST_DEFAULT
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
        if "checkpoint_fractions" in kwargs:
            kwargs["checkpoint_fractions"] = tuple(sorted(float(f) for f in kwargs["checkpoint_fractions"]))
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
        if any(not MIN_FRACTION <= f < 1 for f in self.checkpoint_fractions):
            raise ConfigError(f"checkpoint_fractions {list(self.checkpoint_fractions)}: each must lie in "
                              f"[{MIN_FRACTION}, 1) (1 is the final model, evaluated anyway)")
        if self.checkpoint_log_count < 0 or self.checkpoint_log_count == 1:
            raise ConfigError(f"checkpoint_log_count {self.checkpoint_log_count}: 0 (none) or at least 2 (the "
                              f"last of the points is the final model)")
        if not MIN_FRACTION <= self.checkpoint_log_first < 1:
            raise ConfigError(f"checkpoint_log_first {self.checkpoint_log_first} must lie in [{MIN_FRACTION}, 1)")
        names = [fraction_name(f) for f in (*self.checkpoint_fractions, *log_spaced_fractions(
            self.checkpoint_log_count, self.checkpoint_log_first)[:-1])]
        if len(set(names)) != len(names):
            raise ConfigError(f"checkpoint_fractions and checkpoint_log_count give the same checkpoint twice: "
                              f"{sorted({n for n in names if names.count(n) > 1})}")
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

    def total_steps(self, num_examples: int, updates_per_batch: int = 1) -> int:
        """Optimizer steps of a run on ``num_examples`` training items: ``max_steps``, else ``epochs`` passes
        over the data in whole batches, ``updates_per_batch`` optimizer steps per batch. Raises ``ValueError``
        when the data is smaller than one batch."""
        if self.max_steps is not None:
            return self.max_steps
        per_epoch = num_examples // self.batch_size
        if per_epoch == 0:
            raise ValueError(f"{num_examples} training examples are fewer than one batch of {self.batch_size}")
        return max(1, int(math.floor(per_epoch * self.epochs)) * updates_per_batch)

    def checkpoint_fraction_names(self) -> dict[str, float]:
        """``{name: fraction}`` of the checkpoints given as fractions of the run: ``checkpoint_fractions`` and
        the ``checkpoint_log_count`` log-spaced points (:func:`log_spaced_fractions`) before the final one."""
        points = sorted([*self.checkpoint_fractions,
                         *log_spaced_fractions(self.checkpoint_log_count, self.checkpoint_log_first)[:-1]])
        return {fraction_name(f): f for f in points}

    def checkpoint_names(self) -> tuple[str, ...]:
        """Every checkpoint of the run by the name the DAG and ``<run>/checkpoints/`` use: ``step{N}`` for
        ``checkpoint_steps``, ``frac{f}`` for fractions (:data:`ebft.paths.CHECKPOINT_NAME`). Known without the
        data, so the evaluation rules declare every checkpoint's results."""
        return (*(f"step{s}" for s in self.checkpoint_steps), *self.checkpoint_fraction_names())

    def checkpoint_plan(self, total_steps: int) -> dict[str, int]:
        """``{name: optimizer step}`` of every checkpoint of a run of ``total_steps`` steps. A fraction ``f``
        is step ``min(T, max(1, round(f * T)))``; two names may share a step on a short run (each is saved).
        Raises :class:`ConfigError` for a ``checkpoint_steps`` entry beyond ``T``."""
        beyond = [s for s in self.checkpoint_steps if s > total_steps]
        if beyond:
            raise ConfigError(f"checkpoint_steps {beyond} lie beyond the run's {total_steps} optimizer steps "
                              f"(use checkpoint_fractions or checkpoint_log_count, which follow the data size)")
        plan = {f"step{s}": s for s in self.checkpoint_steps}
        for name, f in self.checkpoint_fraction_names().items():
            plan[name] = min(total_steps, max(1, round(f * total_steps)))
        return plan

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
    ckpt: str  # final | a checkpoint name (step<N> | frac<f>)

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
    r"""One generated evaluation rule: every group one job computes for one model of ``task``.

    ``ckpt`` is the rule's ``ckpt`` wildcard pattern: ``final`` (final and base models) or
    :data:`ebft.paths.CHECKPOINT_NAME` (declared checkpoints). ``all_cores``: a group of the job runs
    sandboxed programs in parallel workers (:attr:`ebft.evaluation.Evaluation.all_cores`).
    """

    name: str
    task: str
    groups: tuple[str, ...]
    ckpt: str

    @property
    def all_cores(self) -> bool:
        return any(EVALUATIONS[g].all_cores for g in self.groups)

    def owns(self, job: EvalJob) -> bool:
        """Whether this rule's jobs write ``job``'s result (its task, one of its groups, its kind of model)."""
        return job.task == self.task and job.group in self.groups and re.fullmatch(self.ckpt, job.ckpt) is not None


def eval_rules(config: dict[str, Any]) -> list[EvalRule]:
    """The evaluation rules of ``config``: one job per evaluated model, which loads the model (and the
    feature network) once and writes every group's result. Per task, ``eval_<task>`` computes the task's
    groups (:func:`task_evaluations`) on its base and final models and ``eval_<task>_ckpt`` those evaluated
    over training (:func:`on_checkpoints`) on declared checkpoints. Task names are a fixed set (the config
    schema), so the rule names are too (the Slurm profiles give each its resources)."""
    rules = []
    for task in config["tasks"]:
        final = tuple(task_evaluations(config, task))
        ckpts = tuple(g for g in final if on_checkpoints(config, g))
        rules.append(EvalRule(f"eval_{task}", task, final, "final"))
        if ckpts:
            rules.append(EvalRule(f"eval_{task}_ckpt", task, ckpts, paths.CHECKPOINT_NAME))
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
                names = checkpoint_names(run.params) if with_ckpts else ()
                for ckpt in ["final", *names]:
                    jobs.append(EvalJob(group, task, run.method, run.variant, run.seed, ckpt))
    return jobs


def checkpoint_names(params: Mapping[str, Any]) -> tuple[str, ...]:
    """The checkpoint names of a resolved variant (:meth:`TrainConfig.checkpoint_names`), from its keys alone."""
    keys = ("checkpoint_steps", "checkpoint_fractions", "checkpoint_log_count", "checkpoint_log_first")
    return TrainConfig.from_dict({k: params[k] for k in keys if k in params}).checkpoint_names()


def plan_spec(config: dict[str, Any], task: str) -> dict[str, Any]:
    """What rule ``plan_runs`` resolves and checks for ``task`` (:func:`ebft.plan.plan_task`): the task's
    training keys, each (method, variant) of its runs with its resolved keys and base model key, the models
    evaluated as base, the feature network, a hub SFT warm start, the ``cfm_by_length`` completion lengths,
    the evaluations' ``max_new_tokens`` and the evaluations that prompt through a chat template. The model
    keys it names are :func:`plan_models`."""
    spec = config["tasks"][task]
    grid = [r for r in run_grid(config) if r.task == task]
    runs = {(r.method, r.variant): {"method": r.method, "variant": r.variant, "params": r.params,
                                    "model": r.params.get("base_model", spec["base_model"])} for r in grid}
    groups = task_evaluations(config, task)
    evaluation = config.get("evaluation") or {}
    new_tokens = {g: EVALUATIONS[g].settings(evaluation)["max_new_tokens"] for g in groups
                  if "max_new_tokens" in EVALUATIONS[g].settings(evaluation)}
    chat = [g for g in groups if EVALUATIONS[g].settings(evaluation).get("chat_template")]
    warm = spec.get("sft_warm_start", "own")
    return {"task": task, "task_spec": train_task_spec(config, task), "runs": list(runs.values()),
            "eval_models": base_models(config, task, grid), "feature_model": spec.get("feature_model",
                                                                                       spec["base_model"]),
            "sft_warm_start": None if warm == "own" else warm,
            "gen_lens": (evaluation.get("cfm_by_length") or {}).get("gen_lens", []) if "cfm_by_length" in groups
            else [],
            "eval_max_new_tokens": new_tokens, "eval_chat_template": chat}


def plan_models(spec: Mapping[str, Any]) -> list[str]:
    """The model keys a :func:`plan_spec` reads (the plan job's model inputs), in a stable order."""
    keys = [*(r["model"] for r in spec["runs"]), *spec["eval_models"], spec["feature_model"]]
    if spec["sft_warm_start"] is not None:
        keys.append(spec["sft_warm_start"])
    return list(dict.fromkeys(keys))


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
