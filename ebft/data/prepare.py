"""Prepare one task's dataset: generate or load the splits, validate, and write them with a manifest.

``prepare_task(task_name, data_cfg, out_dir)`` writes ``{out_dir}/{train,valid,test}.jsonl`` and
``{out_dir}/manifest.json``, each atomically. ``data_cfg`` is the task's ``data`` block of the config:

=========================  ===============================================================================
``source``                 ``synthetic_code_qa`` | ``stdlib_code`` | ``synthetic_translation`` | ``hub``
``seed``                   int (generators; default 0)
``sizes``                  ``{train, valid, test}`` record counts (generators)
``max_chars``              longest document in characters (``stdlib_code``; default 2000)
``pairs``, ``real_test``   language pairs and whether to add Django's real test pairs (translation)
``real_test_max``          at most this many real sentence pairs per language pair (translation)
``splits``                 hub: ``{train: {path, split, max_rows?, skip_rows?}, valid: ..., test: ...}``
``columns``                hub: record key -> dataset column
``defaults``               hub: constant record values (e.g. ``{origin: wmt22}``)
``ood_test``               hub, optional: ``{path, split, origin, columns?, max_rows?}`` appended to the test
                           split with ``origin`` set (translation: MTNT, scored as ``eval/ood/*``)
``kind``                   hub: the record schema (qa | code_qa | unstructured | translation)
=========================  ===============================================================================

The manifest holds the task, source, kind, seed, per-split counts and file SHA-256 digests, and the
``data_cfg`` that produced them; it has no timestamps, so the same config gives byte-identical output.
Training checks the train split against its digest (:func:`ebft.data.manifest.verify_split`), so a split
edited after ``prepare-data`` is refused rather than trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ebft.data import code_qa, code_unstructured, hub, translation
from ebft.data.jsonl import write_json, write_jsonl
from ebft.data.manifest import MANIFEST_NAME, sha256_file
from ebft.data.records import SPLITS, RecordError, check_task_kind, validate_records

Splits = dict[str, list[dict[str, Any]]]

SOURCE_KINDS: dict[str, str | None] = {
    "synthetic_code_qa": "code_qa",
    "stdlib_code": "unstructured",
    "synthetic_translation": "translation",
    "hub": None,  # from data_cfg["kind"]
}
"""Data sources and the record kind each produces."""


def _require(cfg: Mapping[str, Any], key: str, task_name: str) -> Any:
    """``cfg[key]``, or a ValueError naming the task and the missing key."""
    if key not in cfg:
        raise ValueError(f"task {task_name!r}: data config lacks the key {key!r}")
    return cfg[key]


def _seed(cfg: Mapping[str, Any], task_name: str) -> int:
    """The integer seed of a generator config (default 0)."""
    seed = cfg.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"task {task_name!r}: data key 'seed' must be an integer, got {seed!r}")
    return seed


def _from_code_qa(cfg: Mapping[str, Any], task_name: str) -> Splits:
    return code_qa.generate(_require(cfg, "sizes", task_name), _seed(cfg, task_name))


def _from_stdlib(cfg: Mapping[str, Any], task_name: str) -> Splits:
    return code_unstructured.generate(
        _require(cfg, "sizes", task_name),
        _seed(cfg, task_name),
        max_chars=cfg.get("max_chars", code_unstructured.DEFAULT_MAX_CHARS),
    )


def _from_translation(cfg: Mapping[str, Any], task_name: str) -> Splits:
    return translation.generate(
        _require(cfg, "sizes", task_name),
        _seed(cfg, task_name),
        pairs=cfg.get("pairs", translation.DEFAULT_PAIRS),
        real_test=bool(cfg.get("real_test", True)),
        max_real=cfg.get("real_test_max"),
    )


def _from_hub(cfg: Mapping[str, Any], task_name: str) -> Splits:
    kind = _require(cfg, "kind", task_name)
    split_cfgs = _require(cfg, "splits", task_name)
    out: Splits = {}
    for split in SPLITS:
        spec = split_cfgs.get(split) if isinstance(split_cfgs, Mapping) else None
        if not isinstance(spec, Mapping) or "path" not in spec:
            raise ValueError(f"task {task_name!r}: data key 'splits.{split}' must be a mapping with a 'path'")
        out[split] = hub.load_split(
            spec["path"],
            spec.get("split", split),
            columns=_require(cfg, "columns", task_name),
            max_rows=spec.get("max_rows"),
            skip_rows=spec.get("skip_rows", 0),
            task_kind=kind,
            defaults=cfg.get("defaults"),
            id_prefix=split,
        )
    ood = cfg.get("ood_test")
    if ood:  # an out-of-distribution test set (e.g. MTNT for translation), marked by its `origin`
        origin = ood.get("origin", "ood")
        out["test"] = out["test"] + hub.load_split(
            ood["path"],
            ood.get("split", "test"),
            columns=ood.get("columns", _require(cfg, "columns", task_name)),
            max_rows=ood.get("max_rows"),
            task_kind=kind,
            defaults={**(cfg.get("defaults") or {}), "origin": origin},
            id_prefix=f"test-{origin}",
        )
    return out


BUILDERS: dict[str, Callable[[Mapping[str, Any], str], Splits]] = {
    "synthetic_code_qa": _from_code_qa,
    "stdlib_code": _from_stdlib,
    "synthetic_translation": _from_translation,
    "hub": _from_hub,
}


def build_splits(task_name: str, data_cfg: Mapping[str, Any]) -> tuple[str, Splits]:
    """Generate or load the three splits of a task; returns ``(kind, splits)``, not yet validated."""
    source = data_cfg.get("source")
    if source not in BUILDERS:
        raise ValueError(
            f"task {task_name!r}: data key 'source' is {source!r}; allowed values: {', '.join(BUILDERS)}"
        )
    kind = SOURCE_KINDS[source]
    if kind is None:
        kind = _require(data_cfg, "kind", task_name)
        check_task_kind(kind)
    return kind, BUILDERS[source](data_cfg, task_name)


def _check_unique_ids(splits: Splits, task_name: str) -> None:
    """Ids must be unique across the whole task, not only within a split."""
    owner: dict[str, str] = {}
    for split in SPLITS:
        for index, rec in enumerate(splits[split], start=1):
            if rec["id"] in owner and owner[rec["id"]] != split:
                raise RecordError(
                    f"{task_name}/{split}:{index}",
                    "id",
                    f"repeats the id {rec['id']!r} of the {owner[rec['id']]} split",
                )
            owner[rec["id"]] = split


def prepare_task(task_name: str, data_cfg: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Build, validate and write a task's splits; return the manifest (also written to ``manifest.json``).

    Raises:
        ValueError: for an unknown ``source`` (naming the key and the allowed values), a missing key, or
            records that break the schema.
    """
    kind, splits = build_splits(task_name, data_cfg)
    for split in SPLITS:
        validate_records(splits[split], kind, where=f"{task_name}/{split}")
    _check_unique_ids(splits, task_name)
    out_dir = Path(out_dir)
    files: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        path = out_dir / f"{split}.jsonl"
        write_jsonl(path, splits[split])
        files[split] = {"file": path.name, "rows": len(splits[split]), "sha256": sha256_file(path)}
    manifest = {
        "task": task_name,
        "source": data_cfg["source"],
        "kind": kind,
        "seed": data_cfg.get("seed"),
        "counts": {split: files[split]["rows"] for split in SPLITS},
        "files": files,
        "data_config": dict(data_cfg),
    }
    write_json(out_dir / MANIFEST_NAME, manifest)
    return manifest
