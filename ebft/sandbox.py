"""Run untrusted, model-generated Python programs in an isolated child process.

Everything in this project may run as root, so resource limits alone cannot stop a generated program from
deleting files, killing the pipeline or phoning home. Each program therefore runs like this::

    pipeline process (this module; never executes generated code)
      `- launcher: a small trusted Python process (``python -I -S -c <launcher>``), own session
           `- init (pid 1 of a fresh pid namespace)                     [namespace modes only]
                `- the program: ``python -s -P -B main.py`` as an unprivileged uid, own session

Isolation modes, strongest first (:func:`detect_isolation` probes them once per process and caches the result;
``SandboxConfig.mode`` or the ``EBFT_SANDBOX_MODE`` environment variable force one):

``namespaces`` (running as root)
    New mount, pid, network, IPC and UTS namespaces created by the root launcher. The whole filesystem is
    re-mounted read-only and nosuid (recursively), ``/tmp`` is a fresh size-capped tmpfs that holds the
    working directory, ``/dev/shm`` an empty read-only tmpfs, ``/proc`` a fresh procfs of the new pid
    namespace, directories the unprivileged uid cannot traverse but the interpreter needs (e.g. ``/root``
    for a pyenv Python) are replaced by an empty read-only tmpfs with only the interpreter's directories
    bound back in. The network namespace has only a loopback device, and it is down. The program then
    drops to a dedicated unprivileged uid/gid (one per concurrently running program, so RLIMIT_NPROC, which
    is counted per uid, is per program), clears its capability bounding set and sets ``no_new_privs``.
``userns`` (not root, or root without CAP_SYS_ADMIN)
    The same namespaces plus a user namespace, created by an unprivileged uid (root launchers first drop to a
    dedicated uid). The program is uid 0 *inside* the namespace only, with an empty capability bounding set
    and ``no_new_privs``, so it holds no capabilities after exec.
``setuid`` (root, namespaces unavailable)
    No namespaces: own session, dedicated unprivileged uid/gid, empty bounding set, ``no_new_privs``,
    private working directory under the system temp dir; all processes of that uid are SIGKILLed afterwards.
    Not isolated: the network, world-writable directories (``/tmp``, ``/var/tmp``, ``/dev/shm``), reading
    world-readable files, seeing other processes.
``process`` (not root, no namespaces)
    Only a separate process/session with resource limits and a clean environment. The program runs as the
    pipeline's own user: it can modify that user's files, signal the pipeline and use the network. A
    warning is emitted when this mode is selected.

When running as root with a writable cgroup hierarchy (v1 memory/pids, or v2 with both controllers delegated),
each run also gets its own cgroup capping the *total* memory (all processes, tmpfs, memfd/shm) and task count;
otherwise memory is bounded per process only (RLIMIT_AS) -- see ``Isolation.cgroup_limits``.

In every mode the program gets a wall-clock timeout (SIGKILL of the whole process tree / pid namespace),
RLIMIT_CPU/AS/FSIZE/NPROC/NOFILE/CORE, a fresh working directory that is removed afterwards, a minimal
environment (nothing inherited from the pipeline, so no ``HF_TOKEN``/``AWS_*``), ``/dev/null`` as stdin, and
its stdout/stderr are read incrementally into bounded buffers (head + tail) so a huge output cannot exhaust
the pipeline's memory.

"Passed" means the program ran to its very end: :func:`run_program` appends an epilogue that writes a random
per-run nonce to file descriptor 3 (a pipe only the pipeline reads), and a run passes only if the nonce
arrived *and* the exit status is 0. ``sys.exit(0)``/``os._exit(0)`` before the tests is "failed". See
``docs/sandbox.md`` for what is and is not isolated, the defaults and measured overheads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import inspect
import marshal
import os
import resource
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "MODES",
    "Isolation",
    "SandboxConfig",
    "SandboxResult",
    "SandboxUnavailableError",
    "build_check_program",
    "check_many",
    "check_program",
    "detect_isolation",
    "run_many",
    "run_program",
]

Status = Literal["passed", "failed", "timeout", "error"]

#: Isolation modes, strongest first. ``auto`` picks the first that works (root: namespaces, userns, setuid;
#: other users: userns, process).
MODES = ("namespaces", "userns", "setuid", "process")
_ROOT_CHAIN = ("namespaces", "userns", "setuid")
_USER_CHAIN = ("userns", "process")
_NS_MODES = ("namespaces", "userns")

#: Working directory of the program inside the namespace modes (lives in the private /tmp tmpfs).
_NS_WORKDIR = "/tmp/sandbox"
#: File descriptor on which the epilogue writes the completion nonce.
_SENTINEL_FD = 3
#: Extra wall-clock time the pipeline grants the launcher (interpreter start-up, set-up, teardown) before it
#: kills the launcher itself; the program's own timeout is enforced by the launcher.
_LAUNCH_GRACE_S = 10.0
#: After the launcher has gone, how long stray holders of stdout/stderr (only possible outside a pid
#: namespace) may keep the pipes open before the pipeline stops reading.
_DRAIN_S = 0.25
_READ_CHUNK = 65536
#: Tests only: make the launcher remount each mount point read-only (the path taken on kernels < 5.12).
_LEGACY_REMOUNT = False


class SandboxUnavailableError(RuntimeError):
    """No (or not the requested) isolation mode works on this machine."""


DEFAULT_UID_BASE = 1_950_000_000


def _env_int(name: str, default: int) -> int:
    """An integer environment variable, or ``default`` when unset or empty."""
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


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
    uid_base: int = field(default_factory=lambda: _env_int("EBFT_SANDBOX_UID_BASE", DEFAULT_UID_BASE))
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


# ----------------------------------------------------------------------------------------------------------
# Launcher: runs in its own interpreter (``python -I -S -c``), so it must be self-contained (imports inside,
# only cheap modules: ``signal`` and ``json`` would pull in ``enum``/``re`` and double the start-up time).
# ----------------------------------------------------------------------------------------------------------


def _launcher_main() -> None:  # pragma: no cover - executed in the launcher process
    import _signal
    import ctypes
    import fcntl
    import marshal
    import os
    import resource
    import sys
    import time

    cfg = marshal.loads(sys.stdin.buffer.read())
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    ctl = fcntl.fcntl(cfg["ctl_fd"], fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(cfg["ctl_fd"])
    sent = fcntl.fcntl(cfg["sentinel_fd"], fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(cfg["sentinel_fd"])
    libc = ctypes.CDLL(None, use_errno=True)
    ulong = ctypes.c_ulong
    mode = cfg["mode"]
    ns_mode = mode in ("namespaces", "userns")
    notes = []

    def emit(**msg):
        data = marshal.dumps(msg)
        os.write(ctl, len(data).to_bytes(4, "little") + data)

    def check(ret, what):
        if ret != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def enc(value):
        return None if value is None else os.fsencode(value)

    def mount(src, dst, fstype, flags, data=None):
        check(libc.mount(enc(src), enc(dst), enc(fstype), ulong(flags), enc(data)), f"mount {dst}")

    def prctl(option, arg, arg3=0):
        check(libc.prctl(ctypes.c_int(option), ulong(arg), ulong(arg3), ulong(0), ulong(0)), f"prctl {option}")

    def quietly(fn, *args):
        try:
            fn(*args)
        except OSError as exc:
            return exc
        return None

    def write_file(path, text):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    ms_rdonly, ms_nosuid, ms_nodev, ms_noexec = 1, 2, 4, 8
    ms_remount, ms_bind, ms_rec, ms_private = 32, 4096, 16384, 1 << 18

    def make_readonly():
        # mount_setattr(2) (Linux >= 5.12) flips every mount below / at once; keeps locked flags intact.
        attr = (ctypes.c_uint64 * 4)(1 | 2, 0, 0, 0)  # MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID
        if not cfg["legacy_remount"]:
            ret = libc.syscall(
                ctypes.c_long(442),  # __NR_mount_setattr (same number on all architectures)
                ctypes.c_int(-100),  # AT_FDCWD
                ctypes.c_char_p(b"/"),
                ctypes.c_uint(0x8000),  # AT_RECURSIVE
                attr,
                ctypes.c_size_t(32),
            )
            if ret == 0:
                return
            if ctypes.get_errno() not in (38, 22):  # ENOSYS, EINVAL: fall back to remounting each mount point
                check(ret, "mount_setattr /")
        optflags = {
            "nodev": ms_nodev,
            "noexec": ms_noexec,
            "noatime": 1024,
            "nodiratime": 2048,
            "relatime": 1 << 21,
            "strictatime": 1 << 24,
        }
        with open("/proc/self/mountinfo") as fh:
            entries = [line.split() for line in fh]
        for fields in entries:
            point = fields[4].encode().decode("unicode_escape")
            flags = ms_bind | ms_remount | ms_rdonly | ms_nosuid
            for opt in fields[5].split(","):
                flags |= optflags.get(opt, 0)
            try:
                mount(None, point, None, flags)
            except OSError as exc:
                if exc.errno not in (2, 13, 20):  # shadowed / unreachable mount points
                    raise

    def setup_fs():
        mount(None, "/", None, ms_rec | ms_private)
        for mask, keeps in cfg["masks"]:
            fds = []
            for keep in keeps:
                try:
                    fds.append((keep, os.open(keep, os.O_PATH | os.O_CLOEXEC)))
                except OSError as exc:
                    notes.append(f"cannot keep {keep} visible: {exc}")
            mount("tmpfs", mask, "tmpfs", ms_nosuid | ms_nodev, "mode=0755,size=1m")
            for keep, fd in fds:
                os.makedirs(keep, exist_ok=True)
                mount(f"/proc/self/fd/{fd}", keep, None, ms_bind | ms_rec)
                os.close(fd)
        try:
            mount("proc", "/proc", "proc", ms_nosuid | ms_nodev | ms_noexec)
            emit(e="proc", ok=True)
        except OSError as exc:
            notes.append(f"no fresh /proc for the pid namespace ({exc}); host /proc stays visible read-only")
        make_readonly()
        mount("tmpfs", "/tmp", "tmpfs", ms_nosuid | ms_nodev, f"mode=1777,size={cfg['tmpfs_bytes']}")
        if os.path.isdir("/dev/shm"):
            mount("tmpfs", "/dev/shm", "tmpfs", ms_nosuid | ms_nodev | ms_noexec | ms_rdonly, "mode=1777,size=4k")
        name = b"sandbox"
        libc.sethostname(name, ctypes.c_size_t(len(name)))

    def drop_bounding_set(required):
        try:
            with open("/proc/sys/kernel/cap_last_cap") as fh:
                last = int(fh.read())
        except OSError:
            last = 63
        for cap in range(last + 1):
            try:
                prctl(24, cap)  # PR_CAPBSET_DROP
            except OSError:
                if required:
                    raise
        quietly(prctl, 47, 4, 0)  # PR_CAP_AMBIENT(PR_CAP_AMBIENT_CLEAR_ALL); the bounding set stops re-raising

    def write_program(cwd, uid, gid):
        if not os.path.isdir(cwd):
            os.mkdir(cwd, 0o700)
        if uid is not None:
            os.chown(cwd, uid, gid)
        path = os.path.join(cwd, "main.py")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with open(fd, "wb") as fh:
            fh.write(cfg["source"])

    def exec_program(cwd):
        os.setsid()
        if sent != 3:
            os.dup2(sent, 3)
            os.close(sent)
        for res, soft, hard in cfg["rlimits"]:
            resource.setrlimit(res, (soft, hard))
        uid, gid = cfg["uid"], cfg["gid"]
        if uid is not None:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
        if cfg["drop_caps"]:
            drop_bounding_set(required=uid is None)
        if uid is not None:
            os.setresuid(uid, uid, uid)
        prctl(38, 1)  # PR_SET_NO_NEW_PRIVS
        prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL (after the uid change, which clears it)
        if cfg["kill_leftovers"]:
            quietly(os.kill, -1, 9)  # every leftover process of this uid (not ourselves)
        os.chdir(cwd)
        os.closerange(4, ctl)
        os.closerange(ctl + 1, 1 << 16)
        os.execve(cfg["python"], cfg["argv"], cfg["env"])

    def run_init():
        # pid 1 of the new pid namespace: start the program, reap everything, report the program's status.
        write_program(cfg["cwd"], cfg["uid"], cfg["gid"])
        pid = os.fork()
        if pid == 0:
            try:
                exec_program(cfg["cwd"])
            except BaseException as exc:
                emit(e="setup_error", msg=f"{type(exc).__name__}: {exc}"[:2000])
            os._exit(127)
        os.close(sent)
        # No signal handlers: pid 1 then ignores every signal sent from inside its namespace.
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
        if notes:
            emit(e="notes", notes=notes)
        while True:
            try:
                wpid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                os._exit(0)
            if wpid == pid:
                emit(e="exit", status=status)
                os._exit(0)

    try:
        prctl(1, 9)  # die with the pipeline
        for procs in cfg["cgroup_procs"]:  # everything forked from here on is charged to the run's cgroup
            write_file(procs, "0")
        if cfg["cgroup_procs"]:  # needs CAP_SYS_RESOURCE; the child raises its own score to 1000 anyway
            quietly(write_file, "/proc/self/oom_score_adj", "-1000")
        if mode == "userns":
            if cfg["pre_uid"] is not None:  # root without CAP_SYS_ADMIN: become the pool uid first
                os.setgroups([])
                os.setresgid(cfg["pre_uid"], cfg["pre_uid"], cfg["pre_uid"])
                os.setresuid(cfg["pre_uid"], cfg["pre_uid"], cfg["pre_uid"])
                prctl(4, 1)  # PR_SET_DUMPABLE: the uid change made /proc/self (uid_map, ...) root-owned
                prctl(1, 9)  # the uid change also cleared the parent-death signal
            uid, gid = os.geteuid(), os.getegid()
            check(
                libc.unshare(ctypes.c_int(0x10000000 | 0x20000 | 0x20000000 | 0x40000000 | 0x8000000 | 0x4000000)),
                "unshare",
            )
            write_file("/proc/self/setgroups", "deny")
            write_file("/proc/self/uid_map", f"0 {uid} 1")
            write_file("/proc/self/gid_map", f"0 {gid} 1")
        elif mode == "namespaces":
            check(libc.unshare(ctypes.c_int(0x20000 | 0x20000000 | 0x40000000 | 0x8000000 | 0x4000000)), "unshare")
    except OSError as exc:
        emit(e="setup_error", msg=f"{type(exc).__name__}: {exc}"[:2000])
        sys.exit(0)

    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            prctl(1, 9)
            if cfg["cgroup_procs"]:  # the OOM killer must pick the program (or its init), not the launcher
                quietly(write_file, "/proc/self/oom_score_adj", "1000")
            if ns_mode:
                setup_fs()
                run_init()
            else:
                write_program(cfg["cwd"], cfg["uid"], cfg["gid"])
                exec_program(cfg["cwd"])
        except BaseException as exc:
            emit(e="setup_error", msg=f"{type(exc).__name__}: {exc}"[:2000])
        os._exit(127)
    os.close(sent)
    emit(e="pid", pid=pid)
    timed_out = []

    def on_alarm(signum, frame):
        timed_out.append(True)
        quietly(os.kill, pid, 9)

    _signal.signal(_signal.SIGALRM, on_alarm)
    _signal.setitimer(_signal.ITIMER_REAL, cfg["timeout_s"])
    _, status, usage = os.wait4(pid, 0)
    _signal.setitimer(_signal.ITIMER_REAL, 0)
    elapsed = time.monotonic() - start
    if not ns_mode:
        quietly(os.killpg, pid, 9)
        if cfg["kill_leftovers"]:
            for _ in range(3):  # SIGKILL everything the program's uid still runs (escaped via setsid etc.)
                helper = os.fork()
                if helper == 0:
                    if quietly(os.setresuid, cfg["uid"], cfg["uid"], cfg["uid"]) is None:
                        quietly(os.kill, -1, 9)
                    os._exit(0)
                os.waitpid(helper, 0)
    # After a timeout in a pid namespace the program was never reaped by us: its CPU time is unknown.
    cpu = None if (timed_out and ns_mode) else usage.ru_utime + usage.ru_stime
    emit(e="done", status=status, timed_out=bool(timed_out), elapsed=elapsed, cpu=cpu)


_LAUNCHER_SOURCE: str | None = None


def _launcher_source() -> str:
    global _LAUNCHER_SOURCE
    if _LAUNCHER_SOURCE is None:
        _LAUNCHER_SOURCE = textwrap.dedent(inspect.getsource(_launcher_main)) + "\n_launcher_main()\n"
    return _LAUNCHER_SOURCE


# ----------------------------------------------------------------------------------------------------------
# Pipeline side.
# ----------------------------------------------------------------------------------------------------------


class _Capture:
    """Bounded capture of one stream: the first ``limit - tail`` bytes and the last ``tail`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tail_limit = min(4096, limit // 4)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - self.tail_limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data and self.tail_limit:
            self.tail += data
            if len(self.tail) > self.tail_limit:
                del self.tail[: len(self.tail) - self.tail_limit]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        if not self.truncated:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace")
        omitted = self.total - len(self.head) - len(self.tail)
        marker = f"\n... [{omitted} bytes omitted] ...\n".encode()
        return (bytes(self.head) + marker + bytes(self.tail)).decode("utf-8", "replace")


class _UidPool:
    """Unprivileged uids for root modes, one per running program, exclusive across processes (flock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[int] = set()
        self._dir: str | None = None

    def _lock_dir(self) -> str:
        if self._dir is None:
            base = "/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()
            path = os.path.join(base, "ebft-sandbox-uids")
            os.makedirs(path, mode=0o700, exist_ok=True)
            self._dir = path
        return self._dir

    @contextlib.contextmanager
    def acquire(self, base: int, count: int):
        with self._lock:
            lock_dir = self._lock_dir()
            for uid in range(base, base + count):
                if uid in self._held:
                    continue
                fd = os.open(os.path.join(lock_dir, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._held.add(uid)
                break
            else:
                raise SandboxUnavailableError(f"all {count} sandbox uids from {base} are in use")
        try:
            yield uid
        finally:
            with self._lock:
                self._held.discard(uid)
                os.close(fd)


_UIDS = _UidPool()


@dataclass(frozen=True)
class _CgroupParents:
    """Where per-run cgroups are created: cgroup v1 memory/pids hierarchies, or one v2 directory."""

    memory: str | None = None
    pids: str | None = None
    v2: str | None = None


_CGROUP_PARENTS: _CgroupParents | None = None
_CGROUP_SEQ = iter(range(1 << 62))


def _cgroup_parents() -> _CgroupParents:
    """Writable cgroup parents (detected once): our own cgroup in each hierarchy, if we may create children."""
    global _CGROUP_PARENTS
    if _CGROUP_PARENTS is not None:
        return _CGROUP_PARENTS
    parents = _CgroupParents()
    try:
        with open("/proc/self/mounts") as fh:
            mounts = [line.split() for line in fh]
        with open("/proc/self/cgroup") as fh:
            own = [line.rstrip("\n").split(":", 2) for line in fh]
    except OSError:
        mounts, own = [], []

    def usable(path: str) -> bool:
        probe = os.path.join(path, f"ebft-sandbox-probe-{os.getpid()}")
        try:
            os.mkdir(probe)
            os.rmdir(probe)
            return True
        except OSError:
            return False

    def parent_for(mountpoint: str, controller: str | None) -> str:
        for _, ctrls, path in own:
            if (controller is None and ctrls == "") or (controller and controller in ctrls.split(",")):
                candidate = os.path.join(mountpoint, path.lstrip("/"))
                if os.path.isdir(candidate):
                    return candidate
        return mountpoint

    found: dict[str, str] = {}
    for fields in mounts:
        if len(fields) >= 4 and fields[2] == "cgroup":
            for ctrl in ("memory", "pids"):
                if ctrl in fields[3].split(",") and ctrl not in found:
                    path = parent_for(fields[1], ctrl)
                    if usable(path):
                        found[ctrl] = path
        elif len(fields) >= 3 and fields[2] == "cgroup2" and "v2" not in found:
            path = parent_for(fields[1], None)
            try:
                with open(os.path.join(path, "cgroup.subtree_control")) as fh:
                    enabled = fh.read().split()
            except OSError:
                enabled = []
            if "memory" in enabled and "pids" in enabled and usable(path):
                found["v2"] = path
    if "memory" in found:
        parents = _CgroupParents(memory=found["memory"], pids=found.get("pids"))
    elif "v2" in found:
        parents = _CgroupParents(v2=found["v2"])
    _CGROUP_PARENTS = parents
    return parents


class _RunCgroup:
    """The cgroup(s) of one run: created before the launcher starts, removed after everything in it died."""

    def __init__(self, parents: _CgroupParents, memory_bytes: int | None, max_tasks: int) -> None:
        name = f"ebft-sandbox-{os.getpid()}-{next(_CGROUP_SEQ)}"
        self.dirs: list[str] = []
        self.events: str | None = None  # file with the oom_kill counter
        self.memory_bytes = memory_bytes
        try:
            if parents.v2:
                d = self._make(os.path.join(parents.v2, name))
                if memory_bytes is not None:
                    self._write(d, "memory.max", memory_bytes)
                    with contextlib.suppress(OSError):
                        self._write(d, "memory.swap.max", 0)
                self._write(d, "pids.max", max_tasks)
                self.events = os.path.join(d, "memory.events")
            if parents.memory:
                d = self._make(os.path.join(parents.memory, name))
                if memory_bytes is not None:
                    self._write(d, "memory.limit_in_bytes", memory_bytes)
                    with contextlib.suppress(OSError):
                        self._write(d, "memory.memsw.limit_in_bytes", memory_bytes)
                self.events = os.path.join(d, "memory.oom_control")
            if parents.pids:
                d = self._make(os.path.join(parents.pids, name))
                self._write(d, "pids.max", max_tasks)
        except OSError:
            self.remove()
            raise

    def _make(self, path: str) -> str:
        os.mkdir(path)
        self.dirs.append(path)
        return path

    @staticmethod
    def _write(d: str, name: str, value: int) -> None:
        with open(os.path.join(d, name), "w") as fh:
            fh.write(str(value))

    @property
    def procs(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def oom_killed(self) -> bool:
        if self.events is None:
            return False
        with contextlib.suppress(OSError, ValueError), open(self.events) as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value) > 0
        return False

    def remove(self) -> None:
        for d in reversed(self.dirs):
            deadline = time.monotonic() + 2.0
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY until the last (zombie) task is gone
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
        self.dirs = []


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
        import json

        data = json.loads(out.stdout)
        dirs = {os.path.realpath(d) for d in data["dirs"] if d and os.path.isdir(d)}
        dirs.add(os.path.dirname(os.path.realpath(path)))
        keep = sorted(d for d in dirs if not any(d != o and d.startswith(o.rstrip("/") + "/") for o in dirs))
        info = _Python(path, (data["v"][0], data["v"][1]), data["full"], tuple(keep))
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        info = None
    _PY_CACHE[path] = info
    return info


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


def _program_env(cfg: SandboxConfig, cwd: str) -> dict[str, str]:
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
    if cfg.hash_seed is None:
        flags = ["-I", "-B"]  # isolated mode: ignores PYTHON* variables, so the hash seed stays random
    else:
        # -I would also ignore PYTHONHASHSEED; -s/-P/-B are its other effects, and the environment is ours.
        flags = ["-s", "-B"] + (["-P"] if python.version >= (3, 11) else [])
    return [python.path, *flags, "main.py"]


def _rlimits(cfg: SandboxConfig, mode: str) -> list[tuple[int, int, int]]:
    cpu = int(cfg.cpu_time_s) if cfg.cpu_time_s is not None else int(cfg.timeout_s + 0.999) + 1
    cpu = max(cpu, 1)
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
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                n += os.stat(f"/proc/{entry}").st_uid == uid
    return n


def _read_messages(buf: bytes) -> list[dict]:
    msgs = []
    while len(buf) >= 4:
        size = int.from_bytes(buf[:4], "little")
        if len(buf) < 4 + size:
            break
        with contextlib.suppress(ValueError, EOFError, TypeError):
            msgs.append(marshal.loads(buf[4 : 4 + size]))
        buf = buf[4 + size :]
    return msgs


def _last_error_line(stderr: str) -> str:
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
            "legacy_remount": _LEGACY_REMOUNT,
        }
        return _spawn(launch, cfg, nonce, start, cgroup)


def _remove_tree(path: str) -> None:
    def onerror(func, p, exc_info):  # a program may leave directories without write/exec permission
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
    sent_r, sent_w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    launch["sentinel_fd"], launch["ctl_fd"] = sent_w, ctl_w
    mode = launch["mode"]
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _launcher_source()],
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
        deadline = start + cfg.timeout_s + _LAUNCH_GRACE_S
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
    for msg in _read_messages(bytes(ctl)):
        if msg.get("e") == "pid":
            with contextlib.suppress(OSError):
                os.kill(msg["pid"], signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)


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
        return result("timeout", f"sandbox did not finish within {cfg.timeout_s + _LAUNCH_GRACE_S:g} s; killed", None)
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


def _cpu_limit(cfg: SandboxConfig) -> int:
    return max(int(cfg.cpu_time_s), 1) if cfg.cpu_time_s is not None else int(cfg.timeout_s + 0.999) + 1


# ----------------------------------------------------------------------------------------------------------
# Detection.
# ----------------------------------------------------------------------------------------------------------

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


def _python_candidates(requested: str | None) -> list[str]:
    if requested:
        return [requested]
    cands = [sys.executable, "/usr/bin/python3", shutil.which("python3") or ""]
    out: list[str] = []
    for c in cands:
        if c and c not in out and os.path.exists(c):
            out.append(c)
    return out


def _resolve(cfg: SandboxConfig) -> tuple[Isolation, _Python]:
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


# ----------------------------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------------------------


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
