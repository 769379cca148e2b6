"""Every file name the workflow declares, in one place: the Snakefiles, the CLI, the config module and the
report all build their paths here.

Templates are ``str.format`` patterns whose fields are Snakemake wildcards (``{task}``, ``{method}``,
``{variant}``, ``{seed}``, ``{ckpt}``, ``{group}``, ``{model}``, ``{slug}``). :func:`fill` substitutes some
fields and keeps the others as wildcards, so a rule declares ``fill(RUN_MODEL, method="sft")`` and a
target is ``fill(RUN_MODEL, task="code_qa", method="sft", variant="default", seed=0)``.
"""

from __future__ import annotations

import os
import string
from typing import Any

RESULTS = "results"
RESOURCES = "resources/hf"

# data and models
DATA_DIR = "results/data/{task}"
DATA_SPLIT = DATA_DIR + "/{split}.jsonl"
DATA_MANIFEST = DATA_DIR + "/manifest.json"
TOKENIZER = "results/tokenizer"
PRETRAINED_RUN = "results/models/{model}"  #: run directory of a base model pretrained here
PRETRAINED_MODEL = PRETRAINED_RUN + "/model"
PRETRAINED_LOG = PRETRAINED_RUN + "/train_log.jsonl"
HUB_MODEL = RESOURCES + "/models/{slug}"
HUB_DATASET = RESOURCES + "/datasets/{slug}"
HUB_COMET = RESOURCES + "/comet/{slug}"
GGUF_MODEL = RESOURCES + "/gguf/{model}"  #: a config model of ``source: gguf`` converted to an HF directory
COMET_TINY = "results/models/comet-tiny"
HUB_DATA = "results/hub_data/{name}"  #: a ``hub_data`` dataset generated offline in hub format (rule export_hub_data)

# training runs: one directory per (task, method, variant, seed)
RUN = "results/runs/{task}/{method}/{variant}/seed{seed}"
RUN_MODEL = RUN + "/model"
RUN_CHECKPOINTS = RUN + "/checkpoints"  #: holds one directory per declared checkpoint, by CHECKPOINT_NAME
RUN_LOG = RUN + "/train_log.jsonl"
RUN_PLAN = "results/plan/{task}.json"  #: every run of a task resolved against its data (rule plan_runs)
#: a checkpoint's name: ``step<N>`` (``checkpoint_steps``) or ``frac<f>`` (a fraction of the run, resolved to
#: a step once the data is known); its directory holds CHECKPOINT_META with the step it was saved at
CHECKPOINT_NAME = r"step\d+|frac0\.\d+"
CKPT = "final|" + CHECKPOINT_NAME  #: the ``{ckpt}`` wildcard: the final model or a checkpoint
CHECKPOINT_META = "ebft_checkpoint.json"

# evaluation results: one JSON per (task, method, variant, seed, ckpt, group); method "base" has the model key
# as variant; ckpt is "final" or a checkpoint's name (CHECKPOINT_NAME)
EVAL_RESULT = "results/eval/{task}/{method}/{variant}/seed{seed}/{ckpt}/{group}.json"

# tables and figures of the report: file names relative to TABLES / FIGURES (the report writes them there)
TABLES = "results/tables"
FIGURES = "results/figures"
TASK_TABLE_NAME = "{task}{suffix}.{ext}"  #: suffix "" (final models) or "_ablation"; ext csv or html
SUMMARY_NAME = "summary.csv"
FIGURE_NAME = "{name}.svg"
RUN_FIGURE_NAME = "runs/{method}_{variant}_seed{seed}.svg"  #: below FIGURES/{task}
#: figure name -> title; every figure exists for all tasks together (FIGURES/{name}.svg) and, unless listed
#: in OVERVIEW_ONLY, per task (FIGURES/{task}/{name}.svg). The report caption is workflow/report/{name}.rst.
FIGURE_TITLES = {
    "validation_ce": "validation CE",
    "accuracy_vs_ce": "accuracy vs validation CE",
    "cfm_by_length": "CFM vs completion length",
    "training_curves": "metrics over training",
    "ablation": "EBFT ablation bars",
    "training_logs": "training logs (loss, rewards)",
}
OVERVIEW_ONLY = ("validation_ce",)
TASK_FIGURES = tuple(name for name in FIGURE_TITLES if name not in OVERVIEW_ONLY)
TASK_TABLE = TABLES + "/" + TASK_TABLE_NAME
SUMMARY_TABLE = TABLES + "/" + SUMMARY_NAME
OVERVIEW_FIGURE = FIGURES + "/" + FIGURE_NAME
TASK_FIGURE = FIGURES + "/{task}/" + FIGURE_NAME
RUN_FIGURE = FIGURES + "/{task}/" + RUN_FIGURE_NAME

# job logs and Snakemake benchmark files
LOGS = "results/logs"
RULE_BENCHMARKS = "results/benchmarks/rules"


class _Keep(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill(template: str, **fields: Any) -> str:
    """``template`` with the given fields substituted and every other field left as ``{name}``."""
    return string.Formatter().vformat(template, (), _Keep(fields))


def fields_of(template: str) -> list[str]:
    """The field names of a template, in order (``RUN`` -> ``['task', 'method', 'variant', 'seed']``)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def job_file(root: str, rule: str, wildcards: str, ext: str) -> str:
    """Log (``root`` = LOGS) or benchmark file (RULE_BENCHMARKS) of a job: ``{root}/{rule}/{wildcards}.{ext}``."""
    return f"{root}/{rule}/{wildcards}.{ext}" if wildcards else f"{root}/{rule}.{ext}"


def is_local_path(path: str) -> bool:
    """True when a hub dataset's ``path`` names a local dataset (read in place, never downloaded): an
    absolute path, one starting with ``.``, one inside ``results/`` (written by a rule), an existing path, or
    anything that is not a hub id's ``owner/name``."""
    if path.startswith(("/", ".", RESULTS + "/")) or os.path.exists(path):
        return True
    return path.count("/") != 1


def slug(repo_id: str) -> str:
    """``Qwen/Qwen2.5-1.5B`` -> ``Qwen--Qwen2.5-1.5B`` (no slash, safe as a wildcard value)."""
    return repo_id.replace("/", "--")
