"""DAG-time config checks (ebft.checks): each bad config is named by its key path, before any job runs."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from ebft.checks import check_config, geometry_error
from ebft.config import TRAIN_TASK_KEYS, ConfigError, data_hash, train_task_spec
from ebft.evaluation import EVALUATIONS
from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def load(name: str = "config.yaml") -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_pass(name):
    cfg = load(name)
    check_config(cfg)
    if "scale" in cfg:
        cfg["scale"]["enabled"] = True
        check_config(cfg)


def _set(path: str, value) -> Callable[[dict], None]:
    """An edit of the config that sets the dotted ``path`` to ``value``."""

    def edit(cfg: dict) -> None:
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


BAD = {
    # geometry
    "stride_does_not_divide": (_set("tasks.code_qa.geometry.stride", 7),
                               r"^tasks\.code_qa\.geometry: .*divisible by stride.*= 240 and stride=7"),
    "context_plus_gen_beyond_seq_len": (_set("tasks.translation.geometry", {"context_len": 200, "stride": 4,
                                                                            "gen_len": 60}),
                                        r"^tasks\.translation\.geometry: need context_len \+ gen_len <= seq_len"),
    "geometry_missing": (lambda c: c["tasks"]["code_unstructured"].pop("geometry"),
                         r"^tasks\.code_unstructured\.geometry: missing"),
    "gen_len_beyond_seq_len": (_set("evaluation.cfm_by_length.gen_lens", [8, 300]),
                               r"^evaluation\.cfm_by_length\.gen_lens: gen_len 300 with tasks\.code_qa\.geometry"),
    "gen_lens_stride": (_set("evaluation.cfm_by_length.gen_lens", [8, 6]),
                        r"^evaluation\.cfm_by_length\.gen_lens: gen_len 6 with tasks\.code_qa\.geometry .*"
                        r"divisible by stride"),
    # optimisation settings of every resolved variant, and of pretraining
    "batch_not_multiple_of_micro": (_set("methods.ebft.defaults.micro_batch_size", 3),
                                    r"^methods\.ebft variant 'default' \(task code_qa\): batch_size \(4\) must be "
                                    r"a multiple of micro_batch_size \(3\)"),
    "checkpoint_beyond_max_steps": (_set("methods.sft.variants.default", {"checkpoint_steps": [500]}),
                                    r"^methods\.sft variant 'default' \(task code_qa\): checkpoint_steps \[500\] "
                                    r"exceed max_steps 120"),
    "pretrain_micro_batch": (_set("models.tiny.pretrain.micro_batch_size", 5),
                             r"^models\.tiny\.pretrain: batch_size \(16\) must be a multiple"),
    "method_config_check": (_set("methods.rlvr.per_task.translation.temperature", 0),
                            r"^methods\.rlvr variant 'default' \(task translation\): temperature must be > 0"),
    # evaluations a task's kind cannot support
    "unit_tests_on_translation": (_set("tasks.translation.evaluations", ["translation", "unit_tests"]),
                                  r"^tasks\.translation\.evaluations: 'unit_tests' needs a task of kind code_qa"),
    "translation_on_code": (_set("tasks.code_qa.evaluations", ["translation"]),
                            r"^tasks\.code_qa\.evaluations: 'translation' needs a task of kind translation"),
    "humaneval_on_translation": (_set("tasks.translation.evaluations", ["humaneval"]),
                                 r"^tasks\.translation\.evaluations: 'humaneval' needs a task of kind code_qa or "
                                 r"unstructured"),
    "data_source_kind": (_set("tasks.translation.kind", "code_qa"),
                         r"^tasks\.translation\.kind: 'code_qa', but data source 'synthetic_translation' produces"),
    # model keys
    "unknown_base_model": (_set("tasks.code_qa.base_model", "tinyy"),
                           r"^tasks\.code_qa\.base_model: 'tinyy' is not a key of `models` \(have: tiny\)"),
    "unknown_feature_model": (_set("tasks.translation.feature_model", "big"),
                              r"^tasks\.translation\.feature_model: 'big' is not a key"),
    "unknown_warm_start": (_set("tasks.code_qa.sft_warm_start", "sft-model"),
                           r"^tasks\.code_qa\.sft_warm_start: 'sft-model' is not a key"),
    "unknown_scale_model": (_set("scale", {"enabled": True, "models": ["tiny", "huge"], "tasks": ["code_qa"],
                                           "methods": {"sft": ["default"]}}),
                            r"^scale\.models\[1\]: 'huge' is not a key"),
    "unknown_variant_base_model": (_set("methods.ebft.variants.big", {"base_model": "big"}),
                                   r"^methods\.ebft variant 'big' base_model: 'big' is not a key"),
    # sampling settings that leave a term undefined
    "ebft_one_sample": (_set("methods.ebft.variants.default", {"num_samples": 1}),
                        r"^methods\.ebft variant 'default' \(task code_qa\): num_samples 1 < 2, but RLOO advantages "
                        r".* and diversity_coef 1\.0 > 0"),
    "ebft_one_sample_no_diversity": (_set("methods.ebft.variants.default", {"num_samples": 1, "diversity_coef": 0}),
                                     r"^methods\.ebft variant 'default' \(task code_qa\): num_samples 1 < 2, but RLOO "
                                     r"advantages \([^)]*\) need at least 2 samples$"),
    "rlvr_rloo_one_sample": (_set("methods.rlvr.defaults.num_samples", 1),
                             r"^methods\.rlvr variant 'default' \(task code_qa\): num_samples 1 < 2, but RLOO"),
    "rlvr_grpo_one_sample": (_set("methods.rlvr.variants.default", {"num_samples": 1, "advantage": "grpo"}),
                             r"^methods\.rlvr variant 'default' \(task code_qa\): num_samples 1 < 2, but GRPO"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_names_its_key_path(case):
    edit, message = BAD[case]
    cfg = load()
    edit(cfg)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert re.search(message, _lines(str(err.value)), flags=re.M), str(err.value)


def _lines(text: str) -> str:
    """The message with each problem's line unindented (several problems come one per indented line)."""
    return "\n".join(line.strip() for line in text.splitlines())


