"""Evaluation results -> tidy frame -> one table per task (CSV + HTML) and the summary figures.

The tidy frame has one row per (task, method, variant, seed, step, metric). Tables show final models
(``step`` is null), one row per (method, variant), one column per metric, mean over seeds (with the
standard deviation in a second column when there is more than one seed).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from ebft.evaluation.results import read_result

log = logging.getLogger(__name__)

#: Row order of methods in every table and figure.
METHOD_ORDER = ["base", "sft", "rlvr", "ebft"]
KEYS = ["task", "method", "variant", "seed", "step"]


def load_results(paths: list[Path]) -> pd.DataFrame:
    """Tidy frame of every metric in ``paths`` (columns: task, method, variant, seed, step, metric, value)."""
    rows = []
    for path in paths:
        res = read_result(path)
        for metric, value in res["metrics"].items():
            rows.append({**{k: res[k] for k in KEYS}, "train_step": res.get("train_step"), "metric": metric,
                         "value": value, "source": str(path)})
    frame = pd.DataFrame(rows, columns=[*KEYS, "train_step", "metric", "value", "source"])
    frame["method"] = pd.Categorical(frame["method"], categories=METHOD_ORDER, ordered=True)
    return frame


#: Metrics shown in the per-task tables (summary.csv keeps everything): top-level metrics, direction groups
#: of the translation metrics and the out-of-distribution set; per-direction and per-length values stay out.
TABLE_METRIC = re.compile(r"^eval/(ood/)?[^/]+$|^eval/(ood/)?(bleu|chrf|comet)/(en-xx|xx-en)$")


def task_table(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    """Final-model table of one task: index (method, variant), columns metric [± std over seeds]."""
    final = frame[(frame["task"] == task) & frame["step"].isna() & frame["metric"].str.match(TABLE_METRIC)
                  & ~frame["metric"].str.startswith("eval/cfm_len")]
    grouped = final.groupby(["method", "variant", "metric"], observed=True)["value"]
    table = grouped.mean().unstack("metric")
    seeds = final.groupby(["method", "variant"], observed=True)["seed"].nunique()
    if (seeds > 1).any():
        std = grouped.std().unstack("metric").add_suffix(" (std)")
        table = table.join(std)
    table.insert(0, "seeds", seeds)
    return table.sort_index()


def aggregate(paths: list[Path], tables_dir: Path, figures_dir: Path) -> None:
    """Write ``{tables_dir}/{task}.csv|.html``, ``summary.csv`` and the figures in ``figures_dir``."""
    from ebft.report.figures import ce_figure, cfm_length_figure, curves_figure

    frame = load_results(paths)
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    frame.drop(columns="source").to_csv(tables_dir / "summary.csv", index=False)
    for task in sorted(frame["task"].unique()):
        table = task_table(frame, task)
        table.to_csv(tables_dir / f"{task}.csv", float_format="%.6g")
        html = table.to_html(float_format=lambda v: f"{v:.4f}", border=0, classes="ebft-table")
        (tables_dir / f"{task}.html").write_text(_page(f"Final models: {task}", html))
    ce_figure(frame, figures_dir / "validation_ce.svg")
    cfm_length_figure(frame, figures_dir / "cfm_by_length.svg")
    curves_figure(frame, figures_dir / "training_curves.svg")
    log.info("aggregated %d results into %s and %s", len(paths), tables_dir, figures_dir)


def _page(title: str, body: str) -> str:
    style = ("body{font-family:sans-serif;margin:1em} table{border-collapse:collapse} "
             "th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>" \
           f"</head><body><h2>{title}</h2>{body}</body></html>\n"
