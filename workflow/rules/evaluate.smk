# Evaluations of the base model, every final model and every declared checkpoint: one rule per group of
# ebft.evaluation.EVALUATIONS (eval_ce, eval_cfm, ...), generated like the training rules. Results:
# ebft.paths.EVAL_RESULT (results/eval/{task}/{method}/{variant}/seed{seed}/{ckpt}/{group}.json).

import shlex


EVAL_WILDCARDS = "{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}"


def eval_model(wildcards):
    """Model directory an evaluation reads: base, a final run model, or a run's checkpoints directory."""
    if wildcards.evalmethod == "base":
        return model_dir(wildcards.variant)
    run = dict(task=wildcards.task, method=wildcards.evalmethod, variant=wildcards.variant, seed=wildcards.seed)
    return fill(paths.RUN_MODEL if wildcards.ckpt == "final" else paths.RUN_CHECKPOINTS, **run)


def eval_model_path(wildcards, input):
    return input.model if wildcards.ckpt == "final" else f"{input.model}/{wildcards.ckpt}"


def eval_meta(wildcards):
    step = None if wildcards.ckpt == "final" else int(wildcards.ckpt[4:])
    return as_json({"task": wildcards.task, "method": wildcards.evalmethod, "variant": wildcards.variant,
                    "seed": int(wildcards.seed), "step": step})


def eval_inputs(evaluation):
    """Input function of one group: the model, the data split it reads, the frozen feature network (the
    evaluated model's base model; for scale-grid variants, the model that variant trains), COMET."""

    def _inputs(wildcards):
        inputs = {"model": eval_model(wildcards)}
        if evaluation.split:
            inputs["data"] = fill(paths.DATA_SPLIT, task=wildcards.task, split=evaluation.split)
        if evaluation.feature_network:
            inputs["features"] = (model_dir(wildcards.variant) if wildcards.evalmethod == "base"
                                  else feature_model_dir(wildcards.task, wildcards.variant, wildcards.evalmethod))
        if evaluation.comet and comet_model_dir() is not None:
            inputs["comet"] = comet_model_dir()
        return inputs

    return _inputs


def eval_flags(evaluation):
    """The group's input options of `ebft evaluate` (see ebft.cli)."""

    def _flags(wildcards, input):
        flags = []
        if evaluation.split:
            flags.append(f"--data {input.data}")
        if evaluation.task_spec:
            flags.append("--task-spec " + shlex.quote(as_json(train_task_spec(config, wildcards.task))))
        if evaluation.feature_network:
            flags.append(f"--feature-model {input.features}")
        if "comet" in input.keys():
            flags.append(f"--comet-model {input.comet}")
        return " ".join(flags)

    return _flags


for _group, _evaluation in EVALUATIONS.items():

    rule:
        name:
            f"eval_{_group}"
        input:
            unpack(eval_inputs(_evaluation)),
        output:
            fill(paths.EVAL_RESULT, method="{evalmethod}", group=_group),
        params:
            command=_evaluation.command,
            model=eval_model_path,
            flags=eval_flags(_evaluation),
            spec=as_json(_evaluation.settings(config["evaluation"])),
            meta=eval_meta,
        log:
            job_files(f"eval_{_group}", EVAL_WILDCARDS)["log"],
        benchmark:
            job_files(f"eval_{_group}", EVAL_WILDCARDS)["benchmark"]
        threads: workflow.cores if _evaluation.all_cores else 1
        conda:
            ENV
        shell:
            "ebft --threads {threads} evaluate {params.command} --model {params.model} {params.flags} "
            "--spec {params.spec:q} --meta {params.meta:q} --out {output} > {log} 2>&1"


rule build_comet_tiny:
    input:
        data=lambda wildcards: [fill(paths.DATA_SPLIT, task=t, split="train") for t in TASKS
                                if config["tasks"][t]["kind"] == "translation"],
    output:
        directory(paths.COMET_TINY),
    log:
        job_files("build_comet_tiny")["log"],
    benchmark:
        job_files("build_comet_tiny")["benchmark"]
    conda:
        ENV  # `ebft` runs the COMET interpreter itself (EBFT_COMET_PYTHON or .venv-comet; docs/comet.md)
    shell:
        "ebft build-comet-tiny --data {input.data[0]} --out {output} > {log} 2>&1"


rule download_comet:
    output:
        directory(paths.HUB_COMET),
    params:
        repo_id=lambda wildcards: config["evaluation"]["translation"]["comet_model"],
        encoder=config["evaluation"].get("translation", {}).get("comet_encoder", "FacebookAI/xlm-roberta-large"),
    log:
        job_files("download_comet", "{slug}")["log"],
    conda:
        ENV
    shell:
        "ebft download model --repo-id {params.repo_id} --encoder {params.encoder} --out {output} > {log} 2>&1"
