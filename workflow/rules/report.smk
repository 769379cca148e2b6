# Tables and figures for report.html (`snakemake --report results/report.html`).


localrules:
    aggregate,


rule aggregate:
    input:
        eval_targets(),
    output:
        tables=[
            report(
                f"results/tables/{task}.html",
                caption="../report/table_task.rst",
                category="Tables",
                subcategory=task,
                labels={"task": task, "artefact": "final models"},
            )
            for task in TASKS
        ],
        csv=[f"results/tables/{task}.csv" for task in TASKS],
        summary="results/tables/summary.csv",
        ce=report(
            "results/figures/validation_ce.svg",
            caption="../report/validation_ce.rst",
            category="Figures",
            subcategory="validation CE",
            labels={"figure": "validation CE"},
        ),
        cfm_length=report(
            "results/figures/cfm_by_length.svg",
            caption="../report/cfm_by_length.rst",
            category="Figures",
            subcategory="CFM vs completion length",
            labels={"figure": "CFM vs completion length"},
        ),
        curves=report(
            "results/figures/training_curves.svg",
            caption="../report/training_curves.rst",
            category="Figures",
            subcategory="metrics over training",
            labels={"figure": "metrics over training"},
        ),
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/rules/aggregate.tsv"
    conda:
        ENV
    shell:
        "ebft aggregate --results {input} --tables results/tables --figures results/figures > {log} 2>&1"
