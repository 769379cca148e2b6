"""Recovery after a kill or an interrupt: the documented recovery (`snakemake --unlock && snakemake
--rerun-incomplete`, or plain `snakemake`: the profiles rerun incomplete jobs) recreates every output a killed
job left missing and everything downstream of it, also when the job ran under `--forcerun`; and a dry run
fails while another Snakemake holds the lock."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.smoke_run import run, snakemake_cmd
from tests.test_workflow import ENV

pytestmark = pytest.mark.slow

SUMMARY = "results/tables/summary.csv"


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    from tests.smoke_run import local_run

    return local_run(tmp_path_factory)


@pytest.fixture
def finished(smoke_run, tmp_path) -> Path:
    """A private copy of the finished smoke run (file times kept), so no test sees another's leftovers."""
    return Path(shutil.copytree(smoke_run, tmp_path / "run", symlinks=True))


def interrupt_when(workdir: Path, args: list[str], condition, what: str, sig: int) -> None:
    """Start Snakemake with ``args``, send ``sig`` to its process group once ``condition()`` holds."""
    log = (workdir / "interrupted.log").open("w")
    # a shell's background jobs inherit SIGINT as ignored, and Python then installs no KeyboardInterrupt
    # handler: give Snakemake the default disposition, as in an interactive terminal
    proc = subprocess.Popen(snakemake_cmd(workdir, *args), cwd=workdir, env=ENV, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(condition, what=what, poll_s=0.02, alive=lambda: proc.poll() is None)
    finally:
        os.killpg(proc.pid, sig)
        proc.wait()
        log.close()


def recover(workdir: Path) -> subprocess.CompletedProcess:
    """The README's recovery: unlock (a SIGKILLed Snakemake leaves its lock), then run again."""
    assert run(workdir, "--cores", "2", "--unlock").returncode == 0
    out = run(workdir, "--cores", "2", "--rerun-incomplete")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "interrupt"])
def test_forced_evaluation_killed_midway_is_redone(finished, sig):
    results = sorted(finished.glob("results/eval/code_qa/*/*/seed0/*/ce.json"))
    assert len(results) == 3
    before = (finished / SUMMARY).stat().st_mtime
    interrupt_when(finished, ["--cores", "1", "--forcerun", "eval_code_qa", "eval_code_qa_ckpt"],
                   lambda: not all(p.exists() for p in results),
                   "eval_code_qa job started (Snakemake deleted its results)", sig)
    assert not all(p.exists() for p in results)
    recover(finished)
    assert all(p.exists() for p in results)
    assert (finished / SUMMARY).stat().st_mtime > max(before, *(p.stat().st_mtime for p in results))
    nothing = run(finished, "--cores", "2", "-n")
    assert "Nothing to be done" in nothing.stdout + nothing.stderr


def test_forced_training_killed_midway_is_redone_with_its_evaluations(finished):
    model = finished / "results/runs/code_qa/sft/default/seed0/model"
    evals = sorted(finished.glob("results/eval/code_qa/sft/default/seed0/*/*.json"))
    assert model.is_dir() and evals
    interrupt_when(finished, ["--cores", "1", "--forcerun", "train_sft"], lambda: not model.exists(),
                   "train_sft job started (Snakemake deleted its model)", signal.SIGKILL)
    assert not model.exists()
    recover(finished)
    assert (model / "config.json").exists()
    trained = (model / "config.json").stat().st_mtime
    assert all(p.exists() and p.stat().st_mtime > trained for p in evals)  # every evaluation of it redone
    assert (finished / SUMMARY).stat().st_mtime > max(p.stat().st_mtime for p in evals)


def test_dry_run_fails_while_the_directory_is_locked(finished):
    locks = finished / ".snakemake" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    (locks / "0.input.lock").write_text(str(finished / SUMMARY) + "\n")
    out = run(finished, "--cores", "2", "-n")
    assert out.returncode != 0
    assert "locked by another Snakemake process" in out.stdout + out.stderr
    assert run(finished, "--cores", "2", "--unlock").returncode == 0
    assert run(finished, "--cores", "2", "-n").returncode == 0
