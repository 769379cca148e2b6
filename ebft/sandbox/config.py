"""Configuration and result types of a sandboxed run: :class:`SandboxConfig`, :class:`SandboxResult`, modes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .uids import default_uid_base

Status = Literal["passed", "failed", "timeout", "error"]

#: Isolation modes, strongest first. ``auto`` picks the first that works (root: namespaces, userns, setuid;
#: other users: userns, process).
MODES = ("namespaces", "userns", "setuid", "process")
#: Modes that run the program in fresh namespaces (private /tmp, read-only filesystem, no network).
_NS_MODES = ("namespaces", "userns")


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and options of one sandboxed run (all limits apply per program)."""

    timeout_s: float = 10.0  #: wall-clock limit; on expiry the whole process tree / pid namespace is SIGKILLed
    cpu_time_s: float | None = None  #: RLIMIT_CPU (soft; hard = soft + 1); None: ceil(timeout_s) + 1
    memory_mb: int | None = 1024  #: RLIMIT_AS (address space) in MiB; None: unlimited
    max_output_bytes: int = 64 * 1024  #: per stream (stdout, stderr) kept in the result: head + last 4 KiB
    max_file_mb: int = 16  #: RLIMIT_FSIZE: largest file the program may write
    max_processes: int = 32  #: RLIMIT_NPROC: processes + threads of the program's uid (per program in ns modes)
    max_open_files: int = 64  #: RLIMIT_NOFILE (also bounds memfd/shm memory: max_open_files * max_file_mb)
    tmpfs_mb: int = 64  #: size of the private /tmp (holds the working dir) in namespace modes
    mode: str = "auto"  #: one of MODES or "auto" (EBFT_SANDBOX_MODE overrides "auto")
    python: str | None = None  #: interpreter for the programs; None: sys.executable, else /usr/bin/python3
    hash_seed: int | None = 0  #: PYTHONHASHSEED; None: run with ``-I`` (isolated mode) and a random seed
    extra_env: Mapping[str, str] = field(default_factory=dict)  #: added to the minimal environment
    hide_paths: tuple[str, ...] = ()  #: extra directories replaced by an empty tmpfs (namespace modes)
    #: first uid/gid of the pool of unprivileged ids (root only); EBFT_SANDBOX_UID_BASE overrides the default
    uid_base: int = field(default_factory=default_uid_base)
    uid_count: int = 1024  #: size of that pool (one id per concurrently running program)
    cgroup: bool = True  #: also cap total memory and task count of each program with a cgroup, if writable

    def __post_init__(self) -> None:
        if self.mode != "auto" and self.mode not in MODES:
            raise ValueError(f"unknown sandbox mode {self.mode!r}; expected 'auto' or one of {MODES}")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if self.max_output_bytes < 0:
            raise ValueError("max_output_bytes must be >= 0")


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program.

    ``status``: ``passed`` (exit status 0 *and* the completion nonce written after the last statement arrived),
    ``failed`` (the program ran but did not complete: exception, non-zero exit, early exit, killed by a
    signal or a resource limit other than time), ``timeout`` (wall-clock or CPU-time limit) or ``error``
    (the sandbox itself could not run the program; not the program's fault).
    """

    status: Status
    reason: str
    exit_code: int | None  #: like subprocess: >= 0 exit status, < 0 killed by that signal, None: unknown
    duration_s: float  #: wall-clock time of the whole run including sandbox set-up and teardown
    stdout: str
    stderr: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    completed: bool = False  #: the completion nonce arrived (the program reached its last statement)
    cpu_s: float | None = None  #: user + system CPU time of the program (and its reaped children)
    mode: str = ""  #: isolation mode used

    @property
    def passed(self) -> bool:
        return self.status == "passed"
