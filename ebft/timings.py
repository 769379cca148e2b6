"""Per-rule wall times of a workflow run, from Snakemake's ``benchmark:`` files (one TSV per job)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def rule_timings(root: str | Path) -> tuple[pd.DataFrame, float] | None:
    """``(table, sum over jobs in s)``: per rule the job count, total and max wall seconds, largest total
    first; ``None`` when ``root`` holds no benchmark file. A job's TSV lies at ``<root>/<rule>/...tsv``."""
    root = Path(root)
    rows = []
    for tsv in sorted(root.rglob("*.tsv")):
        rule = tsv.relative_to(root).parts[0].removesuffix(".tsv")
        frame = pd.read_csv(tsv, sep="\t")
        rows.append({"rule": rule, "job": str(tsv.relative_to(root).with_suffix("")), "s": float(frame["s"].iloc[-1])})
    if not rows:
        return None
    jobs = pd.DataFrame(rows)
    table = jobs.groupby("rule", sort=False)["s"].agg(jobs="count", total_s="sum", max_s="max")
    return table.sort_values("total_s", ascending=False).round(1), float(jobs["s"].sum())
