"""The (trusted) interpreter that runs generated programs: its version and the directories it needs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class _Python:
    path: str
    version: tuple[int, int]
    version_str: str
    keep: tuple[str, ...]  # directories the interpreter needs at start-up


_PY_INFO_CODE = (
    "import json, os, sys; print(json.dumps({'v': list(sys.version_info[:2]), 'full': sys.version.split()[0],"
    " 'dirs': [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,"
    " os.path.dirname(os.path.realpath(sys.executable))] + sys.path}))"
)
_PY_CACHE: dict[str, _Python | None] = {}


def _python_info(path: str) -> _Python | None:
    """Version and start-up directories of a (trusted) interpreter; None if it cannot be run."""
    if path in _PY_CACHE:
        return _PY_CACHE[path]
    info = None
    try:
        out = subprocess.run(
            [path, "-s", "-c", _PY_INFO_CODE],
            capture_output=True,
            timeout=30,
            check=True,
            env={"PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
        )
        data = json.loads(out.stdout)
        dirs = {os.path.realpath(d) for d in data["dirs"] if d and os.path.isdir(d)}
        dirs.add(os.path.dirname(os.path.realpath(path)))
        keep = sorted(d for d in dirs if not any(d != o and d.startswith(o.rstrip("/") + "/") for o in dirs))
        info = _Python(path, (data["v"][0], data["v"][1]), data["full"], tuple(keep))
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        info = None
    _PY_CACHE[path] = info
    return info


def _python_candidates(requested: str | None) -> list[str]:
    """Interpreters to try, in order: ``requested``, else ``sys.executable``, ``/usr/bin/python3``, ``python3``."""
    if requested:
        return [requested]
    cands = [sys.executable, "/usr/bin/python3", shutil.which("python3") or ""]
    out: list[str] = []
    for c in cands:
        if c and c not in out and os.path.exists(c):
            out.append(c)
    return out
