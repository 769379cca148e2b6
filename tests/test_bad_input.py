"""Degenerate input is rejected with its location, and nothing NaN is hidden.

Each test reproduces one way bad input used to slip through (a record without a required key, an empty split,
a split edited after ``prepare-data``, an empty samples file, a truncated result file, a NaN metric) and
checks the error names the file (and line and key) or that the value stays visible.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from ebft.config import TrainConfig
from ebft.data.jsonl import write_jsonl
from ebft.data.prepare import prepare_task
from ebft.data.records import RecordError
from ebft.evaluation.jobs import EvalJob, run_ce, run_translation, run_unit_tests, score_humaneval_samples
from ebft.evaluation.results import make_result, read_result, trained_steps, write_result
from ebft.methods import TrainJob
from ebft.methods.sft import SFTObjective
from ebft.report.frames import load_results
from ebft.report.tables import write_task_tables
from ebft.train import pretrain, train, train_tokenizer
from ebft.trainer import Trainer, read_log
from tests.helpers import TINY_SPEC, tiny_model, tiny_tokenizer

CODE_QA = {"id": "p0", "question": "def inc(x):\n", "answer": "    return x + 1\n", "entry_point": "inc",
           "test": "def check(candidate):\n    assert candidate(1) == 2\n"}
QA = {"id": "q0", "question": "What is 1 + 1?", "answer": "2"}
SPEC = {"lr": 1e-3, "max_steps": 1, "batch_size": 2, "micro_batch_size": 2, "log_every": 1}


def _loc(path: Path, line: int) -> str:
    """The ``path:line`` prefix of an error message, as a regex."""
    return re.escape(f"{path}:{line}:")


@pytest.fixture(scope="module")
def init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model and tokenizer saved to disk (the ``init`` of a training or evaluation job)."""
    root = tmp_path_factory.mktemp("init")
    tok = tiny_tokenizer(root)
    path = root / "model"
    tiny_model(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _train(init: Path, data_dir: Path, kind: str = "code_qa", method: str = "sft") -> dict[str, Any]:
    job = TrainJob(task="t", task_spec={"kind": kind, "seq_len": 32}, init=str(init), seed=0)
    return train(method, job, SPEC, data_dir, data_dir.parent / "run")


def _split(directory: Path, rows: list[dict[str, Any]], name: str = "train") -> Path:
    path = directory / f"{name}.jsonl"
    write_jsonl(path, rows)
    return path


# ------------------------------------------------------------------------------ 1. record validation
@pytest.mark.parametrize("method", ["sft", "rlvr"])
def test_train_rejects_a_code_record_without_test_naming_file_line_and_key(tmp_path, init, method):
    bad = {k: v for k, v in CODE_QA.items() if k != "test"} | {"id": "p1"}
    path = _split(tmp_path / "data", [CODE_QA, bad])
    with pytest.raises(RecordError, match=_loc(path, 2) + ".*key 'test' is missing"):
        _train(init, path.parent, method=method)


@pytest.mark.parametrize(("key", "value", "problem"), [("answer", None, "must be a string, got NoneType"),
                                                       ("question", "  ", "must be a non-empty string")])
def test_train_rejects_null_or_empty_fields(tmp_path, init, key, value, problem):
    path = _split(tmp_path / "data", [QA, {**QA, "id": "q1", key: value}])
    with pytest.raises(RecordError, match=_loc(path, 2) + f".*key '{key}' {problem}"):
        _train(init, path.parent, kind="qa")


def test_train_rejects_an_empty_split_naming_the_file(tmp_path, init):
    path = _split(tmp_path / "data", [])
    with pytest.raises(ValueError, match=re.escape(f"{path}: empty split (no records)")):
        _train(init, path.parent)


def test_unstructured_keeps_its_empty_question(tmp_path):
    from ebft.data.jsonl import read_split

    path = _split(tmp_path, [{"id": "d0", "question": "", "answer": "print(1)\n"}])
    assert read_split(path, "unstructured")[0]["question"] == ""
    with pytest.raises(RecordError, match=_loc(path, 1) + ".*key 'question'"):
        read_split(path, "qa")


def _eval_job(init: Path, data: Path, kind: str | None, out: Path) -> EvalJob:
    task_spec = {"kind": kind, "seq_len": 32} if kind else None
    return EvalJob(model=str(init), out=str(out), meta={"task": "t", "method": "base", "variant": "tiny",
                                                         "seed": 0, "step": None}, data=str(data),
                   task_spec=task_spec)


def test_unit_tests_evaluation_rejects_a_record_without_test(tmp_path, init):
    path = _split(tmp_path, [{k: v for k, v in CODE_QA.items() if k != "test"}], "test")
    with pytest.raises(RecordError, match=_loc(path, 1) + ".*key 'test' is missing"):
        run_unit_tests(_eval_job(init, path, None, tmp_path / "out.json"))


def test_ce_evaluation_rejects_a_null_answer_before_tokenizing(tmp_path, init):
    path = _split(tmp_path, [QA, {**QA, "id": "q1", "answer": None}], "valid")
    with pytest.raises(RecordError, match=_loc(path, 2) + ".*key 'answer'"):
        run_ce(_eval_job(init, path, "qa", tmp_path / "out.json"))
    assert not (tmp_path / "out.json").exists()


def test_translation_evaluation_rejects_an_empty_split(tmp_path, init):
    path = _split(tmp_path, [], "test")
    with pytest.raises(ValueError, match=re.escape(f"{path}: empty split (no records)")):
        run_translation(_eval_job(init, path, None, tmp_path / "out.json"))


def _prepared(tmp_path: Path) -> Path:
    """A small code_qa task written by prepare-data (splits and manifest)."""
    out = tmp_path / "data"
    prepare_task("t", {"source": "synthetic_code_qa", "sizes": {"train": 4, "valid": 2, "test": 2}}, out)
    return out


def test_tokenizer_and_pretraining_corpora_are_validated_against_their_manifest_kind(tmp_path):
    task = _prepared(tmp_path)
    assert train_tokenizer([str(task / "train.jsonl")], 300, 10_000, tmp_path / "tok0") > 256
    rows = [json.loads(line) for line in (task / "train.jsonl").read_text().splitlines()]
    del rows[2]["entry_point"]
    write_jsonl(task / "train.jsonl", rows)
    with pytest.raises(RecordError, match=_loc(task / "train.jsonl", 3) + ".*key 'entry_point'"):
        train_tokenizer([str(task / "train.jsonl")], 300, 10_000, tmp_path / "tok")
    loose = _split(tmp_path / "loose", [{"id": "d0", "question": "", "answer": "x = 1\n"}, {"id": "d1"}])
    with pytest.raises(RecordError, match=_loc(loose, 2) + ".*key 'question' is missing"):
        pretrain(tmp_path / "tok", [str(loose)], {**TINY_SPEC, "pretrain": {}}, tmp_path / "base")


# ------------------------------------------------------------------------------ 2. manifest hash
def test_train_rejects_a_split_modified_after_prepare_data(tmp_path, init):
    data = _prepared(tmp_path)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    write_jsonl(data / "train.jsonl", rows[:-1])  # still valid records, but not what prepare-data wrote
    message = f"{data / 'train.jsonl'}: was modified after prepare-data; rerun prepare_data"
    with pytest.raises(ValueError, match=re.escape(message)):
        _train(init, data)


def test_verify_split_accepts_prepared_data_and_warns_without_a_manifest(tmp_path, caplog):
    from ebft.data.manifest import verify_split

    data = _prepared(tmp_path)
    verify_split(data / "train.jsonl")
    (data / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING):
        verify_split(data / "train.jsonl")
    assert "no manifest.json" in caplog.text and str(data / "train.jsonl") in caplog.text


def test_a_broken_manifest_is_named(tmp_path):
    from ebft.data.manifest import verify_split

    data = _prepared(tmp_path)
    (data / "manifest.json").write_text('{"files": ')
    with pytest.raises(ValueError, match=re.escape(str(data / "manifest.json"))):
        verify_split(data / "train.jsonl")


# ------------------------------------------------------------------------------ 3. empty samples
def test_scoring_an_empty_samples_file_fails_naming_it(tmp_path):
    samples = tmp_path / "samples.jsonl"
    samples.write_text("")
    out = tmp_path / "result.json"
    with pytest.raises(ValueError, match=re.escape(f"{samples}: no samples")):
        score_humaneval_samples(samples, {}, out)
    assert not out.exists()


def test_score_samples_rejects_an_empty_sample_list():
    from ebft.evaluation.code import code_qa_problems, score_samples

    with pytest.raises(ValueError, match="greedy.jsonl: no samples"):
        score_samples([], code_qa_problems([CODE_QA]), where="greedy.jsonl")


# ------------------------------------------------------------------------------ 4. report
def _result(root: Path, method: str, seed: int, metrics: dict[str, float]) -> Path:
    res = make_result("cfm", {"task": "t", "method": method, "variant": "default" if method != "base" else "tiny",
                              "seed": seed, "step": None}, metrics, model=f"results/runs/t/{method}/model")
    path = root / method / f"seed{seed}.json"
    write_result(path, res)
    return path


def test_a_truncated_result_file_is_named(tmp_path):
    good = _result(tmp_path, "sft", 0, {"eval/cfm": 1.0})
    bad = tmp_path / "ebft" / "seed0.json"
    bad.parent.mkdir()
    bad.write_text(good.read_text()[:40])
    with pytest.raises(ValueError, match=re.escape(f"{bad}: not valid JSON")):
        read_result(bad)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        load_results([good, bad])


def test_nan_metrics_show_as_nan_with_a_note(tmp_path):
    paths = [_result(tmp_path, "base", 0, {"eval/cfm": 1.5, "eval/ce": 2.0}),
             _result(tmp_path, "sft", 0, {"eval/cfm": 1.0, "eval/ce": 1.8}),
             _result(tmp_path, "sft", 1, {"eval/cfm": 1.2, "eval/ce": 1.9}),
             _result(tmp_path, "ebft", 0, {"eval/cfm": math.nan, "eval/ce": 1.7}),
             _result(tmp_path, "ebft", 1, {"eval/cfm": 0.9, "eval/ce": 1.6})]
    assert read_result(paths[3])["metrics"]["eval/cfm"] is None  # stored as null
    frame = load_results(paths)
    tables = tmp_path / "tables"
    tables.mkdir()
    write_task_tables(frame, "t", tables, None, {})
    html = (tables / "t.html").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"<tr><th>([^<]+)</th>.*?</tr>", html)}
    assert "<td>NaN</td>" in rows["EBFT (from base)"]  # one seed NaN: the mean is NaN, not the other seed
    assert "NaN" not in rows["SFT"] and "NaN" not in rows["base"]
    assert "NaN: the metric was not finite for this model" in html and "eval/cfm" in html
    assert "<td>NaN</td>" in (tables / "t_ablation.html").read_text()
    csv_row = next(line for line in (tables / "t.csv").read_text().splitlines() if line.startswith("ebft,"))
    assert ",," in csv_row  # the CSV keeps an empty cell (docs/report.md)


