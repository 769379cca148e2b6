"""Running one program in a given isolation mode: the pipeline's side of a run.

:func:`_execute` appends the completion epilogue, takes a pool uid and a per-run cgroup, builds the launch
configuration and hands it to :func:`_spawn`, which starts the launcher (``launcher.py``, run by path),
reads its control pipe, the sentinel pipe and the bounded stdout/stderr captures, enforces the pipeline's
back-stop deadline and turns what it saw into a :class:`~ebft.sandbox.config.SandboxResult`
(:func:`_classify`). The pipeline process itself never executes generated code.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

from .capture import _Capture
from .cgroups import _cgroup_parents, _RunCgroup
from .config import _NS_MODES, SandboxConfig, SandboxResult, Status
from .interpreter import _Python
from .limits import _cpu_limit, _rlimits
from .program import _masks, _program_argv, _program_env
from .uids import _UIDS

#: The launcher script, run by path (``python -I -S <_LAUNCHER>``) so that ``ps`` shows a short command line.
_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.py")
#: Working directory of the program inside the namespace modes (lives in the private /tmp tmpfs).
_NS_WORKDIR = "/tmp/sandbox"
#: File descriptor on which the epilogue writes the completion nonce.
_SENTINEL_FD = 3
#: After the launcher has gone, how long stray holders of stdout/stderr (only possible outside a pid
#: namespace) may keep the pipes open before the pipeline stops reading.
_DRAIN_S = 0.25
_READ_CHUNK = 65536


def _setting(name: str) -> Any:
    """A tunable defined in ``ebft/sandbox/__init__.py`` (``_LAUNCH_GRACE_S``, ``_LEGACY_REMOUNT``).

    Read from the package at call time, so that ``monkeypatch.setattr(ebft.sandbox, name, ...)`` takes effect.
    """
    return getattr(sys.modules[__package__], name)


def _execute(source: str, cfg: SandboxConfig, mode: str, python: _Python) -> tuple[SandboxResult, list[dict]]:
    """Append the completion epilogue to ``source`` and run it in ``mode``; also returns the launcher messages."""
    nonce = secrets.token_hex(16)
    source = f"{source}\n\n\nimport os as _ebft_os\n_ebft_os.write({_SENTINEL_FD}, b'{nonce}')\n"
    root = os.geteuid() == 0
    ns_mode = mode in _NS_MODES
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        uid = stack.enter_context(_UIDS.acquire(cfg.uid_base, cfg.uid_count)) if root else None
        if ns_mode:
            cwd = _NS_WORKDIR
        else:
            cwd = tempfile.mkdtemp(prefix="ebft-sandbox-")
            stack.callback(_remove_tree, cwd)
            if uid is not None:
                os.chown(cwd, uid, uid)
        cgroup = None
        if cfg.cgroup and root:
            parents = _cgroup_parents()
            if parents.memory or parents.v2 or parents.pids:
                memory = None
                if cfg.memory_mb is not None:  # program + private /tmp + the launcher/init interpreters
                    memory = (cfg.memory_mb + (cfg.tmpfs_mb if ns_mode else 0) + 64) * 2**20
                try:
                    cgroup = _RunCgroup(parents, memory, cfg.max_processes + 3)
                    stack.callback(cgroup.remove)
                except OSError as exc:  # degrade to rlimits only rather than failing every program
                    warnings.warn(f"ebft.sandbox: cannot create a cgroup for this run: {exc}", RuntimeWarning, 2)
        launch = {
            "mode": mode,
            "source": source.encode("utf-8", "surrogateescape"),
            "python": python.path,
            "argv": _program_argv(cfg, python),
            "env": _program_env(cfg, cwd),
            "cwd": cwd,
            "rlimits": _rlimits(cfg, mode),
            "uid": uid if mode in ("namespaces", "setuid") else None,
            "gid": uid if mode in ("namespaces", "setuid") else None,
            "pre_uid": uid if mode == "userns" else None,
            "drop_caps": mode != "process",
            "kill_leftovers": mode == "setuid",
            "masks": _masks(python, cfg.hide_paths, foreign_uid=root and mode != "userns") if ns_mode else [],
            "tmpfs_bytes": cfg.tmpfs_mb * 2**20,
            "timeout_s": float(cfg.timeout_s),
            "cgroup_procs": cgroup.procs if cgroup else [],
            "legacy_remount": _setting("_LEGACY_REMOUNT"),
        }
        return _spawn(launch, cfg, nonce, start, cgroup)


def _remove_tree(path: str) -> None:
    """Remove a (non-namespace) working directory, even one the program left without write/exec permission."""

    def onerror(func, p, exc_info):
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        with contextlib.suppress(OSError):
            func(p)

    shutil.rmtree(path, onerror=onerror)
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


def _spawn(
    launch: dict, cfg: SandboxConfig, nonce: str, start: float, cgroup: _RunCgroup | None = None
) -> tuple[SandboxResult, list[dict]]:
    """Start the launcher with ``launch`` on its stdin, collect its output and messages, classify the run."""
    sent_r, sent_w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    launch["sentinel_fd"], launch["ctl_fd"] = sent_w, ctl_w
    mode = launch["mode"]
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", _LAUNCHER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(sent_w, ctl_w),
            start_new_session=True,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        )
    except OSError as exc:
        for fd in (sent_r, sent_w, ctl_r, ctl_w):
            os.close(fd)
        return SandboxResult(
            "error", f"sandbox launcher could not start: {exc}", None, time.monotonic() - start, "", "", mode=mode
        ), []
    os.close(sent_w)
    os.close(ctl_w)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out, err = _Capture(cfg.max_output_bytes), _Capture(cfg.max_output_bytes)
    sentinel, ctl = bytearray(), bytearray()
    killed_by_pipeline = False
    try:
        try:
            proc.stdin.write(marshal.dumps(launch))
            proc.stdin.close()
        except OSError:
            pass  # the launcher died early; reported below through the missing messages
        sel = selectors.DefaultSelector()
        sinks = {proc.stdout.fileno(): out.feed, proc.stderr.fileno(): err.feed}
        for fd in (*sinks, sent_r, ctl_r):
            sel.register(fd, selectors.EVENT_READ)
        deadline = start + cfg.timeout_s + _setting("_LAUNCH_GRACE_S")
        drain_until = None
        while sel.get_map():
            now = time.monotonic()
            limit = deadline if drain_until is None else min(deadline, drain_until)
            if now >= limit:
                if drain_until is None or now >= deadline:
                    killed_by_pipeline = drain_until is None
                    _kill_launcher(proc, ctl)
                break
            for key, _ in sel.select(limit - now):
                fd = key.fd
                data = os.read(fd, _READ_CHUNK)
                if not data:
                    sel.unregister(fd)
                    if fd == ctl_r:
                        drain_until = time.monotonic() + _DRAIN_S
                elif fd in sinks:
                    sinks[fd](data)
                elif fd == sent_r:
                    if len(sentinel) < 4096:
                        sentinel += data[: 4096 - len(sentinel)]
                elif len(ctl) < 1 << 20:
                    ctl += data
        sel.close()
    finally:
        for fd in (sent_r, ctl_r):
            os.close(fd)
        proc.stdout.close()
        proc.stderr.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _kill_launcher(proc, ctl)
            proc.wait()
    duration = time.monotonic() - start
    msgs = _read_messages(bytes(ctl))
    oom = cgroup.oom_killed() if cgroup else False
    completed = nonce.encode() in sentinel
    return _classify(msgs, completed, out, err, duration, mode, cfg, killed_by_pipeline, oom), msgs


def _kill_launcher(proc: subprocess.Popen, ctl: bytearray) -> None:
    """SIGKILL the launcher's child (init or the program) and the launcher's process group."""
    for msg in _read_messages(bytes(ctl)):
        if msg.get("e") == "pid":
            with contextlib.suppress(OSError):
                os.kill(msg["pid"], signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def _read_messages(buf: bytes) -> list[dict]:
    """Decode the launcher's control messages (4-byte little-endian length + marshal); a torn tail is dropped."""
    msgs = []
    while len(buf) >= 4:
        size = int.from_bytes(buf[:4], "little")
        if len(buf) < 4 + size:
            break
        with contextlib.suppress(ValueError, EOFError, TypeError):
            msgs.append(marshal.loads(buf[4 : 4 + size]))
        buf = buf[4 + size :]
    return msgs


