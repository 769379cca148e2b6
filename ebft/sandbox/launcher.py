"""The sandbox launcher: a small trusted process between the pipeline and one generated program.

This file is a script, not part of the importable API. The pipeline (:mod:`ebft.sandbox.runner`) runs it by
path, in its own session, as ``<python> -I -S /abs/path/to/ebft/sandbox/launcher.py``, so the process list
shows only that short command line. It must therefore stay self-contained: it never imports ``ebft`` (with
``-I -S`` the package is not importable there anyway) and uses only cheap standard-library modules
(``signal`` and ``json`` would pull in ``enum``/``re`` and double the start-up time, hence ``_signal`` and
``marshal``).

Protocol with the pipeline:

* **stdin**: one ``marshal``-encoded dict, read to EOF: ``mode``, ``source`` (bytes of ``main.py``),
  ``python``, ``argv``, ``env``, ``cwd``, ``rlimits`` (``(resource, soft, hard)`` triples), ``uid``/``gid``
  (drop to them before exec, or None), ``pre_uid`` (``userns`` as root: become this uid before
  unsharing), ``drop_caps``, ``kill_leftovers`` (``setuid``: SIGKILL every process of ``uid`` afterwards),
  ``masks`` (``(directory, [directories to bind back in])``), ``tmpfs_bytes``, ``timeout_s``,
  ``cgroup_procs`` (``cgroup.procs`` files to join), ``legacy_remount``, ``ctl_fd`` and ``sentinel_fd``.
  stdin is then replaced by ``/dev/null``.
* **control pipe** (``ctl_fd``): messages of a 4-byte little-endian length plus a ``marshal``-encoded dict
  whose ``e`` is ``pid`` (the forked child), ``proc`` (a fresh procfs was mounted), ``notes``,
  ``setup_error`` (``msg``), ``exit`` (``status`` of the program, reported by init in namespace modes) or
  ``done`` (``status``, ``timed_out``, ``elapsed``, ``cpu``).
* **sentinel pipe** (``sentinel_fd``): handed to the program as file descriptor 3 for the completion nonce.
* stdout/stderr are inherited by the program unchanged.

Process tree::

    launcher (this script): joins the run's cgroup, unshares the namespaces, enforces the wall-clock timeout
      `- init, pid 1 of the new pid namespace: reaps everything             [namespace modes only]
           `- the program (exec of ``python ... main.py``): own session, rlimits, dropped privileges
"""

from __future__ import annotations

import _signal
import ctypes
import errno
import fcntl
import marshal
import os
import resource
import sys
import time

SIGKILL = 9

# mount(2) flags.
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
#: mountinfo options that must be repeated when a mount point is remounted read-only (legacy path).
MOUNT_OPTION_FLAGS = {
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": 1024,
    "nodiratime": 2048,
    "relatime": 1 << 21,
    "strictatime": 1 << 24,
}
# mount_setattr(2) (Linux >= 5.12; the syscall number is the same on all architectures).
NR_MOUNT_SETATTR = 442
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 1, 2

# prctl(2) options.
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4

# unshare(2) flags.
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
#: Namespaces of the ``namespaces`` mode; ``userns`` adds CLONE_NEWUSER.
NS_FLAGS = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS

_libc = ctypes.CDLL(None, use_errno=True)
_ulong = ctypes.c_ulong


