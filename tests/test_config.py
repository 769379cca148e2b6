"""Config schema and config logic: both shipped configs validate, mistakes are named, variants expand."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from ebft.config import (
    ConfigError,
    TrainConfig,
    expand_sweep,
    method_variants,
    rlvr_reward,
    run_grid,
    task_variants,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def check(cfg: dict) -> None:
    validate(copy.deepcopy(cfg), SCHEMA)


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_validate(name):
    check(load(name))


@pytest.mark.parametrize(
    ("path", "bad_key"),
    [
        ((), "seedz"),
        (("methods", "sft", "defaults"), "lrr"),
        (("tasks", "code_qa"), "seq_length"),
        (("tasks", "code_qa", "data"), "sizez"),
        (("models", "tiny"), "hidden_sise"),
        (("models", "tiny", "pretrain"), "max_step"),
        (("evaluation", "ce"), "max_chunk"),
    ],
)
def test_mistyped_key_is_named(path, bad_key):
    cfg = load("config.yaml")
    node = cfg
    for key in path:
        node = node[key]
    node[bad_key] = 1
    with pytest.raises(WorkflowError) as err:
        check(cfg)
    assert bad_key in str(err.value)


def test_mistyped_key_in_paper_hub_sections_is_named():
    cfg = load("paper.yaml")
    cfg["tasks"]["translation"]["data"]["splits"]["train"]["splt"] = "train"
    with pytest.raises(WorkflowError, match="splt"):
        check(cfg)
    cfg = load("paper.yaml")
    cfg["methods"]["ebft"]["defaults"]["diversity_coeff"] = 1.0
    with pytest.raises(WorkflowError, match="diversity_coeff"):
        check(cfg)


def test_wrong_types_and_values_are_rejected():
    cfg = load("config.yaml")
    cfg["methods"]["sft"]["defaults"]["schedule"] = "cosinus"
    with pytest.raises(WorkflowError, match="cosinus"):
        check(cfg)
    cfg = load("config.yaml")
    cfg["seeds"] = ["zero"]
    with pytest.raises(WorkflowError):
        check(cfg)


def test_paper_sweeps_expand_to_18_plus_9_variants_per_task():
    cfg = load("paper.yaml")
    for task in cfg["tasks"]:
        variants = task_variants(cfg, "ebft", task)
        assert len(variants) == 27
        base = [v for v in variants.values() if v["init"] == "base"]
        warm = [v for v in variants.values() if v["init"] == "sft"]
        assert len(base) == 18 and len(warm) == 9
        assert all(v["epochs"] == 2 for v in base) and all(v["epochs"] == 1 and v["whitening"] for v in warm)
    v = task_variants(cfg, "ebft", "code_qa")["base_wh0_ce0.03_div0.5"]
    assert (v["whitening"], v["ce_coef"], v["diversity_coef"], v["lr"]) == (False, 0.03, 0.5, 1e-6)


def test_per_task_overrides_and_task_restrictions():
    cfg = load("paper.yaml")
    assert method_variants(cfg["methods"]["sft"], "translation")["default"]["lr"] == 3e-6
    assert method_variants(cfg["methods"]["sft"], "code_qa")["default"]["lr"] == 1e-5
    assert task_variants(cfg, "rlvr", "code_unstructured") == {}
    assert task_variants(cfg, "rlvr", "translation")["default"]["reward"] == "chrf"


def test_scale_grid_adds_variants_on_other_base_models():
    cfg = load("paper.yaml")
    n_off = len(run_grid(cfg))
    cfg["scale"]["enabled"] = True
    runs = run_grid(cfg)
    extra = [r for r in runs if "base_model" in r.params]
    # 2 models x (sft default + 1 ebft variant) x 2 code tasks
    assert len(extra) == 8 and len(runs) == n_off + 8
    assert {r.variant for r in extra} >= {"default.qwen2.5-3b", "base_wh1_ce0.03_div0.5.qwen2.5-7b"}


def test_sweep_names_must_separate_grid_points():
    with pytest.raises(ConfigError, match="does not separate"):
        expand_sweep({"name": "x{a}", "grid": {"a": [1, 2], "b": [1, 2]}})
    with pytest.raises(ConfigError, match="unknown grid key"):
        expand_sweep({"name": "x{c}", "grid": {"a": [1]}})


def test_train_config_checks():
    with pytest.raises(ConfigError, match="micro_batch_size"):
        TrainConfig.from_dict({"batch_size": 10, "micro_batch_size": 4})
    with pytest.raises(ConfigError, match="checkpoint_steps"):
        TrainConfig.from_dict({"max_steps": 5, "checkpoint_steps": [10]})
    cfg = TrainConfig.from_dict({"lr": 1e-3, "unknown_objective_key": 1, "checkpoint_steps": [20, 10]})
    assert cfg.checkpoint_steps == (10, 20)


def test_envs_pin_what_requirements_pin():
    """envs/*.yaml (conda, cluster) and requirements/*.txt (pip, here) must not drift apart."""
    env = yaml.safe_load((ROOT / "envs" / "ebft.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-r ../requirements/main.txt" in pip_section
    reqs = [ln.split("#")[0].strip() for ln in (ROOT / "requirements" / "main.txt").read_text().splitlines()]
    reqs = {r for r in reqs if r}
    deps = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    # every pyproject dependency except torch (whose build the setup chooses) is pinned identically
    assert {d for d in deps if not d.startswith("torch")} == {r for r in reqs if not r.startswith("torch")}
    comet = yaml.safe_load((ROOT / "envs" / "comet.yaml").read_text())
    comet_pip = next(d["pip"] for d in comet["dependencies"] if isinstance(d, dict))
    assert "-r ../requirements/comet.txt" in comet_pip
    comet_reqs = (ROOT / "requirements" / "comet.txt").read_text()
    assert "unbabel-comet==2.2.7" in comet_reqs and "torch==2.13.0" in comet_reqs


def test_rlvr_runs_only_where_a_verifier_fits():
    cfg = load("config.yaml")
    rlvr = cfg["methods"]["rlvr"]
    assert {r.task for r in run_grid(cfg, ("rlvr",))} == {"code_qa", "translation"}
    rlvr["defaults"].pop("tasks")  # unrestricted: the unstructured task is skipped, not an error
    assert {r.task for r in run_grid(cfg, ("rlvr",))} == {"code_qa", "translation"}
    rlvr["variants"]["everywhere"] = {"tasks": ["code_unstructured"]}
    with pytest.raises(ConfigError, match="'everywhere' lists task 'code_unstructured'.*no verifiable reward"):
        run_grid(cfg, ("rlvr",))
    del rlvr["variants"]["everywhere"]
    rlvr["per_task"]["translation"]["reward"] = "unit_tests"
    with pytest.raises(ConfigError, match="reward 'unit_tests' does not fit task 'translation'"):
        run_grid(cfg, ("rlvr",))
    assert rlvr_reward("code_qa", None, "here", "t") == "unit_tests"
    assert rlvr_reward("translation", "bleu", "here", "t") == "bleu"
    with pytest.raises(ConfigError, match="here: task 't' of kind 'unstructured' has no verifiable reward"):
        rlvr_reward("unstructured", None, "here", "t")
    bad = load("config.yaml")
    bad["methods"]["rlvr"]["defaults"]["clip_eps"] = 1.5
    with pytest.raises(WorkflowError, match="clip_eps"):
        check(bad)
