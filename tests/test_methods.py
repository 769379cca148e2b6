"""The method and evaluation registries: every list of methods and evaluations follows from them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from ebft import cli, paths
from ebft.config import ConfigError, TrainConfig, eval_plan, run_grid
from ebft.evaluation import EVALUATIONS
from ebft.evaluation.jobs import RUNNERS
from ebft.evaluation.results import SCHEMA
from ebft.methods import METHODS, REGISTRY, get_method
from ebft.methods.ebft import EBFTConfig
from ebft.methods.rlvr import RLVRConfig
from ebft.report.frames import METHOD_COLOURS, METHOD_ORDER, ROW_KINDS

ROOT = Path(__file__).resolve().parents[1]
#: keys of a method section that belong to the workflow, not to TrainConfig or the method's config
WORKFLOW_KEYS = {"init", "base_model", "tasks"}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


@pytest.mark.parametrize("config", ["config.yaml", "paper.yaml"])
def test_every_run_builds_its_typed_configs(config):
    cfg = load(config)
    runs = run_grid(cfg)
    assert {r.method for r in runs} == set(METHODS)
    for run in runs:
        method_cfg = get_method(run.method).config(run.params, f"methods.{run.method} variant {run.variant!r}")
        assert isinstance(method_cfg, get_method(run.method).config_class)
        TrainConfig.from_dict(run.params, seed=run.seed)
        for f in dataclasses.fields(method_cfg):  # every key the variant sets reaches the typed config
            if f.name in run.params:
                assert getattr(method_cfg, f.name) == run.params[f.name], (run, f.name)


def test_schema_method_keys_are_exactly_the_typed_config_fields():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed", "seq_len"}
    assert set(schema["properties"]["methods"]["properties"]) == set(METHODS)
    for name in METHODS:
        keys = set(schema["$defs"][f"{name}_params"]["properties"])
        own = {f.name for f in dataclasses.fields(get_method(name).config_class)}
        assert keys == train_fields | own | WORKFLOW_KEYS, name


def test_typed_configs_name_the_bad_key():
    with pytest.raises(ConfigError, match=r"methods\.ebft variant 'x': temperature must be > 0"):
        get_method("ebft").config({"temperature": 0.0}, "methods.ebft variant 'x'")
    with pytest.raises(ConfigError, match="clip_eps must be in"):
        RLVRConfig.from_dict({"clip_eps": 1.5})
    with pytest.raises(ConfigError, match="advantage must be rloo or grpo"):
        RLVRConfig(advantage="ppo").check()
    cfg = EBFTConfig.from_dict({"num_samples": 8, "lr": 1e-3, "whitening": False, "init": "sft"})
    assert (cfg.num_samples, cfg.whitening, cfg.temperature) == (8, False, 1.0)
    assert EBFTConfig.coerce(cfg) is cfg


def test_registry_feeds_every_list():
    assert ["base", *METHODS] == METHOD_ORDER
    assert set(METHOD_COLOURS) == {"base", *METHODS}
    assert all(ROW_KINDS[m] == REGISTRY[m].label for m in METHODS)
    assert SCHEMA["properties"]["method"]["enum"] == ["base", *METHODS]
    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    assert next(a for a in train._actions if a.dest == "method").choices == METHODS
    with pytest.raises(KeyError, match="unknown method 'ppo'"):
        get_method("ppo")


def test_evaluation_registry_feeds_the_plan_the_cli_and_the_runners():
    assert set(RUNNERS) == set(EVALUATIONS)
    evaluate = cli.build_parser()._subparsers._group_actions[0].choices["evaluate"]
    commands = evaluate._subparsers._group_actions[0].choices
    assert set(commands) == {e.command for e in EVALUATIONS.values()} | {"model"}  # model: a family's job
    cfg = load("config.yaml")
    jobs = eval_plan(cfg, run_grid(cfg))
    assert {j.group for j in jobs} == {g for t in cfg["tasks"].values()
                                       for g in [*(g for g, e in EVALUATIONS.items() if e.universal),
                                                 *t.get("evaluations", [])]}
    assert all(j.path == paths.fill(paths.EVAL_RESULT, **dataclasses.asdict(j)) for j in jobs)
    # final_max_chunks: final and base models only; CFM by length keeps its own max_chunks
    paper = {"ce": {"max_chunks": 128, "final_max_chunks": 1000},
             "cfm": {"max_chunks": 128, "final_max_chunks": 1000, "num_samples": 4},
             "cfm_by_length": {"max_chunks": 32, "gen_lens": [8]}}
    assert EVALUATIONS["ce"].settings(paper) == {"max_chunks": 1000}
    assert EVALUATIONS["ce"].settings(paper, final=False) == {"max_chunks": 128}
    assert EVALUATIONS["cfm"].settings(paper)["max_chunks"] == 1000
    assert EVALUATIONS["cfm_by_length"].settings(paper) == {"max_chunks": 32, "num_samples": 4, "gen_lens": [8]}
    assert EVALUATIONS["cfm_by_length"].settings({"cfm": {"num_samples": 4, "max_chunks": 8},
                                                  "cfm_by_length": {"max_chunks": 2}}) == {"num_samples": 4,
                                                                                           "max_chunks": 2}


def test_path_templates_fill_some_fields_and_keep_the_others():
    assert paths.fill(paths.RUN_MODEL, method="sft") == "results/runs/{task}/sft/{variant}/seed{seed}/model"
    assert paths.fill(paths.RUN, task="t", method="m", variant="v", seed=3) == "results/runs/t/m/v/seed3"
    assert paths.fields_of(paths.RUN) == ["task", "method", "variant", "seed"]
    assert paths.slug("Qwen/Qwen2.5-1.5B") == "Qwen--Qwen2.5-1.5B"


def test_frozen_networks_load_in_bf16_when_the_run_trains_in_bf16(tmp_path, monkeypatch):
    import torch

    import ebft.train
    from ebft.data.prepare import prepare_task
    from ebft.methods import TrainJob
    from ebft.methods.ebft import build
    from tests.helpers import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer(tmp_path)
    tiny_model(tok).save_pretrained(tmp_path / "init")
    tok.save_pretrained(tmp_path / "init")
    spec = {"kind": "unstructured", "seq_len": 32, "geometry": {"context_len": 4, "stride": 4, "gen_len": 4}}
    job = TrainJob(task="t", task_spec=spec, init=str(tmp_path / "init"), seed=0)
    obj = build(EBFTConfig.from_dict({"num_samples": 2, "kl_coef": 0.1}), dataclasses.replace(job,
                                                                                           frozen_dtype="bfloat16"))
    assert obj.features.model.dtype == obj.reference.dtype == torch.bfloat16
    policy = tiny_model(tok)
    ids = torch.randint(3, 250, (2, 32))
    loss, metrics = obj.compute_loss(policy, {"input_ids": ids, "loss_mask": torch.ones_like(ids),
                                              "doc_ids": torch.zeros_like(ids)}, step=0, micro=0)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)
    # ebft.train.train hands bf16 to the factory exactly when the run trains with mixed_precision bf16
    seen = []

    def spy(config, j):
        seen.append(j.frozen_dtype)
        raise RuntimeError("stop after the factory")

    monkeypatch.setattr("ebft.methods.ebft.build", spy)
    prepare_task("t", {"source": "stdlib_code", "sizes": {"train": 4, "valid": 1, "test": 1}, "max_chars": 300},
                 tmp_path / "data")
    for precision, dtype in (("bf16", "bfloat16"), ("no", "float32")):
        with pytest.raises(RuntimeError, match="stop after the factory"):
            ebft.train.train("ebft", job, {"max_steps": 1, "batch_size": 2, "micro_batch_size": 2,
                                           "mixed_precision": precision}, tmp_path / "data", tmp_path / "run")
        assert seen[-1] == dtype
