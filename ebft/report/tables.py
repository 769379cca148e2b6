"""Tables of final models (CSV + HTML): one per task, and one EBFT ablation table per task.

Tables show final models (``step`` is null) of the tidy frame (:mod:`ebft.report.frames`), one row per
(method, variant), one column per metric, mean over seeds (with the standard deviation in a second column when
there is more than one seed; the HTML shows ``mean ± std``). Row names and order come from
:func:`ebft.report.frames.row_names` and :data:`ebft.report.frames.ROW_KINDS`.

A metric that was not finite (``null`` in its result file, NaN in the frame) for any seed of a row makes the
row's mean NaN: the CSV cell is empty, the HTML cell reads ``NaN`` and a note under the table names the
metric, while a metric a model was not evaluated on stays a blank cell in both. The table carries the
non-finite cells in ``table.attrs["nonfinite"]`` (``(method, variant, metric)`` triples).
"""

from __future__ import annotations

import html as html_lib
import re
from pathlib import Path
from typing import Any

import pandas as pd

from ebft import paths
from ebft.report.frames import (
    ROW_KINDS,
    kind_order,
    paper_rows,
    row_kind,
    row_names,
    variant_params,
)

#: Variant parameters shown in the ablation tables (``pooling`` is the resolved ``embed_method``).
ABLATION_PARAMS = ["init", "whitening", "pooling", "ce_coef", "diversity_coef"]
NON_METRIC = ("row", "kind", "init", "seeds")


# ------------------------------------------------------------------------------------------ tables
#: Metrics shown in the per-task tables (summary.csv keeps everything): top-level metrics, direction groups
#: of the translation metrics and the out-of-distribution set; per-direction and per-length values stay out.
TABLE_METRIC = re.compile(r"^eval/(ood/)?[^/]+$|^eval/(ood/)?(bleu|chrf|comet)/(en-xx|xx-en)$")


def task_table(frame: pd.DataFrame, task: str, meta: dict[str, Any] | None = None) -> pd.DataFrame:
    """Final-model table of one task: index (method, variant), columns row, init, seeds, metric [± std]."""
    final = frame[(frame["task"] == task) & frame["step"].isna() & frame["metric"].str.match(TABLE_METRIC)
                  & ~frame["metric"].str.startswith("eval/cfm_len")]
    if final.empty:
        index = pd.MultiIndex.from_tuples([], names=["method", "variant"])
        return pd.DataFrame(columns=["row", "kind", "init", "seeds"], index=index)
    grouped = final.groupby(["method", "variant", "metric"], observed=True)["value"]
    table = grouped.mean(skipna=False).unstack("metric")  # one NaN seed makes the mean NaN, not hides it
    seeds = final.groupby(["method", "variant"], observed=True)["seed"].nunique()
    if (seeds > 1).any():
        std = grouped.std(skipna=False).unstack("metric").add_suffix(" (std)")
        table = table.join(std)
        metrics = [c for c in table.columns if not c.endswith(" (std)")]
        table = table[[c for m in metrics for c in (m, f"{m} (std)")]]
    table.insert(0, "seeds", seeds)
    keys = [(str(m), str(v)) for m, v in table.index]
    names = row_names(keys, task, meta)
    table.insert(0, "init", [variant_params(meta, task, m, v).get("init", "") if m != "base" else ""
                             for m, v in keys])
    table.insert(0, "kind", [row_kind(m, variant_params(meta, task, m, v)) for m, v in keys])
    table.insert(0, "row", [names[k] for k in keys])
    order = sorted(range(len(keys)), key=lambda i: (kind_order(*keys[i], task, meta), keys[i][1]))
    table = table.iloc[order]
    table.attrs["nonfinite"] = nonfinite_cells(final)
    return table


def nonfinite_cells(final: pd.DataFrame) -> list[tuple[str, str, str]]:
    """``(method, variant, metric)`` of the rows of ``final`` whose value is NaN: a result file stored the
    metric as ``null`` because it was not finite (:func:`ebft.evaluation.results._finite`)."""
    bad = final[final["value"].isna()]
    return sorted({(str(m), str(v), str(k)) for m, v, k in zip(bad["method"], bad["variant"], bad["metric"],
                                                                   strict=True)})


