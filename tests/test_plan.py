"""Checkpoints that follow the data size, and the plan job that checks every run against its data and models
before any training job (ebft.config.TrainConfig.checkpoint_plan, ebft.plan)."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from ebft import paths
from ebft.config import (
    ConfigError,
    TrainConfig,
    checkpoint_names,
    eval_plan,
    log_spaced_fractions,
    plan_models,
    plan_spec,
    run_grid,
)
from ebft.data.prepare import prepare_task
from ebft.modeling import load_tokenizer
from ebft.plan import plan_task
from tests.helpers import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ checkpoint keys
def test_log_spaced_fractions_follow_the_reference_spacing():
    """10 points from 10^-2.1 to 1, evenly spaced in log scale (3 significant digits)."""
    points = log_spaced_fractions(10)
    assert points[0] == 0.00794 and points[-1] == 1.0 and len(points) == 10
    ratios = [b / a for a, b in zip(points, points[1:], strict=False)]
    assert max(ratios) == pytest.approx(min(ratios), rel=0.02)  # geometric (up to the 3-digit rounding)
    assert ratios[0] == pytest.approx(10 ** (2.1 / 9), rel=0.01)
    assert log_spaced_fractions(0) == []
    assert log_spaced_fractions(3, first=0.25) == [0.25, 0.5, 1.0]


def test_checkpoint_names_are_known_without_the_data():
    cfg = TrainConfig.from_dict({"checkpoint_steps": [7], "checkpoint_fractions": [0.5, 0.25],
                                 "checkpoint_log_count": 3, "checkpoint_log_first": 0.1})
    assert cfg.checkpoint_names() == ("step7", "frac0.1", "frac0.25", "frac0.316", "frac0.5")
    assert all(re.fullmatch(paths.CHECKPOINT_NAME, n) for n in cfg.checkpoint_names())
    # the same names from a variant's keys alone (what the evaluation plan declares)
    assert checkpoint_names({"checkpoint_fractions": [0.5, 0.25], "checkpoint_steps": [7], "lr": 1.0,
                             "checkpoint_log_count": 3, "checkpoint_log_first": 0.1}) == cfg.checkpoint_names()


@pytest.mark.parametrize("total", [1, 2, 3, 10, 997, 10_000])
def test_fractions_resolve_within_every_run_length(total):
    """Every fraction lands on a step in [1, T] for any run length; step names stay where they are."""
    cfg = TrainConfig.from_dict({"checkpoint_log_count": 10, "checkpoint_fractions": [0.5]})
    plan = cfg.checkpoint_plan(total)
    assert set(plan) == set(cfg.checkpoint_names())
    assert all(1 <= step <= total for step in plan.values())
    assert plan["frac0.5"] == max(1, round(0.5 * total))
    if total == 10_000:
        assert plan["frac0.00794"] == 79 and plan["frac0.584"] == 5840
        assert len(set(plan.values())) == len(plan)  # a long run: every checkpoint its own step


def test_absolute_steps_beyond_the_run_name_the_key():
    cfg = TrainConfig.from_dict({"checkpoint_steps": [4, 40]})
    assert cfg.checkpoint_plan(40) == {"step4": 4, "step40": 40}
    with pytest.raises(ConfigError, match=r"checkpoint_steps \[40\] lie beyond the run's 39 optimizer steps"):
        cfg.checkpoint_plan(39)


@pytest.mark.parametrize(("keys", "match"), [
    ({"checkpoint_fractions": [1.0]}, r"checkpoint_fractions \[1\.0\]: each must lie in \[0\.0001, 1\)"),
    ({"checkpoint_fractions": [0.0]}, r"checkpoint_fractions"),
    ({"checkpoint_log_count": 1}, r"checkpoint_log_count 1: 0 \(none\) or at least 2"),
    ({"checkpoint_log_first": 1.5, "checkpoint_log_count": 3}, r"checkpoint_log_first 1\.5"),
    ({"checkpoint_fractions": [0.1], "checkpoint_log_count": 3, "checkpoint_log_first": 0.1},
     r"the same checkpoint twice: \['frac0\.1'\]"),
])
def test_bad_checkpoint_keys_are_named(keys, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(keys)


def test_evaluation_plan_declares_every_fraction_checkpoint():
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["methods"]["ebft"]["defaults"].pop("checkpoint_steps", None)
    cfg["methods"]["ebft"]["defaults"]["checkpoint_log_count"] = 4
    jobs = [j for j in eval_plan(cfg, run_grid(cfg)) if j.method == "ebft" and j.group == "ce"]
    ckpts = {j.ckpt for j in jobs if j.variant == "default" and j.task == "code_qa"}
    assert ckpts == {"final", *(f"frac{f:g}" for f in log_spaced_fractions(4)[:-1])}
    assert all(re.fullmatch(paths.CKPT, j.ckpt) for j in jobs)


# --------------------------------------------------------------------------------------- the plan job
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny config cut to the code_qa task, its generated data and two tiny local models (the second
    with another vocabulary)."""
    tmp = tmp_path_factory.mktemp("plan")
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["tasks"] = {"code_qa": cfg["tasks"]["code_qa"]}
    cfg["tasks"]["code_qa"]["data"]["sizes"] = {"train": 400, "valid": 20, "test": 20}
    data = tmp / "data"
    prepare_task("code_qa", cfg["tasks"]["code_qa"]["data"], data)
    tok = tiny_tokenizer(tmp)
    tiny_model(tok, max_position_embeddings=512).save_pretrained(tmp / "tiny")
    tok.save_pretrained(tmp / "tiny")
    other = tiny_tokenizer(tmp / "other", vocab_size=280)
    tiny_model(other, max_position_embeddings=512).save_pretrained(tmp / "other")
    other.save_pretrained(tmp / "other")
    cfg["models"]["other"] = {"source": "local", "path": str(tmp / "other")}
    return cfg, data, {"tiny": tmp / "tiny", "other": tmp / "other"}


