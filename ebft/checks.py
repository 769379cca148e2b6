"""Every check of a validated config that needs no data, run when Snakemake builds the DAG.

``workflow/rules/common.smk`` calls :func:`check_config` right after the schema validation, so
``snakemake -n`` stops before any job, and before Snakemake deletes the outputs of a job it would rerun,
with a :class:`~ebft.config.ConfigError` whose message names the key path of each problem. The schema
checks each value on its own; these checks relate values to each other:

* tasks: the data source produces records of the task's ``kind``; the strided ``geometry`` fits ``seq_len``
  (the rule of :class:`ebft.strided.StridedLayout`, which the training and evaluation code enforce), also
  for every ``evaluation.cfm_by_length.gen_lens``; each listed evaluation supports the task's kind
  (:attr:`ebft.evaluation.Evaluation.kinds`);
* model keys: ``tasks.<t>.base_model``, ``feature_model``, ``sft_warm_start`` (unless ``own``),
  ``scale.models`` and a variant's ``base_model`` name entries of ``models``; a ``source: local`` model is a
  directory with a ``config.json``; a ``source: gguf`` file exists (:func:`ebft.gguf.gguf_file`);
* training: for every resolved variant of every method on every task (:func:`ebft.config.run_grid`) and for
  ``models.<m>.pretrain``, the :class:`~ebft.config.TrainConfig` and the method's typed config
  (``REGISTRY[method].config``, whose own ``check()`` runs) build; a sampling method has the two samples
  its leave-one-out terms need.

Problems are collected and reported together; the run grid is checked only once the task and model keys
are sound (resolving it needs them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ebft.config import ConfigError, TrainConfig, method_variants, run_grid, train_task_spec
from ebft.evaluation import EVALUATIONS
from ebft.methods import REGISTRY

__all__ = ["check_config", "geometry_error"]


def check_config(config: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` listing every problem of a schema-valid ``config`` (one per line, each
    starting with its key path); return None when there is none."""
    for stage in (_task_problems, _model_key_problems, _training_problems):
        problems = list(stage(config))
        if problems:
            head = "invalid config" if len(problems) > 1 else problems.pop()
            raise ConfigError("\n  ".join([head, *problems]))


def geometry_error(seq_len: int, context_len: int, stride: int, gen_len: int) -> str | None:
    """Why the strided geometry ``(L, C, s, G)`` is invalid (:func:`ebft.geometry.check_geometry`, the rule
    :class:`ebft.strided.StridedLayout` enforces), or None when it is valid."""
    from ebft.geometry import check_geometry

    try:
        check_geometry(seq_len, context_len, stride, gen_len)
    except ValueError as err:
        return str(err).removeprefix("StridedLayout: ")
    return None


# ----------------------------------------------------------------------------------------------- tasks
def _task_problems(config: dict[str, Any]) -> Iterator[str]:
    from ebft.data.prepare import SOURCE_KINDS

    gen_lens = (config.get("evaluation", {}).get("cfm_by_length") or {}).get("gen_lens") or []
    for task, spec in config["tasks"].items():
        where, kind = f"tasks.{task}", spec["kind"]
        produced = SOURCE_KINDS.get(spec["data"]["source"])
        if produced is not None and produced != kind:
            yield (f"{where}.kind: {kind!r}, but data source {spec['data']['source']!r} produces {produced!r} "
                   f"records")
        yield from _geometry_problems(where, spec, gen_lens)
        for group in spec.get("evaluations", []):
            kinds = EVALUATIONS[group].kinds
            if kinds is not None and kind not in kinds:
                yield (f"{where}.evaluations: {group!r} needs a task of kind {' or '.join(kinds)}; "
                       f"task {task!r} is of kind {kind!r}")


def _geometry_problems(where: str, spec: dict[str, Any], gen_lens: list[int]) -> Iterator[str]:
    """The task's geometry against its ``seq_len``, then each ``cfm_by_length`` completion length."""
    geometry, seq_len = spec.get("geometry"), spec["seq_len"]
    if geometry is None:
        yield f"{where}.geometry: missing; the cfm evaluation (every task) and EBFT sample with it"
        return
    error = geometry_error(seq_len, geometry["context_len"], geometry["stride"], geometry["gen_len"])
    if error:
        yield f"{where}.geometry: {error} (seq_len {seq_len})"
    for gen_len in (g for g in gen_lens if g != geometry["gen_len"]):  # the task's own G is checked above
        error = geometry_error(seq_len, geometry["context_len"], geometry["stride"], gen_len)
        if error:
            yield (f"evaluation.cfm_by_length.gen_lens: gen_len {gen_len} with {where}.geometry "
                   f"(context_len {geometry['context_len']}, stride {geometry['stride']}, seq_len {seq_len}): {error}")