def test_a_metric_absent_for_a_model_stays_blank_without_a_note(tmp_path):
    paths = [_result(tmp_path, "base", 0, {"eval/ce": 2.0}), _result(tmp_path, "sft", 0, {"eval/cfm": 1.0,
                                                                                           "eval/ce": 1.8})]
    tables = tmp_path / "tables"
    tables.mkdir()
    write_task_tables(load_results(paths), "t", tables, None, {})
    html = (tables / "t.html").read_text()
    assert "NaN" not in html


# ------------------------------------------------------------------------------ 5. train_log.jsonl
class _NanMetric(SFTObjective):
    """SFT plus a metric that is NaN (like EBFT's ``ebft/cfm`` with one sample)."""

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, Any], step: int,
                     micro: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics = super().compute_loss(model, batch, step, micro)
        return loss, {**metrics, "ebft/cfm": math.nan, "ebft/inf": math.inf}


def _strict(line: str) -> dict[str, Any]:
    """Parse one JSON line, refusing the non-standard NaN/Infinity tokens."""
    def refuse(token: str) -> None:
        raise ValueError(f"invalid JSON token {token}")

    return json.loads(line, parse_constant=refuse)


def test_train_log_writes_non_finite_metrics_as_null(tmp_path):
    from ebft.data.packing import pack_records

    tok = tiny_tokenizer(tmp_path)
    data = pack_records([{"question": "", "answer": "def f():\n    return 1\n"}] * 8, tok, 16, "unstructured")
    cfg = TrainConfig.from_dict({**SPEC, "max_steps": 2, "seq_len": 16})
    Trainer(cfg, tmp_path / "run", show_progress=False).fit(tiny_model(tok), tok, data, _NanMetric())
    log_path = tmp_path / "run" / "train_log.jsonl"
    lines = [_strict(line) for line in log_path.read_text().splitlines()]
    assert [r["ebft/cfm"] for r in lines if "event" not in r] == [None, None]
    rows = read_log(log_path)
    assert [r["ebft/inf"] for r in rows] == [None, None] and all(math.isfinite(r["train/loss"]) for r in rows)
    assert trained_steps(tmp_path / "run" / "model") == 2
