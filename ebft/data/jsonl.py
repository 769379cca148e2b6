"""JSON-lines reading with precise error locations, validated task splits (:func:`read_split`), and atomic
writing."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ebft.data.records import RecordError, validate_record


def read_jsonl(path: str | os.PathLike[str], validate_kind: str | None = None) -> list[dict[str, Any]]:
    """Read a JSON-lines file into a list of dicts.

    Blank lines are skipped. Errors name the file and the 1-based line (``path:line``).

    Args:
        path: the file to read.
        validate_kind: when given, validate every record against this task kind (see
            :func:`ebft.data.records.validate_record`) and require unique ids.

    Raises:
        ValueError: for invalid JSON, a line that is not an object, or (with ``validate_kind``) a record
            that breaks the schema.
    """
    path = Path(path)
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON: {err.msg} (column {err.colno})") from err
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            if validate_kind is not None:
                validate_record(rec, validate_kind, where=where)
                if rec["id"] in seen:
                    raise RecordError(
                        where, "id", f"duplicates the id {rec['id']!r} of line {seen[rec['id']]}"
                    )
                seen[rec["id"]] = lineno
            rows.append(rec)
    return rows


def read_split(path: str | os.PathLike[str], kind: str) -> list[dict[str, Any]]:
    """Read a task split, validating every record against ``kind``; every job that reads a split calls this.

    Raises:
        RecordError: (a ValueError) for a record with a missing, null or empty required key, naming
            ``path:line`` and the key (see :func:`ebft.data.records.validate_record` for what may be empty).
        ValueError: for invalid JSON (``path:line``) or a split without records (``path: empty split``).
    """
    rows = read_jsonl(path, validate_kind=kind)
    if not rows:
        raise ValueError(f"{path}: empty split (no records)")
    return rows


def _atomic_write_text(path: Path, chunks: Iterable[str]) -> None:
    """Write text to ``path`` through a temporary file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` as JSON lines (UTF-8, keys in insertion order) atomically; return the row count.

    The file appears complete or not at all: the rows go to a temporary file in the same directory,
    which then replaces ``path``. A failure (e.g. a row that is not JSON-serialisable) leaves no
    temporary file behind and an existing ``path`` untouched.
    """
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    _atomic_write_text(Path(path), lines)
    return len(lines)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write one JSON document (indented, sorted keys, trailing newline) atomically."""
    _atomic_write_text(Path(path), [json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n"])


def interleave(lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Round-robin over several corpora, so that a prefix (a character or token budget) samples all of them."""
    out: list[dict[str, Any]] = []
    for i in range(max((len(x) for x in lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
    return out
