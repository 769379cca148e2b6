# Fine-tuning: one rule per method, wildcards {task}/{method}/{variant}/seed{seed}. Resume state lives in
# <run>/resume/ (not a declared output), so `--rerun-incomplete` after a crash continues where it stopped.


rule train_sft:
    input:
        init=init_model("sft"),
        data="results/data/{task}/train.jsonl",
    output:
        model=directory("results/runs/{task}/sft/{variant}/seed{seed}/model"),
        checkpoints=directory("results/runs/{task}/sft/{variant}/seed{seed}/checkpoints"),
        log="results/runs/{task}/sft/{variant}/seed{seed}/train_log.jsonl",
    params:
        task_spec=lambda wildcards: as_json(task_spec(wildcards.task)),
        spec=lambda wildcards: as_json(variant_spec("sft", wildcards.variant, wildcards.task)),
        launch=launcher,
    log:
        "results/logs/train_sft/{task}/{variant}/seed{seed}.log",
    benchmark:
        "results/benchmarks/rules/train_sft/{task}/{variant}/seed{seed}.tsv"
    threads: workflow.cores
    conda:
        ENV
    shell:
        "{params.launch} train --method sft --task {wildcards.task} --task-spec {params.task_spec:q} "
        "--spec {params.spec:q} --seed {wildcards.seed} --init {input.init} "
        "--data results/data/{wildcards.task} --out results/runs/{wildcards.task}/sft/{wildcards.variant}/seed{wildcards.seed} "
        "> {log} 2>&1"
