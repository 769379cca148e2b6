"""Every run of a task resolved against its prepared data and its models, before any training job starts.

Rule ``plan_runs`` (``ebft plan``) runs once per task, after ``prepare_data`` and after the task's models are
downloaded, converted or pretrained, and before any training job of the task (each takes the plan as an
input). What the DAG-time checks (:mod:`ebft.checks`) cannot know, because it depends on the data and on the
models' files, is checked here, and every problem is reported together with its key path, so a config that
would fail inside a (queued, GPU) training job fails in this CPU job instead:

* training size: the items each run trains on (packed chunks of ``seq_len`` tokens with the run's tokenizer
  for SFT and EBFT, prompts for RLVR: what :func:`ebft.train.train` builds) against ``batch_size``; the
  run's optimizer steps ``T`` (:meth:`~ebft.config.TrainConfig.total_steps`) against ``checkpoint_steps``;
  the checkpoints given as fractions of the run resolved to steps
  (:meth:`~ebft.config.TrainConfig.checkpoint_plan`: the plan records them; two that share a step on a short
  run are reported as a warning, not an error);
* positions: ``seq_len`` against the ``max_position_embeddings`` of every model that reads chunks (the runs'
  base models and the feature network). The strided sequence of ``S = L + G·K`` tokens
  (:func:`ebft.geometry.strided_length`, recorded in the plan for the task's geometry and every
  ``evaluation.cfm_by_length.gen_lens``) needs no more positions: each generated token takes the position id
  of its ground-truth counterpart, so ids stay below ``L``. ``max_new_tokens`` of RLVR and of the
  evaluations must leave room for a prompt (a warning when the longest RLVR prompt does not fit with it:
  prompts are cut from the left);
* vocabularies: each model's tokenizer fits its embedding (``len(tokenizer) <= vocab_size``); the feature
  network and a hub SFT warm start read the policy's token ids, so their vocabulary must equal the base
  model's;
* chat templates: an RLVR run or an evaluation with ``chat_template: true`` needs a tokenizer that has one
  (a base model has none: the dress rehearsal with a hub base model in place of SmolLM2 drops the key).

The plan (``results/plan/{task}.json``) lists per run the training items, ``T`` and ``{checkpoint name:
step}``, per model the numbers checked, and the warnings. The trainer resolves the same checkpoints with the
same function from the same data, so the plan is what the training jobs do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ebft.config import ConfigError, TrainConfig
from ebft.geometry import strided_length
from ebft.methods import REGISTRY

log = logging.getLogger(__name__)

__all__ = ["plan_task", "model_facts"]


def model_facts(path: str | Path) -> dict[str, Any]:
    """What the checks read from a model directory: ``max_position_embeddings`` (None when the config has no
    such limit), the embedding's ``vocab_size`` and the tokenizer's length."""
    from transformers import AutoConfig

    from ebft.modeling import load_tokenizer

    config = AutoConfig.from_pretrained(str(path))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    positions = next((getattr(text, k) for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                      if getattr(text, k, None)), None)
    tok = load_tokenizer(path)
    return {"max_position_embeddings": positions, "vocab_size": getattr(text, "vocab_size", None),
            "tokenizer_size": len(tok), "_tokenizer": tok}


def plan_task(spec: Mapping[str, Any], data_dir: str | Path, models: Mapping[str, str | Path]) -> dict[str, Any]:
    """Check and resolve the runs of one task (``spec``: :func:`ebft.config.plan_spec`) against
    ``<data_dir>/train.jsonl`` and ``models`` (model key -> local directory). Returns the plan; raises
    :class:`ConfigError` listing every problem, one per line, each starting with its key path."""
    from ebft.train import read_train_split

    task, kind = spec["task"], spec["task_spec"]["kind"]
    facts = {key: model_facts(path) for key, path in models.items()}
    problems = list(_model_problems(spec, facts))
    rows = read_train_split(Path(data_dir) / "train.jsonl", kind)
    runs, warnings = [], []
    sizes: dict[str, int] = {}  # model key -> packed chunks (one tokenization per tokenizer)
    for run in spec["runs"]:
        where = f"methods.{run['method']} variant {run['variant']!r} (task {task})"
        entry = REGISTRY[run["method"]]
        try:
            cfg = TrainConfig.from_dict(run["params"], seq_len=spec["task_spec"]["seq_len"])
            method_cfg = entry.config(run["params"], where)
        except ConfigError as err:  # the DAG-time checks (ebft.checks) report these first
            problems.append(str(err) if str(err).startswith(where) else f"{where}: {err}")
            continue
        if getattr(method_cfg, "chat_template", False) and not _has_chat_template(facts[run["model"]]):
            problems.append(_no_chat_template(f"{where}: chat_template", run["model"]))
        if entry.inputs == "prompts":
            items, unit = len(rows), "prompts"
            for is_error, message in _generation_checks(where, method_cfg, rows, facts[run["model"]]):
                (problems if is_error else warnings).append(message)
        else:
            if run["model"] not in sizes:
                sizes[run["model"]] = _packed_size(rows, facts[run["model"]]["_tokenizer"], cfg.seq_len, kind)
            items, unit = sizes[run["model"]], f"chunks of {cfg.seq_len} tokens"
        if items < cfg.batch_size:
            problems.append(f"{where}: batch_size {cfg.batch_size} is more than the {items} training {unit} of "
                            f"tasks.{task}.data; lower batch_size or use more data")
            continue
        total = cfg.total_steps(items, getattr(method_cfg, "updates_per_batch", 1))
        try:
            plan = cfg.checkpoint_plan(total)
        except ConfigError as err:
            problems.append(f"{where}: {err}")
            continue
        shared = _shared_steps(plan)
        if shared:
            warnings.append(f"{where}: checkpoints {shared} share steps on this {total}-step run (each is saved "
                            f"and evaluated)")
        runs.append({"method": run["method"], "variant": run["variant"], "model": run["model"],
                     "training_items": items, "total_steps": total, "checkpoints": plan})
    if problems:
        raise ConfigError("\n  ".join([f"plan of task {task}: {len(problems)} problem(s)", *problems]))
    for warning in warnings:
        log.warning("%s", warning)
    model_table = {k: {f: v for f, v in fx.items() if not f.startswith("_")} for k, fx in facts.items()}
    return {"task": task, "train_rows": len(rows), "strided_lengths": _strided_lengths(spec), "runs": runs,
            "models": model_table, "warnings": warnings}


def _strided_lengths(spec: Mapping[str, Any]) -> dict[str, int]:
    """``{G: S}`` for the task's geometry and the ``cfm_by_length`` completion lengths (memory, not positions)."""
    geometry, seq_len = spec["task_spec"].get("geometry"), spec["task_spec"]["seq_len"]
    if not geometry:
        return {}
    lens = dict.fromkeys([geometry["gen_len"], *spec.get("gen_lens", [])])
    return {str(g): strided_length(seq_len, geometry["context_len"], geometry["stride"], g) for g in lens}


