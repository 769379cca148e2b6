# Tables and figures for report.html (`snakemake --report results/report.html`).
# Categories: one per task (its tables, figures and per-run curves) plus "Overview" (all tasks in one figure).

from ebft.report.tables import report_meta


localrules:
    aggregate,


FIGURE_KINDS = {
    "accuracy_vs_ce": ("accuracy vs validation CE", "../report/accuracy_vs_ce.rst"),
    "cfm_by_length": ("CFM vs completion length", "../report/cfm_by_length.rst"),
    "training_curves": ("metrics over training", "../report/training_curves.rst"),
    "ablation": ("EBFT ablation bars", "../report/ablation.rst"),
}


def report_outputs():
    """Every artefact of rule aggregate with its report() annotation, by output name."""
    out = {}
    for task in TASKS:
        out[f"table_{task}"] = report(f"results/tables/{task}.html", caption="../report/table_task.rst",
                                      category=task, subcategory="tables",
                                      labels={"artefact": "final models", "task": task})
        out[f"ablation_table_{task}"] = report(f"results/tables/{task}_ablation.html",
                                               caption="../report/table_ablation.rst", category=task,
                                               subcategory="tables",
                                               labels={"artefact": "EBFT ablation", "task": task})
        out[f"csv_{task}"] = f"results/tables/{task}.csv"
        out[f"ablation_csv_{task}"] = f"results/tables/{task}_ablation.csv"
        for kind, (title, caption) in FIGURE_KINDS.items():
            out[f"fig_{kind}_{task}"] = report(f"results/figures/{task}/{kind}.svg", caption=caption,
                                               category=task, subcategory="figures",
                                               labels={"artefact": title, "task": task})
    for run in RUNS:
        name = f"{run.method}_{run.variant}_seed{run.seed}"
        out[f"run_{run.task}_{name}"] = report(
            f"results/figures/{run.task}/runs/{name}.svg", caption="../report/run_curves.rst",
            category=run.task, subcategory="runs",
            labels={"method": run.method, "variant": run.variant, "seed": str(run.seed)})
    for kind, (title, caption) in {"validation_ce": ("validation CE", "../report/validation_ce.rst"),
                                   **FIGURE_KINDS}.items():
        out[kind] = report(f"results/figures/{kind}.svg", caption=caption, category="Overview",
                           subcategory="figures (all tasks)", labels={"artefact": title})
    out["summary"] = "results/tables/summary.csv"
    return out


rule aggregate:
    input:
        eval_targets(),
    output:
        **report_outputs(),
    params:
        meta=as_json(report_meta(config, TRAINED_METHODS)),
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/rules/aggregate.tsv"
    conda:
        ENV
    shell:
        "python -m ebft.report --results {input} --tables results/tables --figures results/figures "
        "--meta {params.meta:q} > {log} 2>&1"
