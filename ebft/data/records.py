"""The record schema shared by every task, and its validation.

Every dataset split is a JSON-lines file with one record per line. All records carry

- ``id`` (str, non-empty, unique within the task),
- ``question`` (str: the prompt; may be ``""`` only for ``unstructured`` documents),
- ``answer`` (str, non-empty: the completion, or the whole document for unstructured data).

Task kinds add keys:

- ``code_qa``: ``entry_point`` (the function name) and ``test`` (HumanEval-style Python source that
  defines ``def check(candidate):``), so that one harness runs HumanEval and code_qa alike:
  ``question + completion + "\\n\\n" + test + f"\\n\\ncheck({entry_point})\\n"``.
- ``translation``: ``src_lang`` and ``tgt_lang`` (ISO 639-1 codes), ``source`` and ``reference`` (the
  sentence pair) and ``origin`` (where the pair comes from, e.g. ``"synthetic"``, ``"django"``, ``"hub"``).
- ``unstructured`` and ``qa``: nothing beyond the common keys.

Extra keys are allowed (for example ``path`` on stdlib documents) and kept as they are.

A required key must be present and a string (``null`` is rejected) that is not empty or whitespace-only; the
one exception is the ``question`` of ``unstructured`` records. ``prepare-data`` validates what it writes,
and every job that reads a split validates it again (:func:`ebft.data.jsonl.read_split`: training, RLVR
prompts, the tokenizer and pretraining corpora, evaluation), so a record edited or written by hand fails
naming ``file:line`` and the key rather than deep inside tokenization or when RLVR draws it.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from typing import Any

SPLITS: tuple[str, ...] = ("train", "valid", "test")
"""The dataset splits, in order."""

TASK_KINDS: tuple[str, ...] = ("qa", "code_qa", "unstructured", "translation")
"""The task kinds that :func:`validate_record` knows."""

COMMON_KEYS: tuple[str, ...] = ("id", "question", "answer")
CODE_QA_KEYS: tuple[str, ...] = ("entry_point", "test")
TRANSLATION_KEYS: tuple[str, ...] = ("src_lang", "tgt_lang", "source", "reference", "origin")

_LANG_RE = re.compile(r"^[a-z]{2}$")


class RecordError(ValueError):
    """A record that breaks the schema; the message names the location and the offending key."""

    def __init__(self, where: str, key: str | None, problem: str) -> None:
        self.where = where
        self.key = key
        self.problem = problem
        subject = f"key {key!r} {problem}" if key is not None else problem
        super().__init__(f"{where}: invalid record: {subject}")


def required_keys(task_kind: str) -> tuple[str, ...]:
    """Return the keys that a record of ``task_kind`` must have."""
    check_task_kind(task_kind)
    extra = {"code_qa": CODE_QA_KEYS, "translation": TRANSLATION_KEYS}.get(task_kind, ())
    return COMMON_KEYS + extra


def check_task_kind(task_kind: str) -> None:
    """Raise a ValueError unless ``task_kind`` is one of :data:`TASK_KINDS`."""
    if task_kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {task_kind!r}; allowed values: {', '.join(TASK_KINDS)}")


def _require_str(rec: Mapping[str, Any], key: str, where: str, *, allow_empty: bool = False) -> str:
    """Return ``rec[key]`` after checking that it exists and is a (non-empty) string."""
    if key not in rec:
        raise RecordError(where, key, "is missing")
    value = rec[key]
    if not isinstance(value, str):
        raise RecordError(where, key, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RecordError(where, key, "must be a non-empty string")
    return value


def _validate_code_qa(rec: Mapping[str, Any], where: str) -> None:
    """Check the code_qa keys: an identifier entry point and a test defining ``check(candidate)``."""
    entry_point = _require_str(rec, "entry_point", where)
    if not entry_point.isidentifier() or keyword.iskeyword(entry_point):
        raise RecordError(where, "entry_point", f"must be a Python identifier, got {entry_point!r}")
    test = _require_str(rec, "test", where)
    if "def check(" not in test:
        raise RecordError(where, "test", "must define `def check(candidate):`")


def _validate_translation(rec: Mapping[str, Any], where: str) -> None:
    """Check the translation keys: two distinct ISO 639-1 codes, the sentence pair and the origin."""
    langs = []
    for key in ("src_lang", "tgt_lang"):
        code = _require_str(rec, key, where)
        if not _LANG_RE.match(code):
            raise RecordError(where, key, f"must be a lowercase ISO 639-1 code, got {code!r}")
        langs.append(code)
    if langs[0] == langs[1]:
        raise RecordError(where, "tgt_lang", f"must differ from src_lang, both are {langs[0]!r}")
    for key in ("source", "reference", "origin"):
        _require_str(rec, key, where)


def validate_record(rec: Any, task_kind: str, *, where: str) -> None:
    """Validate one record against the schema of ``task_kind``.

    Args:
        rec: the decoded record (must be a JSON object, i.e. a dict).
        task_kind: one of :data:`TASK_KINDS`.
        where: the location used in error messages, conventionally ``"path:line"``.

    Raises:
        RecordError: (a ValueError) naming ``where`` and the offending key.
        ValueError: for an unknown task kind.
    """
    check_task_kind(task_kind)
    if not isinstance(rec, Mapping):
        raise RecordError(where, None, f"expected a JSON object, got {type(rec).__name__}")
    _require_str(rec, "id", where)
    _require_str(rec, "question", where, allow_empty=task_kind == "unstructured")
    _require_str(rec, "answer", where)
    if task_kind == "code_qa":
        _validate_code_qa(rec, where)
    elif task_kind == "translation":
        _validate_translation(rec, where)


def validate_records(rows: list[dict[str, Any]], task_kind: str, *, where: str) -> None:
    """Validate every row and check that ids are unique; rows are named ``where:index`` (1-based)."""
    seen: dict[str, int] = {}
    for index, rec in enumerate(rows, start=1):
        loc = f"{where}:{index}"
        validate_record(rec, task_kind, where=loc)
        rec_id = rec["id"]
        if rec_id in seen:
            raise RecordError(loc, "id", f"duplicates the id {rec_id!r} of row {seen[rec_id]}")
        seen[rec_id] = index


def check_sizes(sizes: Mapping[str, Any]) -> dict[str, int]:
    """Return ``{split: size}`` for the three splits after checking each is a non-negative integer.

    A missing split counts as 0; keys other than the three splits are rejected.
    """
    if not isinstance(sizes, Mapping):
        raise ValueError(f"sizes must be a mapping of split to count, got {type(sizes).__name__}")
    unknown = sorted(set(sizes) - set(SPLITS))
    if unknown:
        raise ValueError(f"sizes has unknown split(s) {unknown}; allowed: {', '.join(SPLITS)}")
    out = {}
    for split in SPLITS:
        value = sizes.get(split, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"sizes[{split!r}] must be a non-negative integer, got {value!r}")
        out[split] = value
    return out