def check(ret: int, what: str) -> None:
    """Raise OSError (with errno) if a libc call returned non-zero."""
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enc(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2)."""
    check(_libc.mount(_enc(src), _enc(dst), _enc(fstype), _ulong(flags), _enc(data)), f"mount {dst}")


def prctl(option: int, arg: int, arg3: int = 0) -> None:
    """prctl(2) with up to two arguments."""
    check(_libc.prctl(ctypes.c_int(option), _ulong(arg), _ulong(arg3), _ulong(0), _ulong(0)), f"prctl {option}")


def quietly(fn, *args) -> OSError | None:
    """Call ``fn(*args)``; return the OSError it raised instead of raising it."""
    try:
        fn(*args)
    except OSError as exc:
        return exc
    return None


def write_file(path: str, text: str) -> None:
    """Write ``text`` to an existing file (procfs, cgroupfs) in one write(2)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def move_fd(fd: int) -> int:
    """Move ``fd`` to a close-on-exec descriptor >= 10 (out of the program's way); returns the new number."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


def make_readonly(legacy: bool) -> None:
    """Make every mount below ``/`` read-only and nosuid, keeping locked flags intact.

    mount_setattr(2) (Linux >= 5.12) flips all of them at once; otherwise (or with ``legacy``) each mount
    point of ``/proc/self/mountinfo`` is remounted with its own flags plus read-only and nosuid.
    """
    if not legacy:
        attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
        ret = _libc.syscall(
            ctypes.c_long(NR_MOUNT_SETATTR),
            ctypes.c_int(AT_FDCWD),
            ctypes.c_char_p(b"/"),
            ctypes.c_uint(AT_RECURSIVE),
            attr,
            ctypes.c_size_t(32),
        )
        if ret == 0:
            return
        if ctypes.get_errno() not in (errno.ENOSYS, errno.EINVAL):  # else: remount each mount point
            check(ret, "mount_setattr /")
    with open("/proc/self/mountinfo") as fh:
        entries = [line.split() for line in fh]
    for fields in entries:
        point = fields[4].encode().decode("unicode_escape")
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID
        for opt in fields[5].split(","):
            flags |= MOUNT_OPTION_FLAGS.get(opt, 0)
        try:
            mount(None, point, None, flags)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EACCES, errno.ENOTDIR):  # shadowed / unreachable mounts
                raise


def drop_bounding_set(required: bool) -> None:
    """Empty the capability bounding set (errors ignored unless ``required``) and clear the ambient set."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            last = int(fh.read())
    except OSError:
        last = 63
    for cap in range(last + 1):
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError:
            if required:
                raise
    quietly(prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0)  # the bounding set stops re-raising


