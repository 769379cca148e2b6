# Tables and figures for report.html (`snakemake --report results/report.html`).
# Categories: one per task (its tables, figures and per-run curves) plus "Overview" (all tasks in one figure).
# Figure names and titles: ebft.paths.FIGURE_TITLES; each figure's caption is report/<name>.rst.

from ebft.report.frames import report_meta


localrules:
    aggregate,


def report_outputs():
    """Every artefact of rule aggregate with its report() annotation, by output name."""
    out = {}
    for task in TASKS:
        for suffix, name, caption, artefact in (("", "table", "table_task", "final models"),
                                                 ("_ablation", "ablation_table", "table_ablation", "EBFT ablation")):
            out[f"{name}_{task}"] = report(fill(paths.TASK_TABLE, task=task, suffix=suffix, ext="html"),
                                           caption=f"../report/{caption}.rst", category=task, subcategory="tables",
                                           labels={"artefact": artefact, "task": task})
            out[f"{name.replace('table', 'csv')}_{task}"] = fill(paths.TASK_TABLE, task=task, suffix=suffix, ext="csv")
        for kind in paths.TASK_FIGURES:
            out[f"fig_{kind}_{task}"] = report(fill(paths.TASK_FIGURE, task=task, name=kind),
                                               caption=f"../report/{kind}.rst", category=task, subcategory="figures",
                                               labels={"artefact": paths.FIGURE_TITLES[kind], "task": task})
    for run in RUNS:
        out[f"run_{run.task}_{run.method}_{run.variant}_seed{run.seed}"] = report(
            fill(paths.RUN_FIGURE, task=run.task, method=run.method, variant=run.variant, seed=run.seed),
            caption="../report/run_curves.rst", category=run.task, subcategory="runs",
            labels={"method": run.method, "variant": run.variant, "seed": str(run.seed)})
    for kind, title in paths.FIGURE_TITLES.items():
        out[kind] = report(fill(paths.OVERVIEW_FIGURE, name=kind), caption=f"../report/{kind}.rst",
                           category="Overview", subcategory="figures (all tasks)", labels={"artefact": title})
    out["summary"] = paths.SUMMARY_TABLE
    return out


rule aggregate:
    input:
        results=eval_targets(),
        logs=[fill(paths.RUN_LOG, task=r.task, method=r.method, variant=r.variant, seed=r.seed) for r in RUNS],
    output:
        **report_outputs(),
    params:
        meta=as_json(report_meta(config, METHODS)),
        tables=paths.TABLES,
        figures=paths.FIGURES,
    log:
        job_files("aggregate")["log"],
    threads: min(4, workflow.cores)  # figures are drawn in parallel processes
    benchmark:
        job_files("aggregate")["benchmark"]
    conda:
        ENV
    shell:
        "python -m ebft.report --results {input.results} --logs {input.logs} --tables {params.tables} "
        "--figures {params.figures} --meta {params.meta:q} --workers {threads} > {log} 2>&1"
