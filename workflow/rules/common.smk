# Config validation, helpers and the run grid. No method logic lives in the .smk files.

import json
import os

from snakemake.utils import validate

from ebft.config import METHODS, base_models, eval_plan, run_grid, task_variants
from ebft.hub import slug


validate(config, schema="../schemas/config.schema.yaml")

TASKS = list(config["tasks"])
# Methods whose training rule exists in rules/train.smk; configured sections of others are kept but not run.
TRAINED_METHODS = ("sft", "rlvr", "ebft")
RUNS = run_grid(config, TRAINED_METHODS)
SEEDS = [int(s) for s in config["seeds"]]
ENV = "../../envs/ebft.yaml"

# hub repositories the paper config needs, by slug (the download rules' wildcard)
HUB_MODELS = {slug(m["repo_id"]): m for m in config["models"].values() if m["source"] == "hub"}
HUB_DATASETS = {
    slug(s["path"]): s
    for t in config["tasks"].values()
    if t["data"]["source"] == "hub"
    for s in [*t["data"]["splits"].values(), *([t["data"]["ood_test"]] if t["data"].get("ood_test") else [])]
}


wildcard_constraints:
    task="|".join(TASKS),
    method="|".join(METHODS),
    evalmethod="base|" + "|".join(METHODS),
    variant=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    seed=r"\d+",
    ckpt=r"final|step\d+",
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    slug=r"[A-Za-z0-9][A-Za-z0-9_.-]*--[A-Za-z0-9_.-]+",


def comet_model_dir():
    """The COMET checkpoint translation evaluation uses: built here ('tiny'), downloaded (a hub id), a local
    path, or None (no COMET)."""
    name = config["evaluation"].get("translation", {}).get("comet_model")
    if not name:
        return None
    if name == "tiny":
        return "results/models/comet-tiny"
    if "/" in name and not os.path.exists(name):
        return f"resources/hf/comet/{slug(name)}"
    return name


def as_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def model_dir(name):
    """Local directory of a config model: pretrained here or downloaded from the hub."""
    spec = config["models"][name]
    if spec["source"] == "pretrain":
        return f"results/models/{name}/model"
    return f"resources/hf/models/{slug(spec['repo_id'])}"


def task_spec(task):
    """The parts of tasks.<task> the package needs (kind, geometry); data settings travel separately."""
    return {k: v for k, v in config["tasks"][task].items() if k != "data"}


def variant_spec(method, variant, task):
    variants = task_variants(config, method, task)
    if variant not in variants:
        raise ValueError(f"methods.{method}: no variant named {variant!r} for task {task} (have: {sorted(variants)})")
    return variants[variant]


def run_dir(task, method, variant, seed):
    return f"results/runs/{task}/{method}/{variant}/seed{seed}"


def init_model(method):
    """Input function: where a run of `method` starts (the task's base model or an SFT warm start)."""

    def _init(wildcards):
        spec = variant_spec(method, wildcards.variant, wildcards.task)
        if spec.get("init", "base") == "base":
            return model_dir(spec.get("base_model", config["tasks"][wildcards.task]["base_model"]))
        if "base_model" in spec:  # scale grid: warm start from this pipeline's SFT of that model
            return run_dir(wildcards.task, "sft", f"default.{spec['base_model']}", wildcards.seed) + "/model"
        warm = config["tasks"][wildcards.task].get("sft_warm_start", "own")
        if warm == "own":
            return run_dir(wildcards.task, "sft", "default", wildcards.seed) + "/model"
        return model_dir(warm)

    return _init


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


def eval_model(wildcards):
    """Model directory an evaluation reads: base, a final run model, or a run checkpoint."""
    if wildcards.evalmethod == "base":
        return model_dir(wildcards.variant)
    run = run_dir(wildcards.task, wildcards.evalmethod, wildcards.variant, wildcards.seed)
    return f"{run}/model" if wildcards.ckpt == "final" else f"{run}/checkpoints"


EVAL_JOBS = eval_plan(config, RUNS)


def eval_targets(group=None):
    """Result files of one evaluation group (or of all groups)."""
    return [job.path for job in EVAL_JOBS if group is None or job.group == group]


def eval_meta(wildcards):
    step = None if wildcards.ckpt == "final" else int(wildcards.ckpt[4:])
    return as_json({"task": wildcards.task, "method": wildcards.evalmethod, "variant": wildcards.variant,
                    "seed": int(wildcards.seed), "step": step})


def all_targets():
    """Every artefact of the report (rule aggregate): tables and ablation tables per task, per-task and
    overview figures, and one figure per run."""
    return (
        expand("results/tables/{task}{suffix}.{ext}", task=TASKS, suffix=["", "_ablation"], ext=["html", "csv"])
        + ["results/tables/summary.csv"]
        + [f"results/figures/{name}.svg"
           for name in ("validation_ce", "cfm_by_length", "training_curves", "accuracy_vs_ce", "ablation")]
        + expand("results/figures/{task}/{name}.svg", task=TASKS,
                 name=["accuracy_vs_ce", "cfm_by_length", "training_curves", "ablation"])
        + [f"results/figures/{r.task}/runs/{r.method}_{r.variant}_seed{r.seed}.svg" for r in RUNS]
    )