def _plan(cfg, data, dirs):
    spec = plan_spec(cfg, "code_qa")
    return plan_task(spec, data, {k: dirs[k] for k in plan_models(spec)})


def test_plan_resolves_every_run(world):
    cfg, data, dirs = world
    cfg = copy.deepcopy(cfg)
    for method in ("sft", "ebft"):
        section = cfg["methods"][method]["defaults"]
        section.pop("max_steps"), section.pop("checkpoint_steps")
        section.update(epochs=1, checkpoint_fractions=[0.5], checkpoint_log_count=3)
    plan = _plan(cfg, data, dirs)
    assert json.loads(json.dumps(plan)) == plan  # what the rule writes
    runs = {(r["method"], r["variant"]): r for r in plan["runs"]}
    assert set(runs) == {(r.method, r.variant) for r in run_grid(cfg)}
    sft = runs[("sft", "default")]
    # the trainer's count: packed chunks of seq_len tokens with the base model's tokenizer, whole batches
    from ebft.data.packing import pack_records
    from ebft.modeling import load_tokenizer
    from ebft.train import read_train_split

    chunks = len(pack_records(read_train_split(data / "train.jsonl", "code_qa"), load_tokenizer(dirs["tiny"]),
                              256, "code_qa"))
    assert sft["training_items"] == chunks
    assert sft["total_steps"] == chunks // cfg["methods"]["sft"]["defaults"]["batch_size"]
    assert set(sft["checkpoints"]) == {"frac0.5", *(f"frac{f:g}" for f in log_spaced_fractions(3)[:-1])}
    assert all(1 <= s <= sft["total_steps"] for s in sft["checkpoints"].values())
    rlvr = runs[("rlvr", "default")]
    assert rlvr["training_items"] == 400 and rlvr["total_steps"] == 12  # prompts; max_steps wins
    assert plan["models"]["tiny"]["max_position_embeddings"] == 512
    assert plan["strided_lengths"]["8"] == 256 + 8 * ((256 - 8 - 8) // 8 + 1)


def _problems(cfg, data, dirs) -> str:
    with pytest.raises(ConfigError) as err:
        _plan(cfg, data, dirs)
    return str(err.value)


def test_plan_names_every_data_and_model_problem(world):
    cfg, data, dirs = world
    cfg = copy.deepcopy(cfg)
    cfg["methods"]["sft"]["defaults"].update(batch_size=4096, micro_batch_size=16)
    cfg["methods"]["sft"]["defaults"].pop("max_steps")
    cfg["methods"]["rlvr"]["defaults"]["max_new_tokens"] = 600
    cfg["tasks"]["code_qa"]["seq_len"] = 1024
    cfg["tasks"]["code_qa"]["geometry"] = {"context_len": 8, "stride": 8, "gen_len": 8}
    cfg["tasks"]["code_qa"]["feature_model"] = "other"
    text = _problems(cfg, data, dirs)
    assert text.startswith("plan of task code_qa: ")
    lines = text.splitlines()[1:]
    expect = [
        r"methods\.sft variant 'default' \(task code_qa\): batch_size 4096 is more than the \d+ training chunks",
        r"methods\.rlvr variant 'default' \(task code_qa\): max_new_tokens 600 leaves no room",
        r"tasks\.code_qa\.feature_model: 'other' has another vocabulary than the base model 'tiny'",
        r"tasks\.code_qa\.seq_len: chunks of 1024 tokens, but models\.tiny has max_position_embeddings 512",
    ]
    for pattern in expect:
        assert any(re.search(pattern, line) for line in lines), (pattern, text)
    # with the sizes fixed, the absolute checkpoint beyond the run remains
    cfg["methods"]["sft"]["defaults"].update(batch_size=16, max_steps=120)
    cfg["methods"]["rlvr"]["defaults"]["max_new_tokens"] = 64
    cfg["tasks"]["code_qa"]["seq_len"] = 256
    cfg["tasks"]["code_qa"].pop("feature_model")
    cfg["methods"]["rlvr"]["defaults"].pop("max_steps")
    cfg["methods"]["rlvr"]["defaults"]["epochs"] = 0.1  # 400 prompts / 8 -> 50 batches -> 5 steps
    cfg["methods"]["rlvr"]["defaults"]["checkpoint_steps"] = [6, 13]
    text = _problems(cfg, data, dirs)
    assert re.search(r"methods\.rlvr variant 'default' \(task code_qa\): checkpoint_steps \[6, 13\] lie beyond "
                     r"the run's 5 optimizer steps", text), text


def test_chat_template_without_one_in_the_tokenizer_names_the_key(world, tmp_path):
    """The rehearsal's keys on a model without a chat template (a hub base model in place of SmolLM2) fail in
    the plan job, naming each key, not in the RLVR or evaluation job."""
    cfg, data, dirs = world
    cfg = copy.deepcopy(cfg)
    cfg["methods"]["rlvr"]["defaults"]["chat_template"] = True
    cfg["evaluation"].setdefault("humaneval", {})["chat_template"] = True
    lines = _problems(cfg, data, dirs).splitlines()[1:]
    assert len(lines) == 2, lines
    for pattern in (r"methods\.rlvr variant 'default' \(task code_qa\): chat_template: true, but the tokenizer "
                    r"of models\.tiny has no chat template",
                    r"^\s*evaluation\.humaneval\.chat_template: true, but the tokenizer of models\.tiny has no "
                    r"chat template"):
        assert any(re.search(pattern, line) for line in lines), (pattern, lines)
    tok = load_tokenizer(dirs["tiny"])
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    shutil.copytree(dirs["tiny"], tmp_path / "chat")  # the same model with a template passes
    tok.save_pretrained(tmp_path / "chat")
    plan = _plan(cfg, data, {**dirs, "tiny": tmp_path / "chat"})
    assert {r["method"] for r in plan["runs"]} >= {"rlvr"}


def test_plan_rejects_a_tokenizer_larger_than_the_embedding(world, tmp_path):
    cfg, data, dirs = world
    tok = tiny_tokenizer(tmp_path, vocab_size=300)
    model = tiny_model(tiny_tokenizer(tmp_path / "small", vocab_size=260))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    spec = plan_spec(cfg, "code_qa")
    with pytest.raises(ConfigError, match=r"models\.tiny: its tokenizer has \d+ tokens, more than the model's "
                                          r"vocab_size"):
        plan_task(spec, data, {"tiny": tmp_path / "m"})


def test_short_runs_share_checkpoint_steps_with_a_warning(world):
    cfg, data, dirs = world
    cfg = copy.deepcopy(cfg)
    cfg["methods"]["ebft"]["defaults"].update(max_steps=3, checkpoint_log_count=10)
    cfg["methods"]["ebft"]["defaults"].pop("checkpoint_steps")
    plan = _plan(cfg, data, dirs)
    ebft = next(r for r in plan["runs"] if r["method"] == "ebft")
    assert len(ebft["checkpoints"]) == 9 and set(ebft["checkpoints"].values()) <= {1, 2, 3}
    assert any("share steps on this 3-step run" in w for w in plan["warnings"])


# ------------------------------------------------------------------------- hub format and paper config
GENERATORS = {"code_qa": ("synthetic_code_qa", "code_qa"), "code_unstructured": ("stdlib_code", "unstructured"),
              "translation": ("synthetic_translation", "translation")}


def _hub_datasets(root: Path, train_rows: int) -> dict[str, Path]:
    """Each paper task's generated data written in the paper datasets' format (ebft.data.export)."""
    from ebft.data.export import export_prepared

    out = {}
    for task, (source, kind) in GENERATORS.items():
        prepared = root / "prepared" / task
        prepare_task(task, {"source": source, "seed": 0, "sizes": {"train": train_rows, "valid": 30, "test": 30}},
                     prepared)
        out[task] = root / "hub" / task
        export_prepared(prepared, kind, out[task])
    return out


def test_hub_format_reads_back_through_the_hub_loader(tmp_path):
    """Generated records -> parquet with the paper's columns -> `source: hub` with a local path: the same
    questions, answers, unit-test behaviour, directions and source sentences."""
    from ebft.data.export import HUB_COLUMNS
    from ebft.data.jsonl import read_split

    hub = _hub_datasets(tmp_path, 20)
    for task, (_, kind) in GENERATORS.items():
        spec = {"source": "hub", "kind": kind, "columns": HUB_COLUMNS[kind],
                "splits": {"train": {"path": str(hub[task]), "split": "train"},
                           "valid": {"path": str(hub[task]), "split": "validation"},
                           "test": {"path": str(hub[task]), "split": "test"}}}
        back = tmp_path / "back" / task
        prepare_task(task, spec, back)
        trained = {r.get("origin") for r in read_split(tmp_path / "prepared" / task / "train.jsonl", kind)}
        for split in ("train", "valid", "test"):
            a = read_split(tmp_path / "prepared" / task / f"{split}.jsonl", kind)
            a = [r for r in a if r.get("origin") in trained]  # the others are the OOD set (test below)
            b = read_split(back / f"{split}.jsonl", kind)
            assert [(r["question"], r["answer"]) for r in a] == [(r["question"], r["answer"]) for r in b]
            if kind == "translation":
                keys = ("src_lang", "tgt_lang", "source", "reference")
                assert [tuple(r[k] for k in keys) for r in a] == [tuple(r[k] for k in keys) for r in b]
            if kind == "code_qa":
                assert [r["entry_point"] for r in a] == [r["entry_point"] for r in b]
                assert all("def check(candidate):" in r["test"] for r in b)


def test_real_translation_pairs_export_as_an_ood_set_and_read_back_through_ood_test(tmp_path):
    """Test rows of an origin absent from train (the real Django pairs) go to ``ood.parquet``; ``data.ood_test``
    reads them back with their origin, after the in-distribution test rows (what ``ood_origins`` reports)."""
    from ebft.data.export import HUB_COLUMNS, export_prepared
    from ebft.data.jsonl import read_split

    prepared, hub = tmp_path / "prepared", tmp_path / "hub"
    prepare_task("translation", {"source": "synthetic_translation", "seed": 0, "real_test": True,
                                 "real_test_max": 2, "sizes": {"train": 20, "valid": 6, "test": 6}}, prepared)
    test = read_split(prepared / "test.jsonl", "translation")
    real = [r for r in test if r["origin"] == "django"]
    assert real and len(real) < len(test)
    counts = export_prepared(prepared, "translation", hub)
    assert counts["ood"] == len(real) and counts["test"] == len(test) - len(real)
    spec = {"source": "hub", "kind": "translation", "columns": HUB_COLUMNS["translation"],
            "splits": {s: {"path": str(hub), "split": h} for s, h in
                       (("train", "train"), ("valid", "validation"), ("test", "test"))},
            "ood_test": {"path": str(hub / "ood.parquet"), "origin": "django"}}
    prepare_task("translation", spec, tmp_path / "back")
    back = read_split(tmp_path / "back" / "test.jsonl", "translation")
    assert [r["origin"] for r in back] == ["hub"] * (len(test) - len(real)) + ["django"] * len(real)
    assert [(r["source"], r["reference"]) for r in back[-len(real):]] == [(r["source"], r["reference"])
                                                                         for r in real]


@pytest.fixture(scope="module")
def paper_1000(tmp_path_factory):
    """config/paper.yaml with 1,000 generated training rows per task (hub format, local paths) and one tiny
    local model (2,048 positions) standing in for every hub model."""
    root = tmp_path_factory.mktemp("paper1000")
    hub = _hub_datasets(root, 1000)
    tok = tiny_tokenizer(root)
    tiny_model(tok, max_position_embeddings=2048).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    for name in cfg["models"]:
        cfg["models"][name] = {"source": "local", "path": str(root / "model")}
    for task, spec in cfg["tasks"].items():
        for split, hub_split in (("train", "train"), ("valid", "validation"), ("test", "test")):
            spec["data"]["splits"][split] = {"path": str(hub[task]), "split": hub_split}
    return root, cfg


@pytest.mark.slow
def test_paper_config_on_1000_rows_plans_every_job_and_no_checkpoint_lies_beyond_a_run(paper_1000):
    """`snakemake -n` plans every job (no data-dependent gap in the DAG), and the plan job resolves every
    run's checkpoints within its steps, or stops naming the key, before any training job."""
    import subprocess
    import sys

    from ebft.data.prepare import prepare_task as prepare
    from tests.helpers import HANG_GUARD_S

    root, cfg = paper_1000
    path = root / "paper1000.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
                          "--directory", str(root / "work"), "--configfile", str(path), "--cores", "2"],
                         cwd=root, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout.split("Job stats:")[-1], flags=re.M))
    runs = run_grid(cfg)
    assert int(counts["plan_runs"]) == 3 and "download_dataset" not in counts
    assert sum(int(counts.get(f"train_{m}", 0)) for m in ("sft", "rlvr", "ebft")) == len(runs)
    # every checkpoint of every run is a declared evaluation job (10 log-spaced points: 9 checkpoints)
    ckpts = {(j.task, j.method, j.variant, j.ckpt) for j in eval_plan(cfg, runs) if j.ckpt != "final"}
    assert len(ckpts) == 9 * len(runs)
    for task in cfg["tasks"]:
        prepared = root / "data" / task
        data_cfg = {**cfg["tasks"][task]["data"], "kind": cfg["tasks"][task]["kind"]}
        prepare(task, data_cfg, prepared)
        spec = plan_spec(cfg, task)
        try:
            plan = plan_task(spec, prepared, {k: root / "model" for k in plan_models(spec)})
        except ConfigError as err:  # acceptable only as a named key before any job
            lines = str(err).splitlines()[1:]
            assert lines and all(re.match(r"\s*(methods|tasks|models|evaluation)\.", ln) for ln in lines), err
            continue
        assert {(r["method"], r["variant"]) for r in plan["runs"]} == {(r.method, r.variant) for r in runs
                                                                       if r.task == task}
        for run in plan["runs"]:
            assert len(run["checkpoints"]) == 9
            assert all(1 <= s <= run["total_steps"] for s in run["checkpoints"].values()), run
            params = next(r.params for r in runs if (r.task, r.method, r.variant) == (task, run["method"],
                                                                                      run["variant"]))
            # what the trainer will save: the same function of the same total
            assert TrainConfig.from_dict(params).checkpoint_plan(run["total_steps"]) == run["checkpoints"]
