"""What tables and figures both read: the tidy results frame, the report meta, row kinds and names, the
per-method constants, the accuracy metric and the paper's numbers.

The tidy frame (:func:`load_results`) has one row per (task, method, variant, seed, step, metric).

Row names come from the resolved variant parameters the workflow passes in (``meta``, see
:func:`report_meta`): ``EBFT (from base)`` for EBFT variants with ``init: base`` and ``EBFT (from SFT)``
(SFT→EBFT) for ``init: sft``. Without them, a variant name starting with ``sft`` marks a warm start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ebft.evaluation.results import read_result
from ebft.methods import METHODS, REGISTRY

# ---------------------------------------------------------------------------------------- methods
#: Row order of methods in every table and figure: the base model, then the method registry's order.
METHOD_ORDER = ["base", *METHODS]
#: Row kinds in table order, with their display names: each registered method (its label), then the paper's
#: rows that split a method by its starting point (:func:`row_kind`).
ROW_KINDS = {"base": "base", **{m.name: m.label for m in REGISTRY.values()},
             "ebft_base": "EBFT (from base)", "ebft_sft": "EBFT (from SFT)", "sft_rlvr": "RLVR (from SFT)"}
#: One colour per method in every figure.
METHOD_COLOURS = {"base": "#7f7f7f", **{m.name: m.colour for m in REGISTRY.values()}}

# ------------------------------------------------------------------------------------------ frame
KEYS = ["task", "method", "variant", "seed", "step"]
#: Downstream metrics a task may have, in order of preference for a figure's accuracy axis.
DOWNSTREAM = ["eval/unit_tests_greedy", "eval/humaneval_greedy", "eval/comet", "eval/chrf", "eval/bleu"]


def load_results(paths: list[Path]) -> pd.DataFrame:
    """Tidy frame of every metric in ``paths`` (columns: task, method, variant, seed, step, metric, value).

    ``value`` is NaN where a result file stored ``null``: the metric was not finite.

    Raises:
        ValueError: naming the file that is not a valid result (e.g. truncated JSON), see
            :func:`ebft.evaluation.results.read_result`.
    """
    rows = []
    for path in paths:
        res = read_result(path)
        for metric, value in res["metrics"].items():
            rows.append({**{k: res[k] for k in KEYS}, "train_step": res.get("train_step"), "metric": metric,
                         "value": value, "source": str(path)})
    frame = pd.DataFrame(rows, columns=[*KEYS, "train_step", "metric", "value", "source"])
    frame["method"] = pd.Categorical(frame["method"], categories=METHOD_ORDER, ordered=True)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    return frame


#: Training-log metrics the report draws over training (figure ``training_logs``), where a run logs them.
LOG_METRICS = ["train/loss", "rlvr/reward_mean", "rlvr/pass_rate", "ebft/reward", "ebft/cfm"]


def load_train_logs(paths: list[Path]) -> pd.DataFrame:
    """Tidy frame of the :data:`LOG_METRICS` in runs' ``train_log.jsonl`` files (columns: task, method,
    variant, seed, step, metric, value); the run comes from the path
    (``.../{task}/{method}/{variant}/seed{seed}/train_log.jsonl``, :data:`ebft.paths.RUN_LOG`); records
    without a ``step`` (events) and null values are skipped."""
    rows = []
    for path in paths:
        task, method, variant, seed = Path(path).parts[-5:-1]
        for line in Path(path).read_text().splitlines():
            rec = json.loads(line)
            if "event" in rec or rec.get("step") is None:
                continue
            for metric in LOG_METRICS:
                if rec.get(metric) is not None:
                    rows.append({"task": task, "method": method, "variant": variant,
                                 "seed": int(seed.removeprefix("seed")), "step": int(rec["step"]),
                                 "metric": metric, "value": float(rec[metric])})
    return pd.DataFrame(rows, columns=["task", "method", "variant", "seed", "step", "metric", "value"])


def accuracy_metric(frame: pd.DataFrame, config_name: str = "") -> str:
    """The accuracy axis of Figure 1: HumanEval greedy in the paper config, code_qa's unit-test greedy pass@1
    in the tiny default (HumanEval is about 0 for a tiny model), else the first downstream metric present."""
    present = set(frame["metric"])
    order = ["eval/humaneval_greedy", "eval/unit_tests_greedy"] if config_name == "paper" else DOWNSTREAM
    return next((m for m in order if m in present), "eval/unit_tests_greedy")


# ------------------------------------------------------------------------------------------- meta
#: Keys of a variant's parameters kept in the report meta (small enough for one command-line argument).
META_PARAMS = ("init", "whitening", "embed_method", "ce_coef", "diversity_coef", "alignment_coef", "base_model",
               "lr", "epochs", "max_steps")


def report_meta(config: dict[str, Any], methods: tuple[str, ...] = METHODS) -> dict[str, Any]:
    """What the report needs from a workflow config: its name and, per task, the pooling and the resolved
    parameters of every trained (method, variant). The aggregate rule passes this as JSON."""
    from ebft.config import task_variants

    out: dict[str, Any] = {"name": config.get("name", ""), "tasks": {}}
    for task, spec in config["tasks"].items():
        variants = {}
        for method in methods:
            variants[method] = {name: {k: v for k, v in params.items() if k in META_PARAMS}
                                for name, params in task_variants(config, method, task).items()}
        out["tasks"][task] = {"kind": spec.get("kind"), "embed_method": spec.get("embed_method"),
                              "base_model": spec.get("base_model"), "sft_warm_start": spec.get("sft_warm_start", "own"),
                              "evaluations": list(spec.get("evaluations", [])), "variants": variants}
    return out


def variant_params(meta: dict[str, Any] | None, task: str, method: str, variant: str) -> dict[str, Any]:
    """Resolved parameters of (task, method, variant), or the name convention when meta lacks them."""
    tmeta = (meta or {}).get("tasks", {}).get(task, {})
    params = dict(tmeta.get("variants", {}).get(method, {}).get(variant) or {})
    if not params and method in ("rlvr", "ebft"):
        params["init"] = "sft" if variant.startswith("sft") else "base"
    if method == "ebft":
        params.setdefault("init", "base")
        params["pooling"] = params.get("embed_method") or tmeta.get("embed_method")
    return params


def base_model_key(meta: dict[str, Any] | None, task: str, method: str, variant: str) -> str | None:
    """Model key of the base model under (task, method, variant): a scale-grid variant's ``base_model``, else
    the task's; None when ``meta`` has neither."""
    params = variant_params(meta, task, method, variant)
    return params.get("base_model") or (meta or {}).get("tasks", {}).get(task, {}).get("base_model")


