"""Unstructured code documents from the running interpreter's standard library (the offline stand-in
for SwallowCode).

The ``*.py`` files under ``sysconfig.get_paths()["stdlib"]`` (without test directories, ``site-packages``,
caches and data-table packages, see :data:`EXCLUDED_DIRS`) are listed in sorted order and assigned to a
split by a hash of their relative path, so the valid and test splits hold out whole files. Each file is
cut at line boundaries into documents of at most ``max_chars`` characters. A split's documents are
shuffled with the seed and the first ``sizes[split]`` are kept. Records: ``id``
(``"{relative path}#{chunk index}"``), ``question`` (``""``), ``answer`` (the document text) and ``path``
(the relative path, an extra key).
"""

from __future__ import annotations

import hashlib
import os
import random
import sysconfig
from pathlib import Path
from typing import Any

from ebft.data.records import SPLITS, check_sizes

EXCLUDED_DIRS: frozenset[str] = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "test_support",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "pydoc_data",
        "encodings",
    }
)
"""Directory names that are never entered (tests, installed packages, and the two data-table packages
``pydoc_data`` (one 750 kB string literal) and ``encodings`` (generated codec tables))."""

DEFAULT_MAX_CHARS = 2000


def stdlib_root() -> Path:
    """The standard-library directory of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_source_files(root: Path) -> list[str]:
    """Relative POSIX paths of the ``*.py`` files under ``root``, sorted, without tests and packages."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py") and not name.startswith("test_"):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def split_of(rel_path: str) -> str:
    """The split of a file, from a hash of its relative path: 5 % test, 5 % valid, 90 % train."""
    bucket = int(hashlib.sha256(rel_path.encode("utf-8")).hexdigest()[:8], 16) % 20
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` at line boundaries into pieces of at most ``max_chars`` characters.

    A single line longer than ``max_chars`` is cut into ``max_chars``-sized pieces. Pieces that hold only
    whitespace are dropped.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be a positive integer, got {max_chars!r}")
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        parts = [line[i : i + max_chars] for i in range(0, len(line), max_chars)] or [line]
        for part in parts:
            if size + len(part) > max_chars and current:
                pieces.append("".join(current))
                current, size = [], 0
            current.append(part)
            size += len(part)
    if current:
        pieces.append("".join(current))
    return [piece for piece in pieces if piece.strip()]


def _read_source(path: Path) -> str | None:
    """The file's text, or None when it is not valid UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def collect_documents(root: Path, max_chars: int) -> dict[str, list[dict[str, Any]]]:
    """Every document of every split, in sorted file order."""
    docs: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for rel_path in list_source_files(root):
        text = _read_source(root / rel_path)
        if text is None:
            continue
        split = split_of(rel_path)
        for index, piece in enumerate(chunk_text(text, max_chars)):
            docs[split].append(
                {"id": f"{rel_path}#{index}", "question": "", "answer": piece, "path": rel_path}
            )
    return docs


def generate(
    sizes: dict[str, int],
    seed: int,
    *,
    max_chars: int = DEFAULT_MAX_CHARS,
    root: str | os.PathLike[str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Generate unstructured code documents for the train/valid/test splits.

    Args:
        sizes: number of documents per split.
        seed: random seed of the per-split shuffle (the file-to-split assignment does not depend on it).
        max_chars: the longest document, in characters.
        root: the directory to read instead of the standard library (for tests).

    Raises:
        ValueError: for bad sizes, or if a split has fewer documents than requested.
    """
    sizes = check_sizes(sizes)
    docs = collect_documents(Path(root) if root is not None else stdlib_root(), max_chars)
    out: dict[str, list[dict[str, Any]]] = {}
    for offset, split in enumerate(SPLITS):
        pool = docs[split]
        if len(pool) < sizes[split]:
            raise ValueError(
                f"split {split!r} has only {len(pool)} documents of at most {max_chars} characters, "
                f"but sizes[{split!r}] = {sizes[split]}"
            )
        random.Random(f"{seed}:{offset}").shuffle(pool)
        out[split] = pool[: sizes[split]]
    return out
