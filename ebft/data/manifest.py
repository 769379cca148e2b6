"""The data manifest that ``prepare-data`` writes next to a task's splits, and its checks.

``{data_dir}/manifest.json`` (written by :func:`ebft.data.prepare.prepare_task`) names, per split, the file,
its row count and its SHA-256 digest, and the task's record ``kind``. Jobs that read a split use it to

- refuse a split whose bytes changed after ``prepare-data`` (:func:`verify_split`: an edited or truncated
  ``train.jsonl`` would otherwise be trained on without anyone noticing), and
- learn the record kind of a split they get without a task spec (:func:`manifest_kind`: the tokenizer and
  pretraining corpora).

A split without a manifest (prepared by an older version, or by hand) is accepted with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 24) -> str:
    """The hex SHA-256 digest of a file, read in chunks (weight files can be larger than memory wants)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def read_manifest(data_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of ``data_dir``, or ``None`` when it has none.

    Raises:
        ValueError: naming the manifest when it is not a JSON object.
    """
    path = Path(data_dir) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON: {err.msg} (line {err.lineno}); rerun prepare_data") from err
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(manifest).__name__}; rerun prepare_data")
    return manifest


def _entry(manifest: dict[str, Any], split_path: Path) -> dict[str, Any] | None:
    """The manifest's ``files`` entry of ``split_path`` (matched by file name), if any."""
    files = manifest.get("files")
    entries = files.values() if isinstance(files, dict) else ()
    return next((e for e in entries if isinstance(e, dict) and e.get("file") == split_path.name), None)


def manifest_kind(split_path: str | os.PathLike[str]) -> str | None:
    """The record kind of the task whose split is ``split_path``, from the manifest next to it (or ``None``)."""
    manifest = read_manifest(Path(split_path).parent)
    return None if manifest is None else manifest.get("kind")


def verify_split(split_path: str | os.PathLike[str]) -> None:
    """Check that ``split_path`` still has the SHA-256 digest its manifest recorded.

    Logs a warning (and accepts the file) when there is no manifest or the manifest does not list the file.

    Raises:
        ValueError: naming the file when its digest differs from the manifest's.
    """
    path = Path(split_path)
    manifest = read_manifest(path.parent)
    if manifest is None:
        log.warning("%s: no %s next to it (data prepared by an older version or by hand); its content is "
                    "not verified", path, MANIFEST_NAME)
        return
    entry = _entry(manifest, path)
    if entry is None or "sha256" not in entry:
        log.warning("%s: not listed with a sha256 in %s; its content is not verified", path,
                    path.parent / MANIFEST_NAME)
        return
    if sha256_file(path) != entry["sha256"]:
        raise ValueError(f"{path}: was modified after prepare-data; rerun prepare_data (its SHA-256 differs "
                         f"from {path.parent / MANIFEST_NAME})")
