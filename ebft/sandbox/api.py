"""The public entry points: run programs (or HumanEval-style checks) in the sandbox, one or many at a time."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from .config import SandboxConfig, SandboxResult
from .detect import _resolve
from .errors import SandboxUnavailableError
from .runner import _execute


def _config(config: SandboxConfig | None, overrides: Mapping[str, object]) -> SandboxConfig:
    cfg = config or SandboxConfig()
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def run_program(source: str, config: SandboxConfig | None = None, **overrides) -> SandboxResult:
    """Run one Python program in the sandbox.

    ``overrides`` are :class:`SandboxConfig` fields (``timeout_s=2``, ``memory_mb=256``,
    ``max_output_bytes=...``) applied on top of ``config``. The program passes if it exits with status 0
    after reaching its last statement.
    """
    cfg = _config(config, overrides)
    iso, python = _resolve(cfg)
    try:
        return _execute(source, cfg, iso.mode, python)[0]
    except SandboxUnavailableError as exc:
        return SandboxResult("error", str(exc), None, 0.0, "", "", mode=iso.mode)
    except OSError as exc:
        return SandboxResult("error", f"sandbox failure: {exc}", None, 0.0, "", "", mode=iso.mode)


def build_check_program(prompt_plus_completion: str, test: str, entry_point: str) -> str:
    """The HumanEval-style program: solution, the test code, then ``check(<entry_point>)``."""
    return f"{prompt_plus_completion}\n\n{test}\n\ncheck({entry_point})\n"


def check_program(
    prompt_plus_completion: str, test: str, entry_point: str, config: SandboxConfig | None = None, **overrides
) -> SandboxResult:
    """Run HumanEval-style tests against a completion; passed iff ``check(entry_point)`` returned normally."""
    return run_program(build_check_program(prompt_plus_completion, test, entry_point), config, **overrides)


def run_many(
    programs: Iterable[str], *, workers: int | None = None, config: SandboxConfig | None = None, **overrides
) -> list[SandboxResult]:
    """Run programs concurrently (at most ``workers`` at a time, default: CPU count); results keep input order."""
    cfg = _config(config, overrides)
    programs = list(programs)
    if not programs:
        return []
    _resolve(cfg)  # detect once before the threads start
    workers = max(1, min(workers or os.cpu_count() or 1, len(programs)))
    if workers == 1:
        return [run_program(p, cfg) for p in programs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ebft-sandbox") as pool:
        return list(pool.map(lambda p: run_program(p, cfg), programs))


def check_many(
    items: Iterable[tuple[str, str, str]],
    *,
    workers: int | None = None,
    config: SandboxConfig | None = None,
    **overrides,
) -> list[SandboxResult]:
    """:func:`check_program` over ``(prompt_plus_completion, test, entry_point)`` triples, concurrently."""
    programs = [build_check_program(*item) for item in items]
    return run_many(programs, workers=workers, config=config, **overrides)
