# Tokenizer and base models: pretrain the tiny default from scratch, or download a hub model.


def tokenizer_corpora():
    """Training splits of every task whose base model is pretrained here."""
    return [f"results/data/{t}/train.jsonl" for t in TASKS if config["models"][config["tasks"][t]["base_model"]]["source"] == "pretrain"]


def pretrain_corpora(wildcards):
    return [f"results/data/{t}/train.jsonl" for t in TASKS if config["tasks"][t]["base_model"] == wildcards.model]


rule train_tokenizer:
    input:
        tokenizer_corpora(),
    output:
        directory("results/tokenizer"),
    params:
        vocab=config["tokenizer"]["vocab_size"] if "tokenizer" in config else 0,
        chars=config["tokenizer"]["train_chars"] if "tokenizer" in config else 0,
    log:
        "results/logs/train_tokenizer.log",
    benchmark:
        "results/benchmarks/rules/train_tokenizer.tsv"
    conda:
        ENV
    shell:
        "ebft train-tokenizer --data {input} --vocab-size {params.vocab} --max-chars {params.chars} "
        "--out {output} > {log} 2>&1"


rule pretrain_base:
    input:
        tokenizer="results/tokenizer",
        data=pretrain_corpora,
    output:
        model=directory("results/models/{model}/model"),
        log="results/models/{model}/train_log.jsonl",
    params:
        spec=lambda wildcards: as_json(config["models"][wildcards.model]),
        launch=launcher,
    log:
        "results/logs/pretrain_base/{model}.log",
    benchmark:
        "results/benchmarks/rules/pretrain_base/{model}.tsv"
    threads: workflow.cores
    conda:
        ENV
    shell:
        "{params.launch} --threads {threads} pretrain --tokenizer {input.tokenizer} --data {input.data} --spec {params.spec:q} "
        "--out results/models/{wildcards.model} > {log} 2>&1"


rule download_model:
    output:
        directory("resources/hf/models/{slug}"),
    params:
        repo_id=lambda wildcards: HUB_MODELS[wildcards.slug]["repo_id"],
        revision=lambda wildcards: HUB_MODELS[wildcards.slug].get("revision") or "main",
    log:
        "results/logs/download_model/{slug}.log",
    conda:
        ENV
    shell:
        "ebft download model --repo-id {params.repo_id} --revision {params.revision} --out {output} > {log} 2>&1"
