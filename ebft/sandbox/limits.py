"""Resource limits (rlimits) of a sandboxed program, applied by the launcher just before exec."""

from __future__ import annotations

import contextlib
import os
import resource

from .config import SandboxConfig


def _cpu_limit(cfg: SandboxConfig) -> int:
    """RLIMIT_CPU soft limit in seconds: ``cpu_time_s``, else ``ceil(timeout_s) + 1`` (at least 1)."""
    return max(int(cfg.cpu_time_s), 1) if cfg.cpu_time_s is not None else int(cfg.timeout_s + 0.999) + 1


def _rlimits(cfg: SandboxConfig, mode: str) -> list[tuple[int, int, int]]:
    """``(resource, soft, hard)`` triples for the program in ``mode``."""
    cpu = _cpu_limit(cfg)
    nproc = cfg.max_processes
    if mode == "process":  # RLIMIT_NPROC counts all processes of our own uid: allow that many more
        nproc += _count_processes(os.getuid())
    limits = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_FSIZE, cfg.max_file_mb * 2**20, cfg.max_file_mb * 2**20),
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_NOFILE, cfg.max_open_files, cfg.max_open_files),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    if cfg.memory_mb is not None:
        limits.append((resource.RLIMIT_AS, cfg.memory_mb * 2**20, cfg.memory_mb * 2**20))
    return limits


def _count_processes(uid: int) -> int:
    """Live processes owned by ``uid``."""
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                n += os.stat(f"/proc/{entry}").st_uid == uid
    return n
