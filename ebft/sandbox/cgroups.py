"""Per-run cgroups (root only, best effort): a cap on the *total* memory and task count of one program.

:func:`_cgroup_parents` finds, once per process, where child cgroups may be created: our own cgroup in a
writable cgroup v1 ``memory`` (and ``pids``) hierarchy, or in cgroup v2 when both controllers are delegated.
:class:`_RunCgroup` is the cgroup of one run; the launcher joins it before it forks, so everything of the
run (processes, tmpfs, memfd/shm) is charged to it.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass


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
        """The ``cgroup.procs`` files the launcher writes itself into."""
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def oom_killed(self) -> bool:
        """Whether the OOM killer killed anything in this cgroup."""
        if self.events is None:
            return False
        with contextlib.suppress(OSError, ValueError), open(self.events) as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value) > 0
        return False

    def remove(self) -> None:
        """Remove the cgroup directories (waiting up to 2 s each for the last task to go)."""
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