def _classify(
    msgs: list[dict],
    completed: bool,
    out: _Capture,
    err: _Capture,
    duration: float,
    mode: str,
    cfg: SandboxConfig,
    killed_by_pipeline: bool,
    oom: bool = False,
) -> SandboxResult:
    """The outcome category and reason of a run, from the launcher's messages and what the pipeline saw."""
    by_kind: dict[str, dict] = {}
    for msg in msgs:
        by_kind.setdefault(msg.get("e", ""), msg)
    done = by_kind.get("done", {})
    cpu = done.get("cpu")
    stderr = err.text()

    def result(status: Status, reason: str, exit_code: int | None) -> SandboxResult:
        return SandboxResult(
            status,
            reason,
            exit_code,
            duration,
            out.text(),
            stderr,
            out.truncated,
            err.truncated,
            completed and status == "passed",
            cpu,
            mode,
        )

    if "setup_error" in by_kind:
        return result("error", f"sandbox set-up failed: {by_kind['setup_error'].get('msg', '?')}", None)
    if killed_by_pipeline:
        grace = _setting("_LAUNCH_GRACE_S")
        return result("timeout", f"sandbox did not finish within {cfg.timeout_s + grace:g} s; killed", None)
    if done.get("timed_out"):
        return result("timeout", f"wall-clock timeout ({cfg.timeout_s:g} s)", -signal.SIGKILL)
    status = by_kind["exit"]["status"] if "exit" in by_kind else done.get("status")
    if status is None:
        return result("error", "sandbox launcher ended without reporting the program's status", None)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        sig = -code
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu is not None and cpu >= _cpu_limit(cfg)):
            return result("timeout", f"CPU time limit ({_cpu_limit(cfg)} s) exceeded", code)
        if sig == signal.SIGKILL and oom:
            return result("failed", "out of memory: the sandbox's cgroup memory limit was exceeded", code)
        detail = _last_error_line(stderr)
        return result("failed", f"killed by {_signal_name(sig)}" + (f" ({detail})" if detail else ""), code)
    if code == 0 and completed:
        return result("passed", "ran to completion", 0)
    if code == 0:
        return result(
            "failed", "exited with status 0 before reaching the end of the program (the tests did not complete)", 0
        )
    detail = _last_error_line(stderr) or "no error output"
    if completed:
        return result("failed", f"reached the end but exited with status {code}: {detail}", code)
    return result("failed", f"exit status {code}: {detail}", code)


def _last_error_line(stderr: str) -> str:
    """The last non-empty line of stderr (typically the exception), at most 300 characters."""
    for line in reversed(stderr.strip().splitlines()):
        line = line.strip()
        if line and not line.startswith("... ["):
            return line[:300]
    return ""


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"
