"""The Snakemake workflow: dry runs of both configs, an end-to-end micro run, crash + resume."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ebft.config import base_models, eval_plan, eval_rules, run_grid
from ebft.methods import METHODS
from ebft.paths import is_local_path
from tests.helpers import HANG_GUARD_S, run_guarded, wait_until

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def trained_methods() -> tuple[str, ...]:
    """Methods with a training rule: the workflow generates one per registry entry."""
    return METHODS


def dry_run_counts(config: str | Path, workdir: Path) -> Counter:
    """Job counts of a dry run in an empty working directory (no outputs exist yet); ``config``: a file name
    under config/ or a path."""
    path = config if isinstance(config, Path) else ROOT / "config" / config
    out = subprocess.run([*SNAKEMAKE, "-n", "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory",
                          str(workdir), "--configfile", str(path)],
                         cwd=workdir, env=ENV, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return dry_run_counts_from(out.stdout)


def dry_run_counts_of(cfg: dict, workdir: Path) -> Counter:
    """:func:`dry_run_counts` of a config given as a dict (written to ``workdir/config.yaml``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return dry_run_counts(workdir / "config.yaml", workdir)


def dry_run_counts_from(stdout: str) -> Counter:
    """Job counts per rule from a dry run's "Job stats" table."""
    table = stdout.split("Job stats:")[1].split("total")[0]
    return Counter({m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M)})


def expected_counts(cfg: dict) -> Counter:
    """Jobs per rule, computed from the config the same way the DAG must build them."""
    runs = run_grid(cfg, trained_methods())
    tasks = list(cfg["tasks"])
    hub_models = {m for t in tasks for m in base_models(cfg, t, runs) if cfg["models"][m]["source"] == "hub"}
    for run in runs:
        if run.params.get("init") == "sft":
            warm = cfg["tasks"][run.task].get("sft_warm_start", "own")
            if warm != "own" and "base_model" not in run.params:
                hub_models.add(warm)
    pretrained = {m for t in tasks for m in base_models(cfg, t, runs) if cfg["models"][m]["source"] == "pretrain"}
    datasets = {s["path"] for t in cfg["tasks"].values() if t["data"]["source"] == "hub"
                for s in t["data"]["splits"].values()}
    local = {p for p in datasets if is_local_path(p)}
    counts = Counter({"prepare_data": len(tasks), "aggregate": 1, "all": 1,
                      "plan_runs": len({r.task for r in runs}),  # one per task with runs, before its training
                      "export_hub_data": len({p for p in local if p.startswith("results/hub_data/")}),
                      "convert_gguf": len({m for t in tasks for m in base_models(cfg, t, runs)
                                           if cfg["models"][m]["source"] == "gguf"})})
    datasets -= local
    rules = eval_rules(cfg)  # one job per evaluated model: count (rule, model) pairs
    jobs = eval_plan(cfg, runs)
    counts.update(rule for rule, *_ in {
        (next(r.name for r in rules if r.owns(job)), job.task, job.method, job.variant, job.seed, job.ckpt)
        for job in jobs})
    for method in trained_methods():
        counts[f"train_{method}"] = sum(r.method == method for r in runs)
    if pretrained:
        counts["train_tokenizer"] = 1
        counts["pretrain_base"] = len(pretrained)
    counts["download_model"] = len(hub_models)
    counts["download_dataset"] = len(datasets)
    comet = cfg["evaluation"].get("translation", {}).get("comet_model")
    if any(job.group == "translation" for job in jobs) and comet:
        counts["build_comet_tiny" if comet == "tiny" else "download_comet"] = 1
    return +counts


@pytest.mark.parametrize("config", ["config.yaml", "paper.yaml"])
def test_dry_run_job_counts_follow_the_config(config, tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / config).read_text())
    assert dry_run_counts(config, tmp_path) == expected_counts(cfg)