class Launcher:
    """One run: isolation set-up, the program's start, the wall-clock timeout and the reports to the pipeline."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.mode: str = cfg["mode"]
        self.ns_mode = self.mode in ("namespaces", "userns")
        self.notes: list[str] = []
        self.timed_out = False
        self.pid = 0
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        self.ctl = move_fd(cfg["ctl_fd"])
        self.sent = move_fd(cfg["sentinel_fd"])

    def emit(self, **msg: object) -> None:
        """Send one message over the control pipe."""
        data = marshal.dumps(msg)
        os.write(self.ctl, len(data).to_bytes(4, "little") + data)

    def setup_error(self, exc: BaseException) -> None:
        self.emit(e="setup_error", msg=f"{type(exc).__name__}: {exc}"[:2000])

    def setup_fs(self) -> None:
        """The program's view of the filesystem (in the new mount namespace): masks, /proc, read-only, /tmp."""
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        for mask, keeps in self.cfg["masks"]:
            fds = []
            for keep in keeps:
                try:
                    fds.append((keep, os.open(keep, os.O_PATH | os.O_CLOEXEC)))
                except OSError as exc:
                    self.notes.append(f"cannot keep {keep} visible: {exc}")
            mount("tmpfs", mask, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
            for keep, fd in fds:
                os.makedirs(keep, exist_ok=True)
                mount(f"/proc/self/fd/{fd}", keep, None, MS_BIND | MS_REC)
                os.close(fd)
        try:
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            self.emit(e="proc", ok=True)
        except OSError as exc:
            self.notes.append(f"no fresh /proc for the pid namespace ({exc}); host /proc stays visible read-only")
        make_readonly(self.cfg["legacy_remount"])
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={self.cfg['tmpfs_bytes']}")
        if os.path.isdir("/dev/shm"):
            mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "mode=1777,size=4k")
        name = b"sandbox"
        _libc.sethostname(name, ctypes.c_size_t(len(name)))

    def write_program(self) -> None:
        """Create the working directory (owned by the program's uid) and ``main.py`` in it."""
        cwd, uid = self.cfg["cwd"], self.cfg["uid"]
        if not os.path.isdir(cwd):
            os.mkdir(cwd, 0o700)
        if uid is not None:
            os.chown(cwd, uid, self.cfg["gid"])
        path = os.path.join(cwd, "main.py")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with open(fd, "wb") as fh:
            fh.write(self.cfg["source"])

    def exec_program(self) -> None:
        """In the forked child: own session, fd 3, rlimits, dropped privileges, then exec the program."""
        cfg = self.cfg
        os.setsid()
        if self.sent != 3:
            os.dup2(self.sent, 3)
            os.close(self.sent)
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
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        prctl(PR_SET_PDEATHSIG, SIGKILL)  # after the uid change, which clears it
        if cfg["kill_leftovers"]:
            quietly(os.kill, -1, SIGKILL)  # every leftover process of this uid (not ourselves)
        os.chdir(cfg["cwd"])
        os.closerange(4, self.ctl)
        os.closerange(self.ctl + 1, 1 << 16)
        os.execve(cfg["python"], cfg["argv"], cfg["env"])

    def run_init(self) -> None:
        """pid 1 of the new pid namespace: start the program, reap everything, report the program's status."""
        self.write_program()
        pid = os.fork()
        if pid == 0:
            try:
                self.exec_program()
            except BaseException as exc:
                self.setup_error(exc)
            os._exit(127)
        os.close(self.sent)
        # No signal handlers: pid 1 then ignores every signal sent from inside its namespace.
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
        if self.notes:
            self.emit(e="notes", notes=self.notes)
        while True:
            try:
                wpid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                os._exit(0)
            if wpid == pid:
                self.emit(e="exit", status=status)
                os._exit(0)

    def enter_namespaces(self) -> None:
        """Join the run's cgroup and create the namespaces (the launcher itself moves into them)."""
        cfg = self.cfg
        prctl(PR_SET_PDEATHSIG, SIGKILL)  # die with the pipeline
        for procs in cfg["cgroup_procs"]:  # everything forked from here on is charged to the run's cgroup
            write_file(procs, "0")
        if cfg["cgroup_procs"]:  # needs CAP_SYS_RESOURCE; the child raises its own score to 1000 anyway
            quietly(write_file, "/proc/self/oom_score_adj", "-1000")
        if self.mode == "userns":
            pre_uid = cfg["pre_uid"]
            if pre_uid is not None:  # root without CAP_SYS_ADMIN: become the pool uid first
                os.setgroups([])
                os.setresgid(pre_uid, pre_uid, pre_uid)
                os.setresuid(pre_uid, pre_uid, pre_uid)
                prctl(PR_SET_DUMPABLE, 1)  # the uid change made /proc/self (uid_map, ...) root-owned
                prctl(PR_SET_PDEATHSIG, SIGKILL)  # the uid change also cleared the parent-death signal
            uid, gid = os.geteuid(), os.getegid()
            check(_libc.unshare(ctypes.c_int(CLONE_NEWUSER | NS_FLAGS)), "unshare")
            write_file("/proc/self/setgroups", "deny")
            write_file("/proc/self/uid_map", f"0 {uid} 1")
            write_file("/proc/self/gid_map", f"0 {gid} 1")
        elif self.mode == "namespaces":
            check(_libc.unshare(ctypes.c_int(NS_FLAGS)), "unshare")

    def on_alarm(self, signum: int, frame: object) -> None:
        self.timed_out = True
        quietly(os.kill, self.pid, SIGKILL)

    def kill_leftovers(self) -> None:
        """SIGKILL everything the program's uid still runs (escaped via setsid etc.), from a helper of that uid."""
        uid = self.cfg["uid"]
        for _ in range(3):
            helper = os.fork()
            if helper == 0:
                if quietly(os.setresuid, uid, uid, uid) is None:
                    quietly(os.kill, -1, SIGKILL)
                os._exit(0)
            os.waitpid(helper, 0)

    def run(self) -> None:
        """The whole run; every outcome is reported over the control pipe."""
        try:
            self.enter_namespaces()
        except OSError as exc:
            self.setup_error(exc)
            return
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                prctl(PR_SET_PDEATHSIG, SIGKILL)
                if self.cfg["cgroup_procs"]:  # the OOM killer must pick the program (or its init), not the launcher
                    quietly(write_file, "/proc/self/oom_score_adj", "1000")
                if self.ns_mode:
                    self.setup_fs()
                    self.run_init()
                else:
                    self.write_program()
                    self.exec_program()
            except BaseException as exc:
                self.setup_error(exc)
            os._exit(127)
        self.pid = pid
        os.close(self.sent)
        self.emit(e="pid", pid=pid)
        _signal.signal(_signal.SIGALRM, self.on_alarm)
        _signal.setitimer(_signal.ITIMER_REAL, self.cfg["timeout_s"])
        _, status, usage = os.wait4(pid, 0)
        _signal.setitimer(_signal.ITIMER_REAL, 0)
        elapsed = time.monotonic() - start
        if not self.ns_mode:
            quietly(os.killpg, pid, SIGKILL)
            if self.cfg["kill_leftovers"]:
                self.kill_leftovers()
        # After a timeout in a pid namespace the program was never reaped by us: its CPU time is unknown.
        cpu = None if (self.timed_out and self.ns_mode) else usage.ru_utime + usage.ru_stime
        self.emit(e="done", status=status, timed_out=self.timed_out, elapsed=elapsed, cpu=cpu)


def main() -> None:
    """Read the run's configuration from stdin and carry out the run."""
    Launcher(marshal.loads(sys.stdin.buffer.read())).run()


if __name__ == "__main__":
    main()
