# Evaluations of the base model, every final model and every declared checkpoint; JSON results under
# results/eval/{task}/{method}/{variant}/seed{seed}/{ckpt}/{group}.json (ckpt: final | step<N>).


def eval_model_path(wildcards, input):
    return input.model if wildcards.ckpt == "final" else f"{input.model}/{wildcards.ckpt}"


rule eval_ce:
    input:
        model=eval_model,
        data="results/data/{task}/valid.jsonl",
    output:
        "results/eval/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}/ce.json",
    params:
        model=eval_model_path,
        task_spec=lambda wildcards: as_json(task_spec(wildcards.task)),
        spec=as_json(config["evaluation"]["ce"]),
        meta=eval_meta,
    log:
        "results/logs/eval_ce/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}.log",
    benchmark:
        "results/benchmarks/rules/eval_ce/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}.tsv"
    threads: 1
    conda:
        ENV
    shell:
        "ebft --threads {threads} evaluate ce --model {params.model} --data {input.data} --task-spec {params.task_spec:q} "
        "--spec {params.spec:q} --meta {params.meta:q} --out {output} > {log} 2>&1"


def base_feature_model(wildcards, input=None):
    """The frozen feature network CFM is measured with: the base model of the evaluated model's task
    (for scale-grid variants, the model that variant trains)."""
    if wildcards.evalmethod == "base":
        return model_dir(wildcards.variant)
    return feature_model_dir(wildcards.task, wildcards.variant, wildcards.evalmethod)


rule eval_cfm:
    input:
        model=eval_model,
        features=base_feature_model,
        data="results/data/{task}/valid.jsonl",
    output:
        "results/eval/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}/cfm.json",
    params:
        model=eval_model_path,
        task_spec=lambda wildcards: as_json(task_spec(wildcards.task)),
        spec=as_json(config["evaluation"]["cfm"]),
        meta=eval_meta,
    log:
        "results/logs/eval_cfm/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}.log",
    benchmark:
        "results/benchmarks/rules/eval_cfm/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}.tsv"
    threads: 1
    conda:
        ENV
    shell:
        "ebft --threads {threads} evaluate cfm --model {params.model} --feature-model {input.features} --data {input.data} "
        "--task-spec {params.task_spec:q} --spec {params.spec:q} --meta {params.meta:q} --out {output} > {log} 2>&1"


rule eval_cfm_by_length:
    input:
        model=eval_model,
        features=base_feature_model,
        data="results/data/{task}/valid.jsonl",
    output:
        "results/eval/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}/cfm_by_length.json",
    params:
        model=eval_model_path,
        task_spec=lambda wildcards: as_json(task_spec(wildcards.task)),
        spec=as_json({**config["evaluation"]["cfm"], **config["evaluation"].get("cfm_by_length", {})}),
        meta=eval_meta,
    log:
        "results/logs/eval_cfm_by_length/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}.log",
    benchmark:
        "results/benchmarks/rules/eval_cfm_by_length/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}.tsv"
    threads: 1
    conda:
        ENV
    shell:
        "ebft --threads {threads} evaluate cfm --by-length --model {params.model} --feature-model {input.features} "
        "--data {input.data} --task-spec {params.task_spec:q} --spec {params.spec:q} --meta {params.meta:q} "
        "--out {output} > {log} 2>&1"


rule eval_unit_tests:
    input:
        model=eval_model,
        data="results/data/{task}/test.jsonl",
    output:
        "results/eval/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}/unit_tests.json",
    params:
        model=eval_model_path,
        spec=as_json(config["evaluation"].get("unit_tests", {})),
        meta=eval_meta,
    log:
        "results/logs/eval_unit_tests/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}.log",
    benchmark:
        "results/benchmarks/rules/eval_unit_tests/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}.tsv"
    threads: workflow.cores
    conda:
        ENV
    shell:
        "ebft --threads {threads} evaluate unit-tests --model {params.model} --data {input.data} --spec {params.spec:q} "
        "--meta {params.meta:q} --out {output} > {log} 2>&1"


rule eval_humaneval:
    input:
        model=eval_model,
    output:
        "results/eval/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}/humaneval.json",
    params:
        model=eval_model_path,
        spec=as_json(config["evaluation"].get("humaneval", {})),
        meta=eval_meta,
    log:
        "results/logs/eval_humaneval/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}.log",
    benchmark:
        "results/benchmarks/rules/eval_humaneval/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}.tsv"
    threads: workflow.cores
    conda:
        ENV
    shell:
        "ebft --threads {threads} evaluate humaneval --model {params.model} --spec {params.spec:q} --meta {params.meta:q} "
        "--out {output} > {log} 2>&1"


def comet_input(wildcards):
    path = comet_model_dir()
    return {} if path is None else {"comet": path}


def comet_flag(wildcards, input):
    return f"--comet-model {input.comet}" if "comet" in input.keys() else ""


rule build_comet_tiny:
    input:
        data=lambda wildcards: [f"results/data/{t}/train.jsonl" for t in TASKS if config["tasks"][t]["kind"] == "translation"],
    output:
        directory("results/models/comet-tiny"),
    log:
        "results/logs/build_comet_tiny.log",
    benchmark:
        "results/benchmarks/rules/build_comet_tiny.tsv"
    conda:
        ENV  # `ebft` runs the COMET interpreter itself (EBFT_COMET_PYTHON or .venv-comet; docs/comet.md)
    shell:
        "ebft build-comet-tiny --data {input.data[0]} --out {output} > {log} 2>&1"


rule download_comet:
    output:
        directory("resources/hf/comet/{slug}"),
    params:
        repo_id=lambda wildcards: config["evaluation"]["translation"]["comet_model"],
        encoder=config["evaluation"].get("translation", {}).get("comet_encoder", "FacebookAI/xlm-roberta-large"),
    log:
        "results/logs/download_comet/{slug}.log",
    conda:
        ENV
    shell:
        "ebft download model --repo-id {params.repo_id} --encoder {params.encoder} --out {output} > {log} 2>&1"


rule eval_translation:
    input:
        unpack(comet_input),
        model=eval_model,
        data="results/data/{task}/test.jsonl",
    output:
        "results/eval/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}/translation.json",
    params:
        model=eval_model_path,
        spec=as_json(config["evaluation"].get("translation", {})),
        comet=comet_flag,
        meta=eval_meta,
    log:
        "results/logs/eval_translation/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}.log",
    benchmark:
        "results/benchmarks/rules/eval_translation/{task}/{evalmethod}/{variant}/seed{seed}/{ckpt}.tsv"
    threads: 1
    conda:
        ENV
    shell:
        "ebft --threads {threads} evaluate translation --model {params.model} --data {input.data} "
        "{params.comet} --spec {params.spec:q} --meta {params.meta:q} --out {output} > {log} 2>&1"
