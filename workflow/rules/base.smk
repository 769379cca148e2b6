# Tokenizer and base models: pretrain the tiny default from scratch, download a hub model, or convert a GGUF
# file (a local model directory needs no rule).


def tokenizer_corpora():
    """Training splits of every task whose base model is pretrained here."""
    return [fill(paths.DATA_SPLIT, task=t, split="train") for t in TASKS
            if config["models"][config["tasks"][t]["base_model"]]["source"] == "pretrain"]


def pretrain_corpora(wildcards):
    return [fill(paths.DATA_SPLIT, task=t, split="train") for t in TASKS if config["tasks"][t]["base_model"] == wildcards.model]


rule train_tokenizer:
    input:
        tokenizer_corpora(),
    output:
        directory(paths.TOKENIZER),
    params:
        vocab=config["tokenizer"]["vocab_size"] if "tokenizer" in config else 0,
        chars=config["tokenizer"]["train_chars"] if "tokenizer" in config else 0,
    log:
        job_files("train_tokenizer")["log"],
    benchmark:
        job_files("train_tokenizer")["benchmark"]
    conda:
        ENV
    shell:
        "ebft train-tokenizer --data {input} --vocab-size {params.vocab} --max-chars {params.chars} "
        "--out {output} > {log} 2>&1"


rule pretrain_base:
    input:
        tokenizer=paths.TOKENIZER,
        data=pretrain_corpora,
    output:
        model=directory(paths.PRETRAINED_MODEL),
        log=paths.PRETRAINED_LOG,
    params:
        spec=lambda wildcards: as_json(config["models"][wildcards.model]),
        run=lambda wildcards: fill(paths.PRETRAINED_RUN, model=wildcards.model),
        launch=launcher,
    log:
        job_files("pretrain_base", "{model}")["log"],
    benchmark:
        job_files("pretrain_base", "{model}")["benchmark"]
    threads: workflow.cores
    conda:
        ENV
    shell:
        "{params.launch} --threads {threads} pretrain --tokenizer {input.tokenizer} --data {input.data} --spec {params.spec:q} "
        "--out {params.run} > {log} 2>&1"


rule download_model:
    output:
        directory(paths.HUB_MODEL),
    params:
        repo_id=lambda wildcards: HUB_MODELS[wildcards.slug]["repo_id"],
        revision=lambda wildcards: HUB_MODELS[wildcards.slug].get("revision") or "main",
    log:
        job_files("download_model", "{slug}")["log"],
    conda:
        ENV
    shell:
        "ebft download model --repo-id {params.repo_id} --revision {params.revision} --out {output} > {log} 2>&1"


rule convert_gguf:
    input:
        lambda wildcards: str(gguf_file(config["models"][wildcards.model], f"models.{wildcards.model}")),
    output:
        directory(paths.GGUF_MODEL),
    log:
        job_files("convert_gguf", "{model}")["log"],
    benchmark:
        job_files("convert_gguf", "{model}")["benchmark"]
    threads: workflow.cores
    conda:
        ENV
    shell:
        "ebft --threads {threads} convert-gguf --gguf {input} --out {output} > {log} 2>&1"
