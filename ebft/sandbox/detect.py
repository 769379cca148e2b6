"""Isolation-mode detection: which mode (and interpreter) works on this machine, probed once and cached.

:func:`detect_isolation` tries the modes of the fallback chain in order (root: ``namespaces`` → ``userns`` →
``setuid``; other users: ``userns`` → ``process``), each with every candidate interpreter, by running a
probe program through the complete sandbox path. The first combination that passes is cached per
(requested mode, requested interpreter, cgroup) key. ``SandboxConfig.mode`` or the ``EBFT_SANDBOX_MODE``
environment variable force one mode.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from dataclasses import dataclass

from .cgroups import _cgroup_parents, _CgroupParents
from .config import _NS_MODES, MODES, SandboxConfig
from .errors import SandboxUnavailableError
from .interpreter import _Python, _python_candidates, _python_info
from .runner import _execute

#: Fallback chains of ``auto``: root never falls back to ``process`` (it would run generated code as root).
_ROOT_CHAIN = ("namespaces", "userns", "setuid")
_USER_CHAIN = ("userns", "process")


@dataclass(frozen=True)
class Isolation:
    """What the selected isolation mode provides (see :func:`detect_isolation`)."""

    mode: str
    python: str
    python_version: str
    namespaces: tuple[str, ...]
    unprivileged_uid: bool
    read_only_root: bool
    private_tmp: bool
    network_isolated: bool
    fresh_proc: bool
    cgroup_limits: bool = False  #: total memory and task count of each run capped by a per-run cgroup
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        ns = ",".join(self.namespaces) or "none"
        return (
            f"mode={self.mode} namespaces={ns} unprivileged_uid={self.unprivileged_uid} "
            f"read_only_root={self.read_only_root} private_tmp={self.private_tmp} "
            f"network_isolated={self.network_isolated} fresh_proc={self.fresh_proc} "
            f"cgroup_limits={self.cgroup_limits} python={self.python}"
        )


_DETECT_LOCK = threading.Lock()
_DETECTED: dict[tuple[str, str | None, bool], tuple[Isolation, _Python]] = {}
_PROBE_SOURCE = "import os\nprint('probe', os.getuid())\n"


def _describe(mode: str, python: _Python, notes: tuple[str, ...], fresh_proc: bool, cgroup: bool) -> Isolation:
    root = os.geteuid() == 0
    namespaces = {
        "namespaces": ("mount", "pid", "net", "ipc", "uts"),
        "userns": ("user", "mount", "pid", "net", "ipc", "uts"),
    }.get(mode, ())
    return Isolation(
        mode=mode,
        python=python.path,
        python_version=python.version_str,
        namespaces=namespaces,
        unprivileged_uid=mode != "process" or not root,
        read_only_root=mode in _NS_MODES,
        private_tmp=mode in _NS_MODES,
        network_isolated=mode in _NS_MODES,
        fresh_proc=fresh_proc,
        cgroup_limits=cgroup,
        notes=notes,
    )


def _resolve(cfg: SandboxConfig) -> tuple[Isolation, _Python]:
    """The isolation and interpreter for ``cfg``: from the cache, else probed (under a lock)."""
    requested = cfg.mode
    if requested == "auto":
        requested = os.environ.get("EBFT_SANDBOX_MODE", "auto") or "auto"
        if requested != "auto" and requested not in MODES:
            raise SandboxUnavailableError(f"EBFT_SANDBOX_MODE={requested!r} is not one of {MODES}")
    key = (requested, cfg.python, cfg.cgroup)
    with _DETECT_LOCK:
        if key in _DETECTED:
            return _DETECTED[key]
        chain = (_ROOT_CHAIN if os.geteuid() == 0 else _USER_CHAIN) if requested == "auto" else (requested,)
        if os.geteuid() == 0 and "process" in chain:
            raise SandboxUnavailableError("mode 'process' would run generated code as root; refusing")
        failures = []
        probe_cfg = SandboxConfig(timeout_s=20.0, memory_mb=None)
        for mode in chain:
            for path in _python_candidates(cfg.python):
                python = _python_info(path)
                if python is None:
                    failures.append(f"{mode} with {path}: interpreter does not run")
                    continue
                res, msgs = _execute(_PROBE_SOURCE, probe_cfg, mode, python)
                if res.passed:
                    notes: list[str] = []
                    for m in msgs:
                        notes.extend(m.get("notes", []))
                    if path != (cfg.python or sys.executable):
                        notes.append(
                            f"using {path} because {cfg.python or sys.executable} is not usable by the sandbox uid"
                        )
                    fresh_proc = any(m.get("e") == "proc" for m in msgs)
                    parents = _cgroup_parents() if cfg.cgroup and os.geteuid() == 0 else _CgroupParents()
                    cgroup = bool(parents.memory or parents.v2)
                    iso = _describe(mode, python, tuple(notes), fresh_proc, cgroup)
                    if mode == "process":
                        warnings.warn(
                            "ebft.sandbox: using mode 'process': generated programs run as the pipeline's own user "
                            "without filesystem, network or signal isolation (no namespaces available, not root)",
                            RuntimeWarning,
                            stacklevel=3,
                        )
                    _DETECTED[key] = (iso, python)
                    return iso, python
                failures.append(f"{mode} with {path}: {res.status}: {res.reason} {res.stderr[-300:]}".strip())
        raise SandboxUnavailableError("no usable sandbox mode:\n  " + "\n  ".join(failures))


def detect_isolation(config: SandboxConfig | None = None) -> Isolation:
    """The isolation mode used for ``config`` (probed once per mode/interpreter request, then cached).

    Raises :class:`SandboxUnavailableError` if no mode works (or the forced mode does not).
    """
    return _resolve(config or SandboxConfig())[0]
