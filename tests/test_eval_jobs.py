"""One evaluation job per model: the same results as one job per group, one model load.

``ebft evaluate model`` (:func:`ebft.evaluation.jobs.run_groups`) is what the workflow's ``eval_<task>``
and ``eval_<task>_ckpt`` rules run; ``ebft evaluate <group>`` (:data:`ebft.evaluation.jobs.RUNNERS`) is the
single-group path kept for rerunning one metric by hand. Both must write the same metrics.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ebft.modeling
from ebft import paths
from ebft.config import eval_plan, eval_rules, run_grid
from ebft.data.jsonl import write_jsonl
from ebft.data.prepare import prepare_task
from ebft.data.records import RecordError
from ebft.evaluation import EVALUATIONS
from ebft.evaluation.jobs import RUNNERS, EvalJob, run_groups
from ebft.evaluation.results import read_result
from tests.helpers import HANG_GUARD_S, tiny_model, tiny_tokenizer
from tests.test_config import load

META = {"task": "t", "method": "base", "variant": "tiny", "seed": 0, "step": None}
TASK_SPEC = {"kind": "code_qa", "seq_len": 32, "geometry": {"context_len": 4, "stride": 4, "gen_len": 4},
             "embed_method": "last_token"}
SPECS = {"ce": {"max_chunks": 4, "batch_size": 2},
         "cfm": {"max_chunks": 2, "batch_size": 2, "num_samples": 2, "seed": 3},
         "cfm_by_length": {"max_chunks": 1, "batch_size": 1, "num_samples": 2, "gen_lens": [4, 8]}}
VALIDATION = ("ce", "cfm", "cfm_by_length")  #: the groups every task gets (universal), one model load


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model saved to disk and a prepared code_qa task."""
    root = tmp_path_factory.mktemp("evaljobs")
    tok = tiny_tokenizer(root)
    tiny_model(tok).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    prepare_task("t", {"source": "synthetic_code_qa", "sizes": {"train": 4, "valid": 6, "test": 2}}, root / "data")
    return root / "model", root / "data"


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every model path :func:`ebft.modeling.load_model` is called with."""
    calls: list[str] = []
    real = ebft.modeling.load_model

    def counting(path, **kwargs):
        calls.append(str(path))
        return real(path, **kwargs)

    monkeypatch.setattr(ebft.modeling, "load_model", counting)
    return calls


def test_one_job_per_model_equals_one_job_per_group_and_loads_the_model_once(setup, tmp_path, loads):
    """A code_qa model's job (eval_code_qa: every group of the task) writes what each group's own job writes."""
    model, data = setup
    splits = {"valid": str(data / "valid.jsonl"), "test": str(data / "test.jsonl")}
    code = {"max_problems": 2, "max_new_tokens": 8, "batch_size": 2, "num_samples": 2, "ks": [1, 2], "seed": 1,
            "timeout_s": 5, "workers": 1}
    specs = {**SPECS, "unit_tests": code, "humaneval": code}
    groups = (*VALIDATION, "unit_tests", "humaneval")
    outs = {g: str(tmp_path / "model" / f"{g}.json") for g in groups}
    run_groups(str(model), META, outs, specs=specs, data=splits, task_spec=TASK_SPEC, feature_model=str(model))
    # the base model is its own feature network: one load serves the policy, the features and generation
    assert loads == [str(model)]
    for group in groups:
        single = tmp_path / "single" / f"{group}.json"
        split = EVALUATIONS[group].split
        RUNNERS[group](EvalJob(model=str(model), out=str(single), meta=META, spec=specs[group],
                               data=splits.get(split) if split else None, task_spec=TASK_SPEC,
                               feature_model=str(model)), None)
        merged, alone = read_result(outs[group]), read_result(single)
        assert merged["group"] == alone["group"] == group
        assert merged["metrics"] == alone["metrics"] and merged["metrics"]
        assert merged["details"] == alone["details"]
    assert set(read_result(outs["cfm_by_length"])["metrics"]) >= {"eval/cfm_len4", "eval/cfm_len8"}
    assert set(read_result(outs["humaneval"])["metrics"]) == {"eval/humaneval_greedy", "eval/humaneval_pass@1",
                                                              "eval/humaneval_pass@2"}


def test_a_bad_record_fails_the_model_job_before_any_model_loads(setup, tmp_path, loads):
    model, data = setup
    rows = [json.loads(line) for line in (data / "valid.jsonl").read_text().splitlines()]
    del rows[1]["answer"]
    bad = tmp_path / "valid.jsonl"
    write_jsonl(bad, rows)
    outs = {g: str(tmp_path / f"{g}.json") for g in VALIDATION}
    with pytest.raises(RecordError, match=re.escape(f"{bad}:2:") + ".*key 'answer'"):
        run_groups(str(model), META, outs, specs=SPECS, data={"valid": str(bad)}, task_spec=TASK_SPEC,
                   feature_model=str(model))
    assert loads == []
    assert not any(Path(p).exists() for p in outs.values())


def test_a_model_job_names_a_missing_split_and_an_unknown_group(setup, tmp_path):
    model, _ = setup
    with pytest.raises(ValueError, match=r"evaluation ce of .*: no valid split given \(--data valid=FILE\)"):
        run_groups(str(model), META, {"ce": str(tmp_path / "ce.json")}, task_spec=TASK_SPEC)
    with pytest.raises(ValueError, match=r"unknown evaluation group\(s\) \['bleu'\]"):
        run_groups(str(model), META, {"bleu": str(tmp_path / "bleu.json")})


def test_cli_runs_a_model_job_and_rejects_a_malformed_out(setup, tmp_path):
    model, data = setup
    base = [sys.executable, "-m", "ebft.cli", "evaluate", "model", "--model", str(model), "--meta", json.dumps(META),
            "--task-spec", json.dumps(TASK_SPEC), "--data", f"valid={data / 'valid.jsonl'}",
            "--spec", json.dumps({"ce": SPECS["ce"]})]
    bad = subprocess.run([*base, "--out", str(tmp_path / "ce.json")], capture_output=True, text=True,
                         timeout=HANG_GUARD_S)
    assert bad.returncode != 0 and "--out" in bad.stderr and "is not KEY=VALUE" in bad.stderr
    done = subprocess.run([*base, "--out", f"ce={tmp_path / 'ce.json'}"], capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_result(tmp_path / "ce.json")["metrics"]["eval/ce"] > 0


def test_one_rule_per_task_and_model_kind_covers_the_plan_once():
    assert tuple(g for g, e in EVALUATIONS.items() if e.universal) == VALIDATION
    for config in ("config.yaml", "paper.yaml"):
        cfg = load(config)
        rules = eval_rules(cfg)
        assert len({r.name for r in rules}) == len(rules)
        for job in eval_plan(cfg, run_grid(cfg)):
            owners = [r for r in rules if r.owns(job)]
            assert len(owners) == 1, (config, job)
    rules = {r.name: (r.groups, r.ckpt, r.all_cores) for r in eval_rules(load("config.yaml"))}
    final, ckpt = paths.CKPT.split("|", 1)
    assert rules == {
        "eval_code_qa": ((*VALIDATION, "unit_tests", "humaneval"), final, True),
        "eval_code_qa_ckpt": (("ce", "cfm", "unit_tests"), ckpt, True),
        "eval_code_unstructured": ((*VALIDATION, "humaneval"), final, True),
        "eval_code_unstructured_ckpt": (("ce", "cfm"), ckpt, False),
        "eval_translation": ((*VALIDATION, "translation"), final, False),
        "eval_translation_ckpt": (("ce", "cfm"), ckpt, False)}
    # nothing evaluated over training: no checkpoint rule
    cfg = load("config.yaml")
    for group in ("ce", "cfm", "unit_tests"):
        cfg["evaluation"].setdefault(group, {})["checkpoints"] = False
    assert [r.name for r in eval_rules(cfg)] == ["eval_code_qa", "eval_code_unstructured", "eval_translation"]
    assert re.fullmatch(paths.CKPT, "final") and re.fullmatch(paths.CKPT, "frac0.0136")
    assert not re.fullmatch(paths.CHECKPOINT_NAME, "final")


class _Feats:
    """Stand-in for :class:`ebft.features.Features`: fixed raw and whitened features ``[b, K, n, D]``."""

    def __init__(self, phi, psi, w_phi, w_psi):
        self.raw, self.white = (phi, psi), (w_phi, w_psi)

    def reward_inputs(self, whitened):
        return self.white if whitened else self.raw


def _fixed_features(monkeypatch, feats):
    import types

    import torch

    import ebft.evaluation.cfm as cfm

    monkeypatch.setattr(cfm, "strided_sample", lambda model, ids, layout, **kw: types.SimpleNamespace(
        tokens=torch.zeros(ids.shape[0], kw["num_samples"], layout.num_blocks, layout.gen_len, dtype=torch.long)))
    return lambda ids, tokens, layout, whiten: feats


def test_whitened_reference_form_equals_cfm_for_unit_unwhitened_features_only(monkeypatch):
    import torch
    from torch.nn.functional import normalize

    from ebft.data.packing import Packed
    from ebft.evaluation.cfm import validation_cfm
    from ebft.rewards import cfm_loss

    g = torch.Generator().manual_seed(0)
    b, K, n, D = 2, 3, 4, 5  # L = 8, C = s = G = 2: K = (8 - 2 - 2) / 2 + 1 = 3 blocks
    phi = normalize(torch.randn(b, K, n, D, generator=g), dim=-1)
    psi = normalize(torch.randn(b, K, D, generator=g), dim=-1)
    psi_n = psi.unsqueeze(2).expand(-1, -1, n, -1)  # whitened ground truth is per sample
    packed = Packed(input_ids=torch.zeros(b, 8, dtype=torch.long), loss_mask=torch.ones(b, 8), doc_ids=None)
    model = torch.nn.Linear(1, 1)
    kw = dict(context_len=2, stride=2, gen_len=2, num_samples=n, batch_size=b)
    # unit features with "whitened" = raw: the reference's form is the CFM estimator (reward = -CFM + 1)
    same = validation_cfm(model, _fixed_features(monkeypatch, _Feats(phi, psi, phi, psi_n)), packed, **kw)[0]
    assert same["eval/cfm"] == pytest.approx(float(cfm_loss(phi, psi).mean()), abs=1e-6)
    assert same["eval/cfm_whitened_ref"] == pytest.approx(same["eval/cfm"], abs=1e-5)
    # other whitened features: the reference's form moves, the estimator on raw features does not
    w_phi = 3.0 * normalize(torch.randn(b, K, n, D, generator=g), dim=-1)
    other = validation_cfm(model, _fixed_features(monkeypatch, _Feats(phi, psi, w_phi, psi_n)), packed, **kw)[0]
    assert other["eval/cfm"] == same["eval/cfm"]
    assert abs(other["eval/cfm_whitened_ref"] - other["eval/cfm"]) > 0.1


def test_max_examples_keeps_the_first_rows_of_each_origin():
    """``translation.max_examples`` cuts the in-distribution test rows and an appended out-of-distribution set
    (``data.ood_test``) separately, so a cut evaluation still reports both."""
    from ebft.evaluation.jobs import first_per_origin

    rows = [{"origin": "hub", "i": i} for i in range(5)] + [{"origin": "django", "i": i} for i in range(3)]
    assert [(r["origin"], r["i"]) for r in first_per_origin(rows, 2)] == [
        ("hub", 0), ("hub", 1), ("django", 0), ("django", 1)]
    assert first_per_origin(rows, 10) == rows
