"""Typed views of the validated workflow configuration.

The Snakefile validates ``config/*.yaml`` against ``workflow/schemas/config.schema.yaml`` and then every
rule hands the relevant *resolved* section to ``ebft <command>`` as a JSON file. This module turns those
sections into dataclasses and owns the two pieces of config logic that both the DAG and the package need:

* variant resolution: ``methods.<m>.defaults`` overlaid with ``methods.<m>.variants.<v>``, plus the
  Cartesian ``sweeps`` that name their variants with a format string;
* the run grid: every (task, method, variant, seed) the DAG trains.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

#: Methods the DAG knows how to train, in report order.
METHODS = ("sft", "rlvr", "ebft")


class ConfigError(ValueError):
    """A configuration value is inconsistent; the message names the offending key."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every method (one instance per run).

    ``batch_size`` counts sequences (SFT, EBFT: packed chunks; RLVR: prompts) per optimizer step over all
    processes; ``micro_batch_size`` counts them per forward/backward on one process, so the gradient
    accumulation factor is ``batch_size / (micro_batch_size * world_size)``.
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

    @classmethod
    def from_dict(cls, raw: dict[str, Any], **extra: Any) -> TrainConfig:
        """Build from a (resolved) method section, ignoring keys that belong to the objective."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in {**raw, **extra}.items() if k in names}
        if "adam_betas" in kwargs:
            kwargs["adam_betas"] = tuple(kwargs["adam_betas"])
        if "checkpoint_steps" in kwargs:
            kwargs["checkpoint_steps"] = tuple(sorted(int(s) for s in kwargs["checkpoint_steps"]))
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
        return f"{self.task}/{self.method}/{self.variant}/seed{self.seed}"


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
    plus, when ``scale.enabled``, ``{variant}.{model}`` copies with ``base_model`` set to each scale model."""
    if method not in config.get("methods", {}):
        return {}
    own = method_variants(config["methods"][method], task)
    out = {name: p for name, p in own.items() if p.get("tasks") is None or task in p["tasks"]}
    if method == "rlvr":
        out = _verifiable(config, task, out)
    scale = config.get("scale") or {}
    if scale.get("enabled") and task in scale.get("tasks", []):
        for variant in scale.get("methods", {}).get(method, []):
            if variant not in own:
                raise ConfigError(f"scale.methods.{method}: no variant named {variant!r}")
            for model in scale["models"]:
                if model not in config["models"]:
                    raise ConfigError(f"scale.models: {model!r} is not a key of `models`")
                out[f"{variant}.{model}"] = {**own[variant], "base_model": model}
    return out


#: Rewards RLVR can verify per task kind (the first is the default); other kinds have no verifier.
RLVR_REWARDS = {"code_qa": ("unit_tests", "unit_test_fraction"), "translation": ("chrf", "bleu")}


def _verifiable(config: dict[str, Any], task: str, variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """RLVR variants that can run on ``task``: none on a kind without a verifier (unless a variant names the
    task explicitly, which is an error), and each variant's ``reward`` must fit the kind."""
    kind = config["tasks"][task]["kind"]
    rewards = RLVR_REWARDS.get(kind)
    if rewards is None:
        named = [name for name, p in variants.items() if p.get("tasks") is not None]
        if named:
            raise ConfigError(f"methods.rlvr variant {named[0]!r} lists task {task!r}, but its kind {kind!r} has no "
                              f"verifiable reward (RLVR runs on kinds {sorted(RLVR_REWARDS)})")
        return {}
    for name, p in variants.items():
        rlvr_reward(kind, p.get("reward"), f"methods.rlvr variant {name!r}", task)
    return variants


def rlvr_reward(kind: str, reward: str | None, where: str, task: str) -> str:
    """The RLVR reward for a task of ``kind``: ``reward`` if it fits the kind, the kind's default if None."""
    rewards = RLVR_REWARDS.get(kind)
    if rewards is None:
        raise ConfigError(f"{where}: task {task!r} of kind {kind!r} has no verifiable reward (RLVR runs on kinds "
                          f"{sorted(RLVR_REWARDS)})")
    name = reward or rewards[0]
    if name not in rewards:
        raise ConfigError(f"{where}: reward {name!r} does not fit task {task!r} (kind {kind!r} takes "
                          f"{' or '.join(rewards)})")
    return name


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


#: Evaluation groups every task gets; tasks add downstream ones with ``tasks.<task>.evaluations``.
UNIVERSAL_EVALUATIONS = ("ce", "cfm", "cfm_by_length")
#: Groups evaluated on declared checkpoints unless ``evaluation.<group>.checkpoints`` says otherwise.
CHECKPOINT_DEFAULT = {"ce": True, "cfm": True, "unit_tests": True}


@dataclass(frozen=True)
class EvalJob:
    group: str
    task: str
    method: str  # base | sft | rlvr | ebft
    variant: str  # the model key for base
    seed: int
    ckpt: str  # final | step<N>

    @property
    def path(self) -> str:
        return f"results/eval/{self.task}/{self.method}/{self.variant}/seed{self.seed}/{self.ckpt}/{self.group}.json"


def eval_plan(config: dict[str, Any], runs: list[Run]) -> list[EvalJob]:
    """Every evaluation the config asks for: each task's groups on its base model(s) and on every run's
    final model, plus declared checkpoints for groups evaluated over training."""
    jobs = []
    for task, spec in config["tasks"].items():
        extra = [g for g in spec.get("evaluations", []) if g not in UNIVERSAL_EVALUATIONS]
        groups = [*UNIVERSAL_EVALUATIONS, *extra]
        for group in groups:
            settings = config.get("evaluation", {}).get(group, {})
            if group == "cfm_by_length" and not settings.get("gen_lens"):
                continue
            with_ckpts = settings.get("checkpoints", CHECKPOINT_DEFAULT.get(group, False))
            for key in base_models(config, task, runs):
                jobs.append(EvalJob(group, task, "base", key, 0, "final"))
            for run in runs:
                if run.task != task:
                    continue
                steps = run.params.get("checkpoint_steps", []) if with_ckpts else []
                for ckpt in ["final", *[f"step{s}" for s in steps]]:
                    jobs.append(EvalJob(group, task, run.method, run.variant, run.seed, ckpt))
    return jobs


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object written by a rule (``params`` are passed to ``ebft`` as JSON files or strings)."""
    with open(path) as fh:
        return json.load(fh)
