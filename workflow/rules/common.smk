# Config validation, the run grid and the helpers every rule file uses. No method logic lives in the .smk
# files: methods come from ebft.methods.REGISTRY, evaluations from ebft.evaluation.EVALUATIONS and every
# path from ebft.paths.

import json
import os

from snakemake.utils import validate

from ebft import paths
from ebft.checks import check_config
from ebft.config import base_models, data_hash, eval_plan, eval_rules, run_grid, task_variants, train_task_spec
from ebft.evaluation import EVALUATIONS
from ebft.gguf import gguf_file
from ebft.methods import METHODS, REGISTRY
from ebft.paths import fill, slug


validate(config, schema="../schemas/config.schema.yaml")
check_config(config)  # every check that needs no data, before any job runs (ebft/checks.py)

TASKS = list(config["tasks"])
RUNS = run_grid(config, METHODS)
EVAL_JOBS = eval_plan(config, RUNS)
ENV = "../../envs/ebft.yaml"

# hub repositories the paper config needs, by slug (the download rules' wildcard)
HUB_MODELS = {slug(m["repo_id"]): m for m in config["models"].values() if m["source"] == "hub"}
HUB_DATASETS = {
    slug(s["path"]): s
    for t in config["tasks"].values()
    if t["data"]["source"] == "hub"
    for s in [*t["data"]["splits"].values(), *([t["data"]["ood_test"]] if t["data"].get("ood_test") else [])]
    if not paths.is_local_path(s["path"])  # a local dataset is read in place
}


wildcard_constraints:
    task="|".join(TASKS),
    method="|".join(METHODS),
    evalmethod="base|" + "|".join(METHODS),
    variant=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    seed=r"\d+",
    ckpt=paths.CKPT,
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    slug=r"[A-Za-z0-9][A-Za-z0-9_.-]*--[A-Za-z0-9_.-]+",


def as_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def job_files(rule, wildcards=""):
    """log: and benchmark: paths of a rule's jobs (``wildcards``: the pattern that makes them unique)."""
    return {"log": paths.job_file(paths.LOGS, rule, wildcards, "log"),
            "benchmark": paths.job_file(paths.RULE_BENCHMARKS, rule, wildcards, "tsv")}


def comet_model_dir():
    """The COMET checkpoint translation evaluation uses: built here ('tiny'), downloaded (a hub id), a local
    path, or None (no COMET)."""
    name = config["evaluation"].get("translation", {}).get("comet_model")
    if not name:
        return None
    if name == "tiny":
        return paths.COMET_TINY
    if "/" in name and not os.path.exists(name):
        return fill(paths.HUB_COMET, slug=slug(name))
    return name


def model_dir(name):
    """Local directory of a config model: pretrained here, downloaded from the hub, a local directory, or
    converted from a GGUF file."""
    spec = config["models"][name]
    if spec["source"] == "pretrain":
        return fill(paths.PRETRAINED_MODEL, model=name)
    if spec["source"] == "local":
        return spec["path"]
    if spec["source"] == "gguf":
        return fill(paths.GGUF_MODEL, model=name)
    return fill(paths.HUB_MODEL, slug=slug(spec["repo_id"]))


def variant_spec(method, variant, task):
    variants = task_variants(config, method, task)
    if variant not in variants:
        raise ValueError(f"methods.{method}: no variant named {variant!r} for task {task} (have: {sorted(variants)})")
    return variants[variant]


def run_dir(task, method, variant, seed):
    return fill(paths.RUN, task=task, method=method, variant=variant, seed=seed)


def init_model(method):
    """Input function: where a run of `method` starts (the task's base model or an SFT warm start)."""

    def _init(wildcards):
        spec = variant_spec(method, wildcards.variant, wildcards.task)
        if spec.get("init", "base") == "base":
            return model_dir(spec.get("base_model", config["tasks"][wildcards.task]["base_model"]))
        if "base_model" in spec:  # scale grid: warm start from this pipeline's SFT of that model
            return fill(paths.RUN_MODEL, task=wildcards.task, method="sft", variant=f"default.{spec['base_model']}",
                        seed=wildcards.seed)
        warm = config["tasks"][wildcards.task].get("sft_warm_start", "own")
        if warm == "own":
            return fill(paths.RUN_MODEL, task=wildcards.task, method="sft", variant="default", seed=wildcards.seed)
        return model_dir(warm)

    return _init


def feature_model_dir(task, variant=None, method="ebft"):
    """The frozen feature network of `task` (EBFT's reward features and the CFM metric):
    tasks.<task>.feature_model, else the base model; a scale-grid variant's own base model."""
    spec = config["tasks"][task]
    key = spec.get("feature_model", spec["base_model"])
    if variant is not None and method in config["methods"]:
        key = variant_spec(method, variant, task).get("base_model", key)
    return model_dir(key)


def launcher(wildcards, resources):
    """`ebft` in one process, or `accelerate launch` over the GPUs the job was given (profile resources).

    GPU jobs run offline (HF_HUB_OFFLINE=1: the download rules ran before) and export the GPU count the
    training entry point checks (ebft.slurm.check_visible_gpus). A multi-node job (resources nodes > 1,
    gpus_per_node, mpi="srun") starts one `python -m ebft.slurm launch` per node with `srun`: accelerate
    with Slurm's node list as rendezvous (docs/slurm.md)."""
    gpus = int(getattr(resources, "gpu", 0) or 0)
    nodes = int(getattr(resources, "nodes", 1) or 1)
    per_node = int(getattr(resources, "gpus_per_node", 0) or 0) or gpus
    env = f"EBFT_EXPECTED_GPUS={per_node} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 " if per_node else ""
    if nodes > 1:
        return (f"{env}srun --nodes {nodes} --ntasks-per-node 1 python -m ebft.slurm launch "
                f"--gpus-per-node {per_node} --")
    if gpus > 1:
        return f"{env}accelerate launch --num_processes {gpus} --num_machines 1 -m ebft.cli"
    return f"{env}ebft"


def eval_targets(group=None):
    """Result files of one evaluation group (or of all groups)."""
    return [job.path for job in EVAL_JOBS if group is None or job.group == group]


def all_targets():
    """Every artefact of the report (rule aggregate): tables and ablation tables per task, per-task and
    overview figures, and one figure per run."""
    return (
        [fill(paths.TASK_TABLE, task=t, suffix=s, ext=e) for t in TASKS for s in ("", "_ablation")
         for e in ("html", "csv")]
        + [paths.SUMMARY_TABLE]
        + [fill(paths.OVERVIEW_FIGURE, name=name) for name in paths.FIGURE_TITLES]
        + [fill(paths.TASK_FIGURE, task=t, name=name) for t in TASKS for name in paths.TASK_FIGURES]
        + [fill(paths.RUN_FIGURE, task=r.task, method=r.method, variant=r.variant, seed=r.seed) for r in RUNS]
    )


def kept_outputs():
    """Every model, checkpoint directory, training log and evaluation result of the config: the outputs a
    killed or interrupted job may have deleted (Snakemake removes a job's outputs before it runs it)."""
    runs = [dict(task=r.task, method=r.method, variant=r.variant, seed=r.seed) for r in RUNS]
    pretrained = sorted({m for t in TASKS for m in base_models(config, t, RUNS)
                         if config["models"][m]["source"] == "pretrain"})
    return (
        [fill(template, **run) for run in runs for template in (paths.RUN_MODEL, paths.RUN_CHECKPOINTS, paths.RUN_LOG)]
        + [fill(paths.PRETRAINED_MODEL, model=m) for m in pretrained]
        + eval_targets()
    )