def test_dry_run_paper_scale_grid(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    cfg["scale"]["enabled"] = True
    (tmp_path / "scale.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run([*SNAKEMAKE, "-n", "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory",
                          str(tmp_path), "--configfile", str(tmp_path / "scale.yaml")],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "results/runs/code_qa/ebft/base_wh1_ce0.03_div0.5.qwen2.5-7b/seed43/model" in out.stdout
    assert "resources/hf/models/Qwen--Qwen2.5-7B" in out.stdout


def test_dry_run_slurm_profile_gives_training_rules_gpus():
    out = subprocess.run([*SNAKEMAKE, "-n", "--profile", "profiles/slurm", "--configfile", "config/paper.yaml"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stderr[-3000:]
    blocks = out.stdout.split("\nrule ")
    train = [b for b in blocks if b.startswith("train_sft:")]
    assert train and all(re.search(r"\bgpu=4\b", b) for b in train)
    assert all(re.search(r"\bgpu=0\b", b) for b in blocks if b.startswith("prepare_data:"))
    # every evaluation rule of the paper's DAG (one per task, final models and checkpoints) has its GPU
    evals = {b.split(":")[0]: b for b in blocks if b.startswith("eval_")}
    tasks = ("code_qa", "code_unstructured", "translation")
    assert set(evals) == {f"eval_{task}{suffix}" for task in tasks for suffix in ("", "_ckpt")}
    assert all(re.search(r"\bgpu=1\b", b) for b in blocks if b.startswith("eval_"))


def test_mistyped_key_fails_before_any_job(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["methods"]["sft"]["defaults"]["learning_rate"] = 1e-3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([*SNAKEMAKE, "-n", "--configfile", str(path)], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.returncode != 0
    assert "learning_rate" in out.stdout + out.stderr
    assert "Job stats" not in out.stdout


# ------------------------------------------------------------------------------------- micro end to end
def micro_config() -> dict:
    """The tiny default shrunk to seconds per rule (same keys, so it exercises the shipped structure)."""
    cfg = copy.deepcopy(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    cfg["name"] = "micro"
    cfg["tokenizer"] = {"vocab_size": 400, "train_chars": 200_000}
    cfg["models"]["tiny"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    cfg["models"]["tiny"]["pretrain"].update(seq_len=64, batch_size=8, max_steps=6, warmup_steps=1, resume_every=3)
    for task in cfg["tasks"].values():
        task["seq_len"] = 64
        task["data"]["sizes"] = {"train": 40, "valid": 8, "test": 8}
    cfg["methods"]["sft"]["defaults"].update(max_steps=6, batch_size=4, micro_batch_size=4,
                                             checkpoint_steps=[3], resume_every=2, log_every=1)
    cfg["methods"]["ebft"]["defaults"].update(max_steps=2, batch_size=2, micro_batch_size=2, num_samples=2,
                                              checkpoint_steps=[], checkpoint_fractions=[0.5], resume_every=1,
                                              log_every=1)
    cfg["methods"]["rlvr"]["defaults"].update(max_steps=2, batch_size=2, micro_batch_size=2, num_samples=2,
                                              max_new_tokens=8, checkpoint_steps=[1], resume_every=1, log_every=1)
    ev = cfg["evaluation"]
    ev["ce"] = {"max_chunks": 4, "batch_size": 4}
    ev["cfm"].update(max_chunks=2, batch_size=2, num_samples=2)
    ev["cfm_by_length"].update(gen_lens=[8, 16], max_chunks=1)
    for group in ("unit_tests", "humaneval"):
        ev[group].update(max_problems=3, num_samples=2, ks=[1, 2], max_new_tokens=12)
    ev["translation"].update(max_examples=12, max_new_tokens=8)
    return cfg


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_guarded(
        [*SNAKEMAKE, "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(workdir / "micro.yaml"), "--cores", "2", *args], cwd=workdir, env=ENV)


def micro_dir(root: Path, cfg: dict | None = None) -> Path:
    """A fresh working directory of its own with the micro config (tests never share one)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "micro.yaml").write_text(yaml.safe_dump(cfg or micro_config()))
    return root


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Path:
    return micro_dir(tmp_path_factory.mktemp("micro"))


@pytest.mark.slow
def test_micro_pipeline_end_to_end_builds_report(micro):
    out = snakemake(micro)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    rep = snakemake(micro, "--report", str(micro / "results" / "report.html"))
    assert rep.returncode == 0, rep.stderr[-3000:]
    html = (micro / "results" / "report.html").read_text()
    assert "validation_ce.svg" in html and "code_qa.html" in html
    for task in ("code_qa", "code_unstructured", "translation"):
        table = (micro / "results" / "tables" / f"{task}.csv").read_text()
        assert "eval/ce" in table and "eval/cfm" in table
        assert {"base", "sft", "ebft"} <= {line.split(",")[0] for line in table.splitlines()}
        result = json.loads((micro / f"results/eval/{task}/sft/default/seed0/step3/ce.json").read_text())
        assert result["step"] == 3 and result["metrics"]["eval/ce"] > 0
        by_length = json.loads((micro / f"results/eval/{task}/sft/default/seed0/final/cfm_by_length.json").read_text())
        assert {"eval/cfm_len8", "eval/cfm_len16"} <= set(by_length["metrics"])
        # EBFT's checkpoint is half of the run (frac0.5): step 1 of 2, recorded in the checkpoint and the plan
        half = json.loads((micro / f"results/eval/{task}/ebft/default/seed0/frac0.5/ce.json").read_text())
        assert half["step"] == 1 and half["train_step"] == 1
        plan = json.loads((micro / f"results/plan/{task}.json").read_text())
        assert {"method": "ebft", "variant": "default", "total_steps": 2, "checkpoints": {"frac0.5": 1}}.items() \
            <= next(r for r in plan["runs"] if r["method"] == "ebft" and r["variant"] == "default").items()
        cfm = json.loads((micro / f"results/eval/{task}/ebft/sft/seed0/final/cfm.json").read_text())
        assert cfm["details"]["blocks"] > 0 and cfm["model"].endswith("ebft/sft/seed0/model")
    he = json.loads((micro / "results/eval/code_qa/rlvr/default/seed0/final/humaneval.json").read_text())
    assert {"eval/humaneval_greedy", "eval/humaneval_pass@1", "eval/humaneval_pass@2"} <= set(he["metrics"])
    ut = json.loads((micro / "results/eval/code_qa/base/tiny/seed0/final/unit_tests.json").read_text())
    assert 0.0 <= ut["metrics"]["eval/unit_tests_greedy"] <= 1.0
    tr = json.loads((micro / "results/eval/translation/ebft/default/seed0/final/translation.json").read_text())
    assert {"eval/bleu", "eval/chrf", "eval/bleu/en-xx", "eval/chrf/xx-en"} <= set(tr["metrics"])
    assert not (micro / "results/runs/code_unstructured/rlvr").exists()  # no verifier for unstructured code
    for figure in ("validation_ce", "cfm_by_length", "training_curves"):
        assert (micro / "results" / "figures" / f"{figure}.svg").stat().st_size > 1000
    from transformers import AutoModelForCausalLM

    for model in sorted(micro.glob("results/runs/*/*/*/seed*/model")) + [micro / "results/models/tiny/model"]:
        assert AutoModelForCausalLM.from_pretrained(model) is not None


@pytest.mark.slow
def test_killed_training_job_resumes_from_last_state(tmp_path):
    """SIGKILL the Snakemake process while train_sft runs; --rerun-incomplete must resume, not restart."""
    cfg = micro_config()
    cfg["methods"]["sft"]["defaults"].update(max_steps=400, checkpoint_steps=[200], resume_every=5)
    micro = micro_dir(tmp_path / "micro", cfg)
    target = "results/runs/code_qa/sft/default/seed0/model"
    state = micro / "results/runs/code_qa/sft/default/seed0/resume/latest.json"
    proc = subprocess.Popen(
        [*SNAKEMAKE, "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory", str(micro),
         "--configfile", str(micro / "micro.yaml"), "--cores", "2", target],
        cwd=micro, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: state.exists() and json.loads(state.read_text())["step"] >= 10,
                   what="resume state at step 10 of train_sft", alive=lambda: proc.poll() is None)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert 10 <= killed_at < 400
    assert snakemake(micro, "--unlock").returncode == 0  # a killed Snakemake leaves its lock behind
    out = snakemake(micro, "--rerun-incomplete", target)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = (micro / "results/logs/train_sft/code_qa/default/seed0.log").read_text()
    resumed = re.search(r"resumed from step (\d+)", log)
    assert resumed and int(resumed.group(1)) == killed_at
    rows = [json.loads(x) for x in (micro / "results/runs/code_qa/sft/default/seed0/train_log.jsonl").open()]
    steps = [r["step"] for r in rows if "event" not in r]
    assert steps == sorted(set(steps)) and steps[-1] == 400
    assert (micro / "results/runs/code_qa/sft/default/seed0/checkpoints/step200/config.json").exists()


def test_readme_overrides_work_as_written(tmp_path):
    """`snakemake --config seeds='[0,1,2]'` (list items arrive as strings) and a variant name with '+'."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["methods"]["sft"]["variants"]["lr+1"] = {"lr": 1e-3}
    (tmp_path / "plus.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run([*SNAKEMAKE, "-n", "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory",
                          str(tmp_path), "--configfile", str(tmp_path / "plus.yaml"), "--config", "seeds=[0,1,2]"],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    cfg["seeds"] = [0, 1, 2]
    assert dry_run_counts_from(out.stdout)["train_sft"] == sum(r.method == "sft" for r in run_grid(cfg)) == 18
    assert "results/runs/code_qa/sft/lr+1/seed2/model" in out.stdout
