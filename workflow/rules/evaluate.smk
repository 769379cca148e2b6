# Evaluations of the base model, every final model and every declared checkpoint: one job per model, which
# loads it (and the feature network) once (ebft.config.eval_rules): eval_<task> computes every evaluation
# group of the task on a base or final model (code_qa: CE, CFM, CFM by length, unit tests, HumanEval),
# eval_<task>_ckpt the groups evaluated over training on a checkpoint. Every job writes one result per
# group: ebft.paths.EVAL_RESULT (results/eval/{task}/{method}/{variant}/seed{seed}/{ckpt}/{group}.json).

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
    """The result's identity; a checkpoint named by a fraction of the run gets its step from its directory."""
    step = int(wildcards.ckpt[4:]) if wildcards.ckpt.startswith("step") else None
    return as_json({"task": wildcards.task, "method": wildcards.evalmethod, "variant": wildcards.variant,
                    "seed": int(wildcards.seed), "step": step, "checkpoint": wildcards.ckpt})


def eval_inputs(groups):
    """Input function of a rule: the model, the data splits its groups read, the frozen feature network (the
    evaluated model's base model; for scale-grid variants, the model that variant trains), COMET."""
    evaluations = [EVALUATIONS[g] for g in groups]

    def _inputs(wildcards):
        inputs = {"model": eval_model(wildcards)}
        for split in dict.fromkeys(e.split for e in evaluations if e.split):
            inputs[f"data_{split}"] = fill(paths.DATA_SPLIT, task=wildcards.task, split=split)
        if any(e.feature_network for e in evaluations):
            inputs["features"] = (model_dir(wildcards.variant) if wildcards.evalmethod == "base"
                                  else feature_model_dir(wildcards.task, wildcards.variant, wildcards.evalmethod))
        if any(e.comet for e in evaluations) and comet_model_dir() is not None:
            inputs["comet"] = comet_model_dir()
        return inputs

    return _inputs


def eval_spec(groups):
    """The groups' settings as JSON (a final model's, or a checkpoint's: `final_max_chunks` applies to final
    and base models only)."""

    def _spec(wildcards):
        return as_json({g: EVALUATIONS[g].settings(config["evaluation"], final=wildcards.ckpt == "final")
                        for g in groups})

    return _spec


def eval_flags(groups):
    """The input options of `ebft evaluate model` for a rule's groups (see ebft.cli)."""
    evaluations = [EVALUATIONS[g] for g in groups]

    def _flags(wildcards, input):
        flags = [f"--data {key[5:]}={value}" for key, value in input.items() if key.startswith("data_")]
        if any(e.task_spec for e in evaluations):
            flags.append("--task-spec " + shlex.quote(as_json(train_task_spec(config, wildcards.task))))
        if "features" in input.keys():
            flags.append(f"--feature-model {input.features}")
        if "comet" in input.keys():
            flags.append(f"--comet-model {input.comet}")
        return " ".join(flags)

    return _flags


for _rule in eval_rules(config):

    rule:
        name:
            _rule.name
        input:
            unpack(eval_inputs(_rule.groups)),
        output:
            **{g: fill(paths.EVAL_RESULT, method="{evalmethod}", group=g) for g in _rule.groups},
        wildcard_constraints:
            task=_rule.task,
            ckpt=_rule.ckpt,
        params:
            model=eval_model_path,
            flags=eval_flags(_rule.groups),
            outs=lambda wildcards, output: " ".join(f"--out {g}={path}" for g, path in output.items()),
            spec=eval_spec(_rule.groups),
            meta=eval_meta,
        log:
            job_files(_rule.name, EVAL_WILDCARDS)["log"],
        benchmark:
            job_files(_rule.name, EVAL_WILDCARDS)["benchmark"]
        threads: workflow.cores if _rule.all_cores else 1
        conda:
            ENV
        shell:
            "ebft --threads {threads} evaluate model --model {params.model} {params.flags} {params.outs} "
            "--spec {params.spec:q} --meta {params.meta:q} > {log} 2>&1"


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