def start_model(meta: dict[str, Any] | None, task: str, method: str, variant: str) -> tuple[str, str | None]:
    """(method, variant) of the evaluated model a run of (task, method, variant) starts from, with the same seed.

    ``init: base`` (and SFT, which always starts from base): ``("base", model key)``, the key from
    :func:`base_model_key` (None when unknown). ``init: sft``: the same task's final SFT model,
    ``("sft", "default")``, or ``("sft", "default.<model>")`` for a scale-grid variant; with
    ``tasks.<task>.sft_warm_start`` set to a model key, ``("base", that key)`` (evaluated only if it is also a
    base model; otherwise a figure has no start point for the run).
    """
    params = variant_params(meta, task, method, variant)
    if method == "sft" or params.get("init", "base") == "base":
        return "base", base_model_key(meta, task, method, variant)
    if params.get("base_model"):
        return "sft", f"default.{params['base_model']}"
    warm = (meta or {}).get("tasks", {}).get(task, {}).get("sft_warm_start") or "own"
    return ("sft", "default") if warm == "own" else ("base", warm)


# ------------------------------------------------------------------------------------------- rows
def row_kind(method: str, params: dict[str, Any]) -> str:
    """Row kind (a key of :data:`ROW_KINDS`) of a method with its resolved parameters."""
    if method == "ebft":
        return "ebft_sft" if params.get("init") == "sft" else "ebft_base"
    if method == "rlvr" and params.get("init") == "sft":
        return "sft_rlvr"
    return method


def row_names(keys: list[tuple[str, str]], task: str, meta: dict[str, Any] | None) -> dict[tuple[str, str], str]:
    """Display name of every (method, variant) row: the kind's name, plus the variant when a kind has several."""
    kinds = {key: row_kind(key[0], variant_params(meta, task, *key)) for key in keys}
    counts = pd.Series(list(kinds.values())).value_counts().to_dict() if kinds else {}
    names = {}
    for (method, variant), kind in kinds.items():
        name = ROW_KINDS.get(kind, method)
        if method == "base":
            name = f"base ({variant})" if counts[kind] > 1 else "base"
        elif counts[kind] > 1 or (variant not in ("default", "sft") and method != "ebft"):
            name = f"{name}: {variant}"
        names[(method, variant)] = name
    return names


def kind_order(method: str, variant: str, task: str, meta: dict[str, Any] | None) -> int:
    """Position of the (method, variant) row's kind in :data:`ROW_KINDS` (the table row order)."""
    kinds = list(ROW_KINDS)
    kind = row_kind(method, variant_params(meta, task, method, variant))
    return kinds.index(kind) if kind in kinds else len(kinds)


# ---------------------------------------------------------------------------------- paper numbers
PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.yaml")


def load_paper_numbers(path: Path = PAPER_NUMBERS) -> dict[str, Any]:
    """The paper's known numbers (``paper_numbers.yaml``): paper title and, per task, rows by kind."""
    return yaml.safe_load(path.read_text())


def paper_rows(task: str, numbers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The paper's known values for ``task``: row kind -> metric -> {value, confidence, source}."""
    return (numbers.get("tasks", {}).get(task) or {}).get("rows", {})