def _packed_size(rows: list[dict[str, Any]], tokenizer: Any, seq_len: int, kind: str) -> int:
    from ebft.data.packing import pack_records

    return len(pack_records(rows, tokenizer, seq_len, kind))


def _shared_steps(plan: Mapping[str, int]) -> list[list[str]]:
    by_step: dict[int, list[str]] = {}
    for name, step in plan.items():
        by_step.setdefault(step, []).append(name)
    return [names for names in by_step.values() if len(names) > 1]


def _model_problems(spec: Mapping[str, Any], facts: Mapping[str, dict[str, Any]]) -> Iterator[str]:
    """Vocabulary and position checks of the task's models (see the module docstring)."""
    task, task_spec = spec["task"], spec["task_spec"]
    for key, fx in facts.items():
        if fx["vocab_size"] is not None and fx["tokenizer_size"] > fx["vocab_size"]:
            yield (f"models.{key}: its tokenizer has {fx['tokenizer_size']} tokens, more than the model's "
                   f"vocab_size {fx['vocab_size']} (a tokenizer from another model?)")
    base_keys = sorted({run["model"] for run in spec["runs"]} | set(spec.get("eval_models", [])))
    for field in ("feature_model", "sft_warm_start"):
        other = spec.get(field)
        if other is None or other not in facts:
            continue
        for base in base_keys:
            if base != other and facts[base]["_tokenizer"].get_vocab() != facts[other]["_tokenizer"].get_vocab():
                yield (f"tasks.{task}.{field}: {other!r} has another vocabulary than the base model {base!r}; "
                       f"it reads the policy's token ids, so both need the same tokenizer")
    # positions: a chunk uses 0 .. L-1; the strided sequence (S = L + G*K tokens) gives every generated token
    # the position of its ground-truth counterpart (docs/algorithm.md §2.4), so it needs no more than L either
    seq_len = task_spec["seq_len"]
    for key in sorted(set(base_keys) | ({spec["feature_model"]} & set(facts))):
        limit = facts[key]["max_position_embeddings"]
        if limit is not None and seq_len > limit:
            yield (f"tasks.{task}.seq_len: chunks of {seq_len} tokens, but models.{key} has "
                   f"max_position_embeddings {limit}")
    for group in spec.get("eval_chat_template", []):
        for key in base_keys:
            if not _has_chat_template(facts[key]):
                yield _no_chat_template(f"evaluation.{group}.chat_template", key)
    for group, new_tokens in spec.get("eval_max_new_tokens", {}).items():
        for key in base_keys:
            limit = facts[key]["max_position_embeddings"]
            if limit is not None and new_tokens >= limit:
                yield (f"evaluation.{group}.max_new_tokens: {new_tokens} leaves no room for a prompt in "
                       f"models.{key}'s {limit} positions")


def _has_chat_template(fx: Mapping[str, Any]) -> bool:
    return bool(getattr(fx["_tokenizer"], "chat_template", None))


def _no_chat_template(key: str, model: str) -> str:
    return f"{key}: true, but the tokenizer of models.{model} has no chat template (a base model?); set it to false"


def _generation_checks(where: str, cfg: Any, rows: list[dict[str, Any]],
                       fx: dict[str, Any]) -> Iterator[tuple[bool, str]]:
    """``(is_error, message)`` for a sampling method's ``max_new_tokens``: an error when it leaves no room for a
    prompt; a warning when the longest prompt does not fit with it (prompts are cut from the left to
    ``max_position_embeddings - max_new_tokens`` tokens)."""
    limit, new_tokens = fx["max_position_embeddings"], getattr(cfg, "max_new_tokens", None)
    if limit is None or new_tokens is None:
        return
    if new_tokens >= limit:
        yield True, f"{where}: max_new_tokens {new_tokens} leaves no room for a prompt in {limit} positions"
        return
    ids = fx["_tokenizer"]([r["question"] for r in rows], add_special_tokens=False)["input_ids"]
    longest = max(len(x) for x in ids)
    if longest + new_tokens > limit:
        yield False, (f"{where}: the longest prompt ({longest} tokens) + max_new_tokens {new_tokens} exceed "
                      f"max_position_embeddings {limit}; such prompts are cut from the left")


def write_plan(plan: Mapping[str, Any], out: str | Path) -> None:
    """Write the plan atomically (:func:`ebft.evaluation.results.write_json_atomic`)."""
    from ebft.evaluation.results import write_json_atomic

    write_json_atomic(out, plan)
