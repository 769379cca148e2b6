# Task data: offline generators (tiny default) or hub datasets materialised by `download_dataset`.


localrules:
    download_dataset,
    download_model,
    download_comet,


def dataset_dir(path):
    """Where a hub dataset is read: its download directory, or the path itself for a local dataset."""
    return path if paths.is_local_path(path) else fill(paths.HUB_DATASET, slug=slug(path))


def data_spec(task):
    """The task's data section; hub split paths are rewritten to their local download directories."""
    spec = dict(config["tasks"][task]["data"])
    spec.setdefault("kind", config["tasks"][task]["kind"])
    if spec["source"] == "hub":
        spec["splits"] = {name: {**s, "path": dataset_dir(s["path"])} for name, s in spec["splits"].items()}
        if spec.get("ood_test"):
            spec["ood_test"] = {**spec["ood_test"], "path": dataset_dir(spec["ood_test"]["path"])}
    return spec


def data_input(path):
    """The file or directory a rule must provide for a dataset path: a file inside a `hub_data` export (e.g.
    its `ood.parquet`) is provided by the export's directory."""
    parts = Path(dataset_dir(path)).parts
    export = Path(paths.HUB_DATA).parts[:-1]
    return str(Path(*parts[: len(export) + 1])) if parts[: len(export)] == export else dataset_dir(path)


def data_inputs(wildcards):
    """The downloaded (or local, possibly rule-written) datasets of a hub task."""
    spec = config["tasks"][wildcards.task]["data"]
    if spec["source"] != "hub":
        return []
    extra = [spec["ood_test"]] if spec.get("ood_test") else []
    return sorted({data_input(s["path"]) for s in [*spec["splits"].values(), *extra]})


rule prepare_data:
    input:
        data_inputs,
    output:
        train=fill(paths.DATA_SPLIT, split="train"),
        valid=fill(paths.DATA_SPLIT, split="valid"),
        test=fill(paths.DATA_SPLIT, split="test"),
        manifest=paths.DATA_MANIFEST,
    params:
        spec=lambda wildcards: as_json(data_spec(wildcards.task)),
        out=lambda wildcards: fill(paths.DATA_DIR, task=wildcards.task),
    log:
        job_files("prepare_data", "{task}")["log"],
    benchmark:
        job_files("prepare_data", "{task}")["benchmark"]
    conda:
        ENV
    shell:
        "ebft prepare-data --task {wildcards.task} --spec {params.spec:q} "
        "--out {params.out} > {log} 2>&1"


rule download_dataset:
    output:
        directory(paths.HUB_DATASET),
    params:
        repo_id=lambda wildcards: HUB_DATASETS[wildcards.slug]["path"],
        revision=lambda wildcards: HUB_DATASETS[wildcards.slug].get("revision") or "main",
    log:
        job_files("download_dataset", "{slug}")["log"],
    conda:
        ENV
    shell:
        "ebft download dataset --repo-id {params.repo_id} --revision {params.revision} --out {output} > {log} 2>&1"


rule export_hub_data:
    # config/rehearsal.yaml: generated tasks written as hub datasets (the paper datasets' columns), so that
    # its tasks go through the hub loader as the paper config's do
    output:
        directory(paths.HUB_DATA),
    wildcard_constraints:
        name="|".join(config.get("hub_data") or {}) or "(?!)",
    params:
        spec=lambda wildcards: as_json(config["hub_data"][wildcards.name]),
    log:
        job_files("export_hub_data", "{name}")["log"],
    benchmark:
        job_files("export_hub_data", "{name}")["benchmark"]
    conda:
        ENV
    shell:
        "ebft export-hub-data --name {wildcards.name} --spec {params.spec:q} --out {output} > {log} 2>&1"
