"""Run untrusted, model-generated Python programs in an isolated child process.

Everything in this project may run as root, so resource limits alone cannot stop a generated program from
deleting files, killing the pipeline or phoning home. Each program therefore runs like this::

    pipeline process (this package; never executes generated code)
      `- launcher: a small trusted Python process (``python -I -S .../ebft/sandbox/launcher.py``), own session
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

Modules: :mod:`~ebft.sandbox.api` (the entry points), :mod:`~ebft.sandbox.config` (config and result
types), :mod:`~ebft.sandbox.detect` (mode detection), :mod:`~ebft.sandbox.runner` (one run, pipeline side),
``launcher.py`` (the launcher script, run by path), :mod:`~ebft.sandbox.program` (the program's command line,
environment and masks), :mod:`~ebft.sandbox.limits` (rlimits), :mod:`~ebft.sandbox.capture` (bounded output),
:mod:`~ebft.sandbox.uids` (uid pool), :mod:`~ebft.sandbox.cgroups` (per-run cgroups),
:mod:`~ebft.sandbox.interpreter` (interpreter probing), :mod:`~ebft.sandbox.errors`.
"""

from __future__ import annotations

from .api import build_check_program, check_many, check_program, run_many, run_program
from .capture import _Capture as _Capture  # re-exported (tests)
from .config import MODES, SandboxConfig, SandboxResult
from .config import Status as Status
from .detect import Isolation, detect_isolation
from .errors import SandboxUnavailableError
from .uids import DEFAULT_UID_BASE as DEFAULT_UID_BASE

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

# Tunables, read at call time by :mod:`ebft.sandbox.runner` from this package (so that patching them here, as
# the tests do, takes effect).

#: Extra wall-clock time the pipeline grants the launcher (interpreter start-up, set-up, teardown) before it
#: kills the launcher itself; the program's own timeout is enforced by the launcher.
_LAUNCH_GRACE_S = 10.0
#: Tests only: make the launcher remount each mount point read-only (the path taken on kernels < 5.12).
_LEGACY_REMOUNT = False
