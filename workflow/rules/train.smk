# Fine-tuning: one rule per registered method (train_sft, train_rlvr, train_ebft, ...), wildcards
# {task}/{variant}/seed{seed}. Resume state lives in <run>/resume/ (not a declared output), so
# `--rerun-incomplete` after a crash continues where the job stopped. Before any of them, plan_runs checks
# every run of the task against its data and models (ebft/plan.py).

import shlex

from ebft.config import plan_models, plan_spec, tracking_spec


rule plan_runs:
    # a CPU job per task: training sizes vs batch sizes, checkpoints resolved to steps, positions and
    # vocabularies of the models; fails naming the key before any training job of the task starts
    input:
        data=fill(paths.DATA_SPLIT, split="train"),
        models=lambda wildcards: [model_dir(k) for k in plan_models(plan_spec(config, wildcards.task))],
    output:
        paths.RUN_PLAN,
    params:
        spec=lambda wildcards: as_json(plan_spec(config, wildcards.task)),
        models=lambda wildcards: " ".join(f"--model {k}={model_dir(k)}"
                                          for k in plan_models(plan_spec(config, wildcards.task))),
        data=lambda wildcards: fill(paths.DATA_DIR, task=wildcards.task),
    log:
        job_files("plan_runs", "{task}")["log"],
    benchmark:
        job_files("plan_runs", "{task}")["benchmark"]
    conda:
        ENV
    shell:
        "ebft plan --spec {params.spec:q} --data {params.data} {params.models} --out {output} > {log} 2>&1"


def train_inputs(method):
    def _inputs(wildcards):
        inputs = {"init": init_model(method)(wildcards), "data": fill(paths.DATA_SPLIT, task=wildcards.task, split="train"),
                  # ancient: a plan rewritten after a config edit (a new variant, say) retrains nothing
                  "plan": ancient(fill(paths.RUN_PLAN, task=wildcards.task))}
        if REGISTRY[method].feature_network:
            inputs["features"] = feature_model_dir(wildcards.task, wildcards.variant, method)
        return inputs

    return _inputs


def feature_flag(wildcards, input):
    return f"--feature-model {input.features}" if "features" in input.keys() else ""


def tracking_flag(wildcards):
    """``--tracking`` with the resolved `tracking` section (ebft.config.tracking_spec), or nothing without a
    tracker (the tiny default). A param: changing the tracker reruns training (docs/slurm.md)."""
    spec = tracking_spec(config)
    return f"--tracking {shlex.quote(as_json(spec))}" if spec["backend"] != "none" else ""


for _method in METHODS:

    rule:
        name:
            f"train_{_method}"
        input:
            unpack(train_inputs(_method)),
        output:
            model=directory(fill(paths.RUN_MODEL, method=_method)),
            checkpoints=directory(fill(paths.RUN_CHECKPOINTS, method=_method)),
            log=fill(paths.RUN_LOG, method=_method),
        params:
            method=_method,
            # only the task keys training reads (editing e.g. the task's evaluations does not retrain), and a
            # hash of its data settings: not on the shell line, a params rerun trigger (new data retrains)
            task_spec=lambda wildcards: as_json(train_task_spec(config, wildcards.task)),
            data_hash=lambda wildcards: data_hash(config, wildcards.task),
            spec=lambda wildcards, m=_method: as_json(variant_spec(m, wildcards.variant, wildcards.task)),
            features=feature_flag,
            tracking=tracking_flag,
            run=lambda wildcards, m=_method: run_dir(wildcards.task, m, wildcards.variant, wildcards.seed),
            data=lambda wildcards: fill(paths.DATA_DIR, task=wildcards.task),
            launch=launcher,
        log:
            job_files(f"train_{_method}", "{task}/{variant}/seed{seed}")["log"],
        benchmark:
            job_files(f"train_{_method}", "{task}/{variant}/seed{seed}")["benchmark"]
        threads: workflow.cores
        conda:
            ENV
        shell:
            "{params.launch} --threads {threads} train --method {params.method} --task {wildcards.task} "
            "--variant {wildcards.variant} --task-spec {params.task_spec:q} --spec {params.spec:q} "
            "--seed {wildcards.seed} --init {input.init} {params.features} {params.tracking} --data {params.data} "
            "--out {params.run} > {log} 2>&1"
