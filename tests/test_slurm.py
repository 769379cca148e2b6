"""The Slurm path: profile dry runs (no cluster needed), the GPU-count check, and a real single-node Slurm
(system test, EBFT_SYSTEM_TESTS=1) running the smoke DAG through the Slurm profile."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ebft.slurm import GpuCountError, check_visible_gpus, multinode_command
from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = os.environ.get("EBFT_SYSTEM_TESTS") == "1"
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
SLURM_LOCAL = ROOT / "scripts" / "slurm_local.sh"


def dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)


def blocks(stdout: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for block in stdout.split("\nrule ")[1:]:
        out.setdefault(block.split(":")[0], []).append(block)
    return out


def test_literal_profile_slurm_resolves_from_repo_root():
    """`snakemake -n --profile slurm --configfile config/paper.yaml` (the root-level `slurm` link) lists the
    paper grid with GPU resources, exactly like `--profile profiles/slurm`."""
    assert (ROOT / "slurm" / "profile.yaml").resolve() == (ROOT / "profiles" / "slurm" / "profile.yaml").resolve()
    literal = dry_run("--profile", "slurm", "--configfile", "config/paper.yaml")
    assert literal.returncode == 0, literal.stderr[-3000:]
    by_rule = blocks(literal.stdout)
    assert len(by_rule["train_ebft"]) == 3 * 27  # the 18 + 9 EBFT sweep on each of the three tasks
    for rule in ("train_sft", "train_rlvr", "train_ebft"):
        assert all(re.search(r"\bgpu=4\b", b) and re.search(r"\btasks=0\b", b) for b in by_rule[rule]), rule
    assert all(re.search(r"\bgpu=0\b", b) for b in by_rule["prepare_data"])
    assert "accelerate launch --num_processes 4" in literal.stdout  # training runs over the job's GPUs
    assert "EBFT_EXPECTED_GPUS=4" in literal.stdout
    path = dry_run("--profile", "profiles/slurm", "--configfile", "config/paper.yaml")
    assert path.returncode == 0 and path.stdout.count("\nrule ") == literal.stdout.count("\nrule ")


def test_multinode_profile_dry_run_uses_srun_and_accelerate_rendezvous():
    out = dry_run("results/runs/code_qa/ebft/base_wh1_ce0.03_div0.5/seed43/model",
                  "--profile", "profiles/slurm/multinode", "--configfile", "config/paper.yaml")
    assert out.returncode == 0, out.stderr[-3000:]
    train = blocks(out.stdout)["train_ebft"][0]
    assert re.search(r"\bnodes=2\b", train) and "mpi=srun" in train
    assert "srun --nodes 2 --ntasks-per-node 1" in train and "-m ebft.slurm launch --gpus-per-node 4" in train


def test_multinode_command_builds_the_accelerate_rendezvous():
    env = {"SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_JOB_ID": "77"}
    cmd = multinode_command(4, ["train", "--method", "ebft"], env, hostnames=lambda _: ["gpu01", "gpu02"])
    assert cmd[:2] == ["accelerate", "launch"]
    joined = " ".join(cmd)
    assert "--num_machines 2" in joined and "--machine_rank 1" in joined and "--num_processes 8" in joined
    assert "--main_process_ip gpu01" in joined and "-m ebft.cli train --method ebft" in joined


def test_check_visible_gpus(monkeypatch):
    check_visible_gpus(0, count=lambda: 0)
    check_visible_gpus(2, count=lambda: 2)
    with pytest.raises(GpuCountError, match="4 GPU"):
        check_visible_gpus(4, count=lambda: 1)


# ------------------------------------------------------------------------------------ real Slurm
def slurm_missing() -> list[str]:
    return [b for b in ("slurmctld", "slurmd", "munged", "sbatch", "squeue") if not shutil.which(b)
            and not Path("/usr/sbin", b).exists()]


@pytest.fixture(scope="module")
def slurm_cluster():
    if not SYSTEM:
        pytest.skip("system test: set EBFT_SYSTEM_TESTS=1 (starts a local Slurm; scripts/install_system_test_deps.sh)")
    missing = slurm_missing()
    assert not missing, f"Slurm is not installed ({missing}): run scripts/install_system_test_deps.sh"
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and "written by ebft scripts/slurm_local.sh" not in conf.read_text().splitlines()[0]:
        pytest.fail(f"{conf} belongs to another Slurm installation; this test never overwrites it")
    start = subprocess.run(["bash", str(SLURM_LOCAL), "start"], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield
    finally:
        subprocess.run(["bash", str(SLURM_LOCAL), "stop"], capture_output=True, text=True, timeout=HANG_GUARD_S)


#: CPU-only overrides of profiles/slurm for the local cluster (2 CPUs, partition "debug", no accounting).
GPU_RULES = tuple(rule for rule, res in yaml.safe_load((ROOT / "profiles/slurm/profile.yaml").read_text())[
    "set-resources"].items() if res.get("gpu"))
CPU_OVERRIDES = [
    "--default-resources", "slurm_partition=debug", "runtime=20", "mem_mb=1500", "gpu=0", "cpus_per_task=1",
    "--set-resources", *[f"{r}:{k}={v}" for r in GPU_RULES for k, v in
                         (("gpu", 0), ("slurm_partition", "debug"), ("mem_mb", 2000), ("runtime", 20))],
    "--set-threads", *[f"{r}=2" for r in ("pretrain_base", "train_sft", "train_rlvr", "train_ebft",
                                          "eval_code_qa", "eval_code_qa_ckpt", "eval_code_unstructured")],
    "--cores", "2", "--jobs", "2", "--latency-wait", "10",
    "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5",
]


@pytest.mark.slow
def test_smoke_dag_runs_every_job_on_slurm(slurm_cluster, tmp_path, tmp_path_factory):
    from tests.smoke_run import SNAKEFILE, local_run, output_tree, write_config

    local = local_run(tmp_path_factory)
    workdir = tmp_path / "smoke-slurm"
    write_config(workdir)
    before = set(squeue_jobs())
    start = time.time()
    out = subprocess.run(
        ["timeout", "-s", "KILL", "600", sys.executable, "-m", "snakemake", "--profile", str(ROOT / "profiles/slurm"),
         "--snakefile", str(SNAKEFILE), "--directory", str(workdir), "--configfile", str(workdir / "smoke.yaml"),
         *CPU_OVERRIDES], cwd=workdir, env=ENV, capture_output=True, text=True, timeout=HANG_GUARD_S)
    elapsed = time.time() - start
    log = out.stdout + out.stderr
    assert out.returncode == 0, f"rc {out.returncode} after {elapsed:.0f} s\n" + log[-6000:]
    # every non-local job of the DAG ran as a Slurm job: squeue (MinJobAge=600) still lists them, COMPLETED
    jobs = {jid: rec for jid, rec in squeue_jobs().items() if jid not in before}
    rules = sorted(rec["comment"].split("_wildcards")[0].removeprefix("rule_") for rec in jobs.values())
    stats = job_stats(log)
    local_rules = {"aggregate", "all"}
    expected = sorted(r for r, n in stats.items() for _ in range(n) if r not in local_rules)
    assert rules == expected, (rules, expected)
    assert all(rec["state"] == "COMPLETED" for rec in jobs.values()), jobs
    assert len(re.findall(r"has been submitted with SLURM jobid", log)) == len(expected)
    # the same DAG run locally produced the same files
    assert output_tree(workdir) == output_tree(local)
    print(f"slurm smoke DAG: {len(expected)} Slurm jobs, {elapsed:.0f} s")


def squeue_jobs() -> dict[str, dict[str, str]]:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%k"], capture_output=True, text=True,
                         timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stderr
    jobs = {}
    for line in out.stdout.splitlines():
        jid, state, comment = line.split("|", 2)
        if comment.startswith("rule_"):
            jobs[jid] = {"state": state, "comment": comment}
    return jobs


def job_stats(log: str) -> dict[str, int]:
    table = log.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def test_slurm_local_never_overwrites_a_foreign_configuration(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=theirs\n")
    out = subprocess.run(["bash", str(SLURM_LOCAL), "start"], env={**ENV, "EBFT_SLURM_CONF": str(conf)},
                         capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.returncode == 3 and "refusing" in out.stderr
    assert conf.read_text() == "ClusterName=theirs\n"