# ------------------------------------------------------------------------------------------ model keys
def _model_key_problems(config: dict[str, Any]) -> Iterator[str]:
    models = config["models"]

    def unknown(where: str, key: str) -> str:
        return f"{where}: {key!r} is not a key of `models` (have: {', '.join(sorted(models))})"

    for task, spec in config["tasks"].items():
        for field in ("base_model", "feature_model", "sft_warm_start"):
            key = spec.get(field)
            if key is not None and key not in models and not (field == "sft_warm_start" and key == "own"):
                yield unknown(f"tasks.{task}.{field}", key)
    scale = config.get("scale") or {}
    if scale.get("enabled"):
        for i, key in enumerate(scale.get("models", [])):
            if key not in models:
                yield unknown(f"scale.models[{i}]", key)
    for method, method_cfg in config["methods"].items():
        for task in config["tasks"]:
            for variant, params in method_variants(method_cfg, task).items():
                key = params.get("base_model")
                if key is not None and key not in models:
                    yield unknown(f"methods.{method} variant {variant!r} base_model", key)
    yield from _model_source_problems(models)


def _model_source_problems(models: dict[str, Any]) -> Iterator[str]:
    """A local model directory must hold a model (``config.json``); a GGUF file must be found."""
    from ebft.gguf import GGUFError, gguf_file

    for name, spec in models.items():
        if spec["source"] == "local" and not (Path(spec["path"]) / "config.json").is_file():
            yield f"models.{name}.path: {spec['path']} is not a Hugging Face model directory (no config.json)"
        elif spec["source"] == "gguf":
            try:
                gguf_file(spec, f"models.{name}")
            except GGUFError as err:
                yield str(err)


# -------------------------------------------------------------------------------------------- training
#: Why each advantage estimator needs a second sample (a sampling config without ``advantage``, EBFT, uses RLOO).
ADVANTAGE_NEEDS: dict[str, str] = {
    "rloo": "RLOO advantages (a leave-one-out baseline over the other samples)",
    "grpo": "GRPO advantages (normalised over the samples; identically 0 for one sample)",
}


def _training_problems(config: dict[str, Any]) -> Iterator[str]:
    for name, model in config["models"].items():
        if model["source"] == "pretrain":
            pretrain = model["pretrain"]
            params = {**pretrain, "micro_batch_size": pretrain.get("micro_batch_size", pretrain["batch_size"])}
            yield from _built(f"models.{name}.pretrain", partial(TrainConfig.from_dict, params))[1]
    checked: set[tuple[str, str, str]] = set()
    for run in run_grid(config):
        if (run.task, run.method, run.variant) in checked:
            continue  # the seed changes nothing that is checked here
        checked.add((run.task, run.method, run.variant))
        where = f"methods.{run.method} variant {run.variant!r} (task {run.task})"
        seq_len = train_task_spec(config, run.task)["seq_len"]
        yield from _built(where, partial(TrainConfig.from_dict, run.params, seed=run.seed, seq_len=seq_len))[1]
        method_cfg, problems = _built(where, partial(REGISTRY[run.method].config, run.params, where))
        yield from problems
        if method_cfg is not None:
            yield from _sampling_problems(where, method_cfg)


def _built(where: str, build: Callable[[], Any]) -> tuple[Any, list[str]]:
    """``(build(), [])``, or ``(None, [message])`` when it raises :class:`ConfigError`; the message starts
    with ``where``."""
    try:
        return build(), []
    except ConfigError as err:
        message = str(err)
        return None, [message if message.startswith(where) else f"{where}: {message}"]


def _sampling_problems(where: str, cfg: Any) -> Iterator[str]:
    """``num_samples >= 2`` where a term needs another sample: the advantages over the samples of an input
    (every sampling method) and the diversity term (``diversity_coef > 0``)."""
    n = getattr(cfg, "num_samples", None)
    if n is None or n >= 2:
        return
    needs = [ADVANTAGE_NEEDS[getattr(cfg, "advantage", "rloo")]]
    if getattr(cfg, "diversity_coef", 0) > 0:
        needs.append(f"diversity_coef {cfg.diversity_coef} > 0 (the diversity term compares each sample with "
                     f"the others)")
    yield f"{where}: num_samples {n} < 2, but " + " and ".join(needs) + " need at least 2 samples"
