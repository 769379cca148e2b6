"""The pool of unprivileged uids/gids that generated programs run as (root modes only).

Each concurrently running program holds one id exclusively, across threads (a lock) and across processes
(an ``flock`` on a file per id under ``/run/ebft-sandbox-uids``, else the system temp dir). RLIMIT_NPROC is
counted per uid, so a dedicated uid makes it a per-program limit. The pool starts at
:data:`DEFAULT_UID_BASE`, or at ``EBFT_SANDBOX_UID_BASE`` when that environment variable is set (read when a
:class:`~ebft.sandbox.config.SandboxConfig` is created).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator

from .errors import SandboxUnavailableError

DEFAULT_UID_BASE = 1_950_000_000
UID_BASE_ENV = "EBFT_SANDBOX_UID_BASE"


def _env_int(name: str, default: int) -> int:
    """An integer environment variable, or ``default`` when unset or empty."""
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def default_uid_base() -> int:
    """First id of the pool: ``EBFT_SANDBOX_UID_BASE`` if set, else :data:`DEFAULT_UID_BASE`."""
    return _env_int(UID_BASE_ENV, DEFAULT_UID_BASE)


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
    def acquire(self, base: int, count: int) -> Iterator[int]:
        """Hold the first free id of ``base .. base + count - 1`` for the duration of the ``with`` block."""
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


#: The process-wide pool.
_UIDS = _UidPool()
