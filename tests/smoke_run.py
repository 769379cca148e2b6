"""A small real workflow run shared by the report, rerun and Slurm tests: the micro config of
tests/test_workflow.py restricted to one task (code_qa) and one method (SFT): 19 jobs, 17 of them non-local."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import run_guarded
from tests.test_workflow import ENV, ROOT, micro_config

SNAKEFILE = ROOT / "workflow" / "Snakefile"
_DONE: dict[str, Path] = {}


def smoke_config() -> dict:
    cfg = micro_config()
    cfg["name"] = "smoke"
    cfg["description"] = "Smoke test: the micro config, code_qa only, SFT only."
    cfg["tasks"] = {"code_qa": cfg["tasks"]["code_qa"]}
    cfg["methods"] = {"sft": cfg["methods"]["sft"]}
    return cfg


def write_config(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "smoke.yaml"
    path.write_text(yaml.safe_dump(smoke_config()))
    return path


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
            "--configfile", str(workdir / "smoke.yaml"), *args]


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_guarded(snakemake_cmd(workdir, *args), cwd=workdir, env=ENV)


def local_run(tmp_path_factory) -> Path:
    """The smoke DAG run locally with 2 cores, once per test session."""
    if "local" not in _DONE:
        # EBFT_SMOKE_DIR reuses (or creates) a fixed directory, so a finished run is not repeated
        fixed = os.environ.get("EBFT_SMOKE_DIR")
        workdir = Path(fixed) if fixed else tmp_path_factory.mktemp("smoke-local")
        write_config(workdir)
        out = run(workdir, "--cores", "2")
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        _DONE["local"] = workdir
    return _DONE["local"]


def output_tree(workdir: Path) -> set[str]:
    """Relative paths of every file under results/ (the structure two runs of one DAG must share)."""
    root = workdir / "results"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "report.html"}
