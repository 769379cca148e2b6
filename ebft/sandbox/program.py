"""What a sandboxed program is given: its command line, its environment and (namespace modes) its masks."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from .config import SandboxConfig
from .interpreter import _Python


def _program_env(cfg: SandboxConfig, cwd: str) -> dict[str, str]:
    """The program's whole environment: built from scratch (nothing inherited from the pipeline)."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": cwd,
        "TMPDIR": cwd,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONNOUSERSITE": "1",
        "PYTHONSAFEPATH": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
    }
    if cfg.hash_seed is not None:
        env["PYTHONHASHSEED"] = str(cfg.hash_seed)
    env.update({str(k): str(v) for k, v in cfg.extra_env.items()})
    return env


def _program_argv(cfg: SandboxConfig, python: _Python) -> list[str]:
    """``python <flags> main.py``."""
    if cfg.hash_seed is None:
        flags = ["-I", "-B"]  # isolated mode: ignores PYTHON* variables, so the hash seed stays random
    else:
        # -I would also ignore PYTHONHASHSEED; -s/-P/-B are its other effects, and the environment is ours.
        flags = ["-s", "-B"] + (["-P"] if python.version >= (3, 11) else [])
    return [python.path, *flags, "main.py"]


def _blocked_ancestor(path: str) -> str | None:
    """First directory on ``path`` that a foreign unprivileged uid cannot traverse (no o+x), if any."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/" + "/".join(parts[:i])
        try:
            st = os.stat(prefix)
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_IXOTH:
            return prefix
    return None


def _masks(python: _Python, hide: Iterable[str], foreign_uid: bool) -> list[tuple[str, list[str]]]:
    """Directories to replace by an empty tmpfs, each with the interpreter directories to bind back in."""
    masks: dict[str, list[str]] = {}
    for h in hide:
        h = os.path.realpath(h)
        if os.path.isdir(h) and h != "/":
            masks.setdefault(h, [])
    if foreign_uid:
        for keep in python.keep:
            blocked = _blocked_ancestor(keep)
            if blocked is not None:
                masks.setdefault(blocked, [])
    for mask, keeps in masks.items():
        keeps.extend(k for k in python.keep if k == mask or k.startswith(mask.rstrip("/") + "/"))
    return sorted(masks.items())