def ablation_table(frame: pd.DataFrame, task: str, meta: dict[str, Any] | None = None) -> pd.DataFrame:
    """EBFT variants of one task: the swept parameters (whitening, pooling, ce_coef, diversity_coef, init)
    next to their final validation CE, CFM and downstream metrics (mean over seeds)."""
    table = task_table(frame, task, meta)
    table = table.loc[[m == "ebft" for m, _ in table.index]] if len(table) else table
    params = [variant_params(meta, task, "ebft", v) for _, v in table.index]
    metrics = [c for c in table.columns if c not in NON_METRIC]
    out = pd.DataFrame({p: [pr.get(p) for pr in params] for p in ABLATION_PARAMS}, index=table.index)
    out = out.join(table[["seeds", *metrics]])
    out.attrs["nonfinite"] = table.attrs.get("nonfinite", [])
    return out


def _fmt(value: Any, std: Any = None) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        if std is not None and not pd.isna(std):
            text += f" ± {std:.4f}"
        return text
    return str(value)


def _cell(rec: pd.Series, column: str, key: tuple[str, str], nonfinite: set[tuple[str, str, str]]) -> str:
    """Text of one HTML cell: ``NaN`` for a metric that was not finite, else :func:`_fmt` (blank: absent)."""
    if (str(key[0]), str(key[1]), column) in nonfinite:
        return "NaN"
    return _fmt(rec[column], rec.get(f"{column} (std)"))


#: The note under a table with NaN cells.
NAN_NOTE = "NaN: the metric was not finite for this model (e.g. CFM with fewer than 2 samples)"


def _nan_note(table: pd.DataFrame, nonfinite: set[tuple[str, str, str]], columns: list[str]) -> str:
    """A paragraph naming the metrics shown as NaN and their rows ('' when there are none)."""
    rows = {(str(m), str(v)): str(table.loc[(m, v)]["row"]) if "row" in table.columns else f"{m} {v}"
            for m, v in table.index}
    shown: dict[str, list[str]] = {}
    for method, variant, metric in sorted(nonfinite):
        if (method, variant) in rows and metric in columns:
            shown.setdefault(metric, []).append(rows[(method, variant)])
    if not shown:
        return ""
    which = "; ".join(f"{m} ({', '.join(names)})" for m, names in shown.items())
    return (f"<p class='nan-note'>{html_lib.escape(NAN_NOTE)}, for at least one seed; its result file stores "
            f"null. Not finite: {html_lib.escape(which)}.</p>")


def table_html(table: pd.DataFrame, task: str, paper: dict[str, dict[str, Any]] | None = None,
               paper_title: str = "") -> str:
    """HTML of a task table: mean ± std cells; with ``paper``, the paper's numbers as labelled rows right
    after our rows of the same kind."""
    metrics = [c for c in table.columns if c not in NON_METRIC and not c.endswith(" (std)")]
    head = ["", "method", "variant", "init", "seeds", *metrics] if "row" in table.columns else None
    if head is None:  # ablation table
        cols = [c for c in table.columns if not c.endswith(" (std)")]
        head = ["variant", *cols]
    lines = ["<table class='ebft-table'>", "<thead><tr>" + "".join(f"<th>{html_lib.escape(h)}</th>" for h in head)
             + "</tr></thead>", "<tbody>"]
    kinds_done: set[str] = set()
    nonfinite = {tuple(cell) for cell in table.attrs.get("nonfinite", ())}
    keys = list(table.index)
    for i, key in enumerate(keys):
        rec = table.loc[key]
        if "row" in table.columns:
            cells = [f"<th>{html_lib.escape(str(rec['row']))}</th>", key[0], key[1], rec["init"], rec["seeds"]]
            cells += [_cell(rec, m, key, nonfinite) for m in metrics]
        else:
            cells = [key[1]] + [_cell(rec, c, key, nonfinite) for c in head[1:]]
        lines.append("<tr>" + "".join(c if str(c).startswith("<th>") else f"<td>{html_lib.escape(str(c))}</td>"
                                      for c in cells) + "</tr>")
        if paper and "row" in table.columns:
            kind = _row_kind_of(rec)
            last_of_kind = i + 1 == len(keys) or _row_kind_of(table.loc[keys[i + 1]]) != kind
            if kind in paper and last_of_kind and kind not in kinds_done:
                kinds_done.add(kind)
                lines.append(_paper_row(kind, paper[kind], metrics))
    if paper and "row" in table.columns:
        for kind, values in paper.items():
            if kind not in kinds_done:
                lines.append(_paper_row(kind, values, metrics))
    lines.append("</tbody></table>")
    note = _nan_note(table, nonfinite, head)
    if note:
        lines.append(note)
    if paper:
        sources = sorted({f"{v['source']} [{v['confidence']}]" for vals in paper.values() for v in vals.values()})
        lines.append("<p class='paper-note'>Rows marked <b>paper</b> are the values reported by "
                     f"{html_lib.escape(paper_title)}"
                     " (sources: " + "; ".join(html_lib.escape(s) for s in sources) + "; [V] two independent "
                     "secondary sources, [S] one). Empty cells: not known.</p>")
    return "\n".join(lines)