def test_every_problem_is_reported_at_once():
    cfg = load()
    cfg["tasks"]["code_qa"]["geometry"]["stride"] = 7
    cfg["evaluation"]["cfm_by_length"]["gen_lens"] = [8, 16]
    cfg["tasks"]["translation"]["evaluations"] = ["unit_tests"]
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    lines = str(err.value).splitlines()
    assert lines[0] == "invalid config" and len(lines) == 4
    assert lines[1].startswith("  tasks.code_qa.geometry: ")
    assert lines[2].startswith("  evaluation.cfm_by_length.gen_lens: gen_len 16 with tasks.code_qa.geometry")
    assert lines[3].startswith("  tasks.translation.evaluations: 'unit_tests'")


def test_geometry_rule_is_the_strided_layouts():
    assert geometry_error(256, 8, 8, 8) is None
    assert geometry_error(256, 8, 8, 16) is None
    assert "divisible by stride" in geometry_error(256, 8, 7, 8)
    assert "context_len + gen_len <= seq_len" in geometry_error(16, 8, 8, 9)


def test_evaluation_kinds_are_task_kinds():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    kinds = set(schema["$defs"]["task"]["properties"]["kind"]["enum"])
    listed = set(schema["$defs"]["task"]["properties"]["evaluations"]["items"]["enum"])
    for group, evaluation in EVALUATIONS.items():
        assert evaluation.kinds is None or set(evaluation.kinds) <= kinds
        assert (evaluation.kinds is not None) == (group in listed), group


# ------------------------------------------------------------------------------- train rule parameters
def test_train_task_spec_ignores_evaluations_and_data():
    cfg, other = load(), load()
    other["tasks"]["code_qa"]["evaluations"] = ["unit_tests"]
    other["tasks"]["code_qa"]["data"]["seed"] = 7
    assert set(train_task_spec(cfg, "code_qa")) == set(TRAIN_TASK_KEYS)
    assert train_task_spec(cfg, "code_qa") == train_task_spec(other, "code_qa")
    assert data_hash(cfg, "code_qa") != data_hash(other, "code_qa")
    assert data_hash(cfg, "translation") == data_hash(other, "translation")
    other["tasks"]["code_qa"]["seq_len"] = 128
    assert train_task_spec(cfg, "code_qa") != train_task_spec(other, "code_qa")


# -------------------------------------------------------------------------------------- through snakemake
def dry_run(cfg: dict, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([*SNAKEMAKE, "-n", *args, "--snakefile", str(ROOT / "workflow" / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(path)],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=HANG_GUARD_S)


@pytest.mark.parametrize("case", ["stride_does_not_divide", "unit_tests_on_translation", "unknown_base_model",
                                  "batch_not_multiple_of_micro"])
def test_dry_run_fails_before_any_job(case, tmp_path):
    edit, message = BAD[case]
    cfg = load()
    edit(cfg)
    out = dry_run(cfg, tmp_path)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert re.search(message, _lines(text), flags=re.M), text[-3000:]
    assert "ConfigError" in text and "Job stats" not in out.stdout


@pytest.mark.slow
def test_evaluations_edit_reruns_no_training_and_data_edit_retrains(tmp_path):
    """On a finished SFT run: a new evaluations list changes no training rule's params; new data settings
    change them (the data hash), so the training reruns with prepare_data."""
    from tests.test_workflow import micro_config

    cfg = micro_config()
    target = "results/runs/code_qa/sft/default/seed0/model"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    built = subprocess.run([*SNAKEMAKE, target, "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory",
                            str(tmp_path), "--configfile", str(path), "--cores", "2"],
                           cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]

    def params_changed(edited: dict) -> str:
        out = dry_run(edited, tmp_path, "--list-changes", "params")
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    assert target not in params_changed(cfg)
    evals = copy.deepcopy(cfg)
    evals["tasks"]["code_qa"]["evaluations"] = ["unit_tests"]
    assert target not in params_changed(evals)
    out = dry_run(evals, tmp_path, target)
    # only the plan job re-checks the task (it reads the evaluations' generation lengths); training reads it
    # as an ancient input, so nothing retrains
    assert out.returncode == 0, out.stdout[-3000:]
    jobs = re.findall(r"^(\w+)\s+\d+$", out.stdout.split("Job stats:")[-1], flags=re.M)
    assert set(jobs) <= {"plan_runs", "total"}, out.stdout[-3000:]
    data = copy.deepcopy(cfg)
    data["tasks"]["code_qa"]["data"]["seed"] = 1
    changed = params_changed(data)
    assert target in changed and "results/data/code_qa/train.jsonl" in changed
    plan = dry_run(data, tmp_path, target).stdout
    assert re.search(r"^prepare_data\s+1$", plan, flags=re.M) and re.search(r"^train_sft\s+1$", plan, flags=re.M)
