"""The aggregate rule: evaluation results -> tidy frame -> tables and figures (``python -m ebft.report``).

Reads the results with :mod:`ebft.report.frames`, writes the tables with :mod:`ebft.report.tables` and the
figures with :mod:`ebft.report.figures`; see docs/report.md for the artefacts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ebft import paths
from ebft.report.figures import write_figures
from ebft.report.frames import load_paper_numbers, load_results, load_train_logs
from ebft.report.tables import write_task_tables

log = logging.getLogger(__name__)


def aggregate(results: list[Path], tables_dir: Path, figures_dir: Path, meta: dict[str, Any] | None = None,
              logs: list[Path] | None = None, workers: int = 1) -> None:
    """Write ``{tables_dir}/{task}.csv|.html``, ``{task}_ablation.csv|.html``, ``summary.csv``, the combined
    figures in ``figures_dir`` and the per-task figures in ``figures_dir/{task}/``; ``logs``: the runs'
    ``train_log.jsonl`` files (figure ``training_logs``); ``workers``: processes drawing the figures."""
    frame = load_results(results)
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    frame.drop(columns="source").to_csv(tables_dir / paths.SUMMARY_NAME, index=False)
    tasks = sorted(set(frame["task"].unique()) | set((meta or {}).get("tasks", {})))
    name = (meta or {}).get("name", "")
    numbers = load_paper_numbers() if name == "paper" else {}
    for task in tasks:
        write_task_tables(frame, task, tables_dir, meta, numbers)
    write_figures(frame, figures_dir, tasks, meta, numbers, name, load_train_logs(logs or []), workers=workers)
    log.info("aggregated %d results into %s and %s", len(results), tables_dir, figures_dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m ebft.report``: the aggregate rule's entry point (``--meta`` is
    :func:`~ebft.report.frames.report_meta` JSON)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m ebft.report", description=aggregate.__doc__)
    p.add_argument("--results", nargs="+", required=True)
    p.add_argument("--tables", required=True)
    p.add_argument("--figures", required=True)
    p.add_argument("--logs", nargs="*", default=[], help="the runs' train_log.jsonl files")
    p.add_argument("--meta", default=None, help="JSON (or @file) from report_meta(config)")
    p.add_argument("--workers", type=int, default=1, help="processes drawing the figures (default 1)")
    args = p.parse_args(argv)
    meta = None
    if args.meta:
        meta = json.loads(Path(args.meta[1:]).read_text() if args.meta.startswith("@") else args.meta)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    aggregate([Path(p) for p in args.results], Path(args.tables), Path(args.figures), meta,
              [Path(p) for p in args.logs], workers=args.workers)
    return 0
