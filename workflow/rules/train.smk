# Fine-tuning: one rule per method (train_sft, train_ebft, ...), wildcards {task}/{variant}/seed{seed}.
# Resume state lives in <run>/resume/ (not a declared output), so `--rerun-incomplete` after a crash
# continues where the job stopped.


def feature_model_dir(task, variant=None, method="ebft"):
    """EBFT's frozen feature network: tasks.<task>.feature_model, else the (possibly scaled) base model."""
    spec = config["tasks"][task]
    key = spec.get("feature_model", spec["base_model"])
    if variant is not None and method in config["methods"]:
        key = variant_spec(method, variant, task).get("base_model", key)
    return model_dir(key)


def train_inputs(method):
    def _inputs(wildcards):
        inputs = {"init": init_model(method)(wildcards), "data": f"results/data/{wildcards.task}/train.jsonl"}
        if method == "ebft":
            inputs["features"] = feature_model_dir(wildcards.task, wildcards.variant)
        return inputs

    return _inputs


def feature_flag(method):
    def _flag(wildcards, input):
        return f"--feature-model {input.features}" if method == "ebft" else ""

    return _flag


for _method in TRAINED_METHODS:

    rule:
        name:
            f"train_{_method}"
        input:
            unpack(train_inputs(_method)),
        output:
            model=directory(f"results/runs/{{task}}/{_method}/{{variant}}/seed{{seed}}/model"),
            checkpoints=directory(f"results/runs/{{task}}/{_method}/{{variant}}/seed{{seed}}/checkpoints"),
            log=f"results/runs/{{task}}/{_method}/{{variant}}/seed{{seed}}/train_log.jsonl",
        params:
            method=_method,
            task_spec=lambda wildcards: as_json(task_spec(wildcards.task)),
            spec=lambda wildcards, m=_method: as_json(variant_spec(m, wildcards.variant, wildcards.task)),
            features=feature_flag(_method),
            run=lambda wildcards, m=_method: run_dir(wildcards.task, m, wildcards.variant, wildcards.seed),
            launch=launcher,
        log:
            f"results/logs/train_{_method}/{{task}}/{{variant}}/seed{{seed}}.log",
        benchmark:
            f"results/benchmarks/rules/train_{_method}/{{task}}/{{variant}}/seed{{seed}}.tsv"
        threads: workflow.cores
        conda:
            ENV
        shell:
            "{params.launch} --threads {threads} train --method {params.method} --task {wildcards.task} "
            "--task-spec {params.task_spec:q} --spec {params.spec:q} --seed {wildcards.seed} "
            "--init {input.init} {params.features} --data results/data/{wildcards.task} --out {params.run} "
            "> {log} 2>&1"
