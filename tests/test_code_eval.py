"""HumanEval / unit-test scoring through the sandbox: canonical solutions pass, pass@k is the unbiased one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ebft.evaluation.code import code_qa_problems, humaneval_problems, pass_at_k, score_samples
from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]


def test_pass_at_k_is_the_unbiased_estimator():
    n, c = np.array([5, 5, 4]), np.array([0, 2, 4])
    # 1 - C(n-c, k) / C(n, k): k=1 -> c/n; k=2 -> 1 - (3*2)/(5*4) for the middle problem
    assert pass_at_k(n, c, 1).tolist() == pytest.approx([0.0, 0.4, 1.0])
    assert pass_at_k(n, c, 2).tolist() == pytest.approx([0.0, 0.7, 1.0])


def test_score_samples_on_a_code_qa_subset_with_repeats():
    record = {"id": "p0", "question": "def inc(x):\n", "answer": "    return x + 1\n", "entry_point": "inc",
              "test": "def check(candidate):\n    assert candidate(1) == 2\n"}
    problems = code_qa_problems([record])
    samples = [{"task_id": "p0", "completion": c} for c in ["    return x + 1\n", "    return x\n",
                                                            "    return x + 1\n", "    while True: pass\n"]]
    cache: dict = {}
    result = score_samples(samples, problems, ks=[1, 2, 8], timeout_s=2, cache=cache)
    assert result["per_task"]["p0"]["n"] == 4 and result["per_task"]["p0"]["c"] == 2
    assert result["pass@1"] == pytest.approx(0.5) and "pass@8" not in result  # k > n is not reported
    assert [s["status"] for s in result["per_sample"]] == ["passed", "failed", "passed", "timeout"]
    assert len(cache) == 3  # the repeated program ran once
    with pytest.raises(ValueError, match="unknown task_id"):
        score_samples([{"task_id": "nope", "completion": ""}], problems)


@pytest.mark.slow
@pytest.mark.parametrize(("which", "expected"), [("canonical_solution", 1.0), (None, 0.0)])
def test_cli_scores_humaneval_samples_files(tmp_path, which, expected):
    problems = humaneval_problems()
    assert len(problems) == 164
    samples = tmp_path / "samples.jsonl"
    with samples.open("w") as fh:
        for task_id, p in problems.items():
            fh.write(json.dumps({"task_id": task_id, "completion": p[which] if which else ""}) + "\n")
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "-m", "ebft.cli", "evaluate", "humaneval", "--samples", str(samples),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["pass@1"] == expected and result["num_problems"] == 164
    assert len(result["per_sample"]) == 164 and len(result["per_task"]) == 164