def _row_kind_of(rec: pd.Series) -> str:
    return str(rec["kind"])


def _paper_row(kind: str, values: dict[str, Any], metrics: list[str]) -> str:
    name = f"{ROW_KINDS.get(kind, kind)} (paper)"
    cells = [f"<th>{html_lib.escape(name)}</th>", "<td>paper</td>", "<td></td>", "<td></td>", "<td></td>"]
    for m in metrics:
        v = values.get(m)
        cells.append(f"<td title='{html_lib.escape(v['source'])}'>{v['value']:.3f} [{v['confidence']}]</td>"
                     if v else "<td></td>")
    missing = [m for m in values if m not in metrics]
    row = "<tr class='paper-row'>" + "".join(cells) + "</tr>"
    if missing:  # a metric we did not compute: name it rather than drop it
        row += ("<tr class='paper-row'><td colspan='5'></td><td colspan='99'>paper also reports: "
                + ", ".join(f"{m} = {values[m]['value']:.3f}" for m in missing) + "</td></tr>")
    return row


def paper_csv(task: str, numbers: dict[str, Any]) -> pd.DataFrame:
    rows = [{"row": f"{ROW_KINDS.get(kind, kind)} (paper)", "metric": metric, **spec,
             "paper": numbers.get("paper", "")} for kind, vals in paper_rows(task, numbers).items()
            for metric, spec in vals.items()]
    return pd.DataFrame(rows, columns=["row", "metric", "value", "confidence", "source", "paper"])


# ------------------------------------------------------------------------------------------ files
def write_task_tables(frame: pd.DataFrame, task: str, tables_dir: Path, meta: dict[str, Any] | None,
                      numbers: dict[str, Any]) -> None:
    """Write ``{tables_dir}/{task}.csv|.html``, ``{task}_ablation.csv|.html`` and, when ``numbers`` has rows
    for the task, ``{task}_paper.csv`` (the HTML table then shows them)."""
    def file(suffix: str, ext: str) -> Path:
        return tables_dir / paths.fill(paths.TASK_TABLE_NAME, task=task, suffix=suffix, ext=ext)

    table = task_table(frame, task, meta)
    table.to_csv(file("", "csv"), float_format="%.6g")
    paper = paper_rows(task, numbers)
    if paper:
        paper_csv(task, numbers).to_csv(file("_paper", "csv"), index=False)
    body = table_html(table, task, paper, numbers.get("paper", ""))
    note = _seeds_note(table) + _no_rlvr_note((meta or {}).get("tasks", {}).get(task, {}).get("kind"))
    file("", "html").write_text(_page(f"Final models: {task}", body, note))
    abl = ablation_table(frame, task, meta)
    abl.to_csv(file("_ablation", "csv"), float_format="%.6g")
    file("_ablation", "html").write_text(
        _page(f"EBFT ablation: {task}", table_html(abl, task) if len(abl) else "<p>No EBFT runs.</p>",
              "One row per EBFT variant: its swept parameters and final metrics (mean over seeds)."))


def _seeds_note(table: pd.DataFrame) -> str:
    multi = (table["seeds"] > 1).any() if len(table) else False
    return ("Mean ± standard deviation over seeds." if multi else "One seed per row (no standard deviation).") + \
        " Rows: base model, SFT, RLVR, EBFT from the base model, EBFT from the SFT warm start (SFT→EBFT)."


def _no_rlvr_note(kind: str | None) -> str:
    """Why a task has no RLVR row: RLVR needs a verifiable reward, which only some task kinds have."""
    from ebft.methods import REGISTRY

    if kind is None or REGISTRY["rlvr"].trains_on(kind):
        return ""
    return (f" No RLVR row: RLVR needs a verifiable reward (unit tests for code Q&A, a translation metric for"
            f" translation) and a task of kind {kind!r} has none, so the workflow does not train RLVR on it.")


def _page(title: str, body: str, note: str = "") -> str:
    style = ("body{font-family:sans-serif;margin:1em} table{border-collapse:collapse} "
             "th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right} tbody th{text-align:left} "
             "tr.paper-row td,tr.paper-row th{background:#fff6e0;font-style:italic} .note{color:#555}")
    title = html_lib.escape(title)
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>" \
           f"</head><body><h2>{title}</h2>{body}<p class='note'>{html_lib.escape(note)}</p></body></html>\n"
