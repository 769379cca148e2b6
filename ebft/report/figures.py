"""Figures (matplotlib, Agg backend, SVG) of the tidy frame (:mod:`ebft.report.frames`), with one colour per
method (:data:`ebft.report.frames.METHOD_COLOURS`) across every figure.

Each figure has a builder ``draw_*`` that returns the :class:`~matplotlib.figure.Figure` (tests inspect it)
and a writer ``*_figure(frame, out, ...)`` that saves it as SVG. Conventions shared by every figure:

* curves over training start at the run's own initial model (:func:`ebft.report.frames.start_model`: the
  base model, or the final SFT model of the same seed for ``init: sft``) and use the fraction of the run
  (step / the run's final step) on the x axis; the legend names each run's step count;
* a standard error is drawn wherever one exists: CFM's ``<metric>_se`` (a band over training, error bars
  by length; over several seeds the SE of the mean, ``sqrt(sum se_i^2) / n``), the standard deviation over
  seeds in bar charts with more than one seed;
* legends sit outside the axes (constrained layout, ``loc="outside right upper"``), never over data;
* a panel whose plotted values are all 0 (or all NaN) says so in a note (:func:`degenerate_note`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ebft import paths  # noqa: E402
from ebft.report.frames import (  # noqa: E402
    DOWNSTREAM,
    LOG_METRICS,
    METHOD_COLOURS,
    accuracy_metric,
    base_model_key,
    paper_rows,
    row_names,
    start_model,
    variant_params,
)

#: x-axis label of every figure over training.
FRACTION_LABEL = "fraction of the run (0: initial model)"
#: Metrics that are pass rates (an all-zero panel means no problem was solved).
PASS_RATES = ("unit_tests", "humaneval")
FONT = 7


# ------------------------------------------------------------------------------------------ common
def _new(nrows: int, ncols: int, figsize: tuple[float, float]):
    """A figure with constrained layout (so outside legends get their own space) and a 2-D axes array."""
    return plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, layout="constrained")


def _save(fig: Figure, out: Path) -> None:
    """Write ``fig`` to ``out`` as SVG and close it: no date and fixed element ids (``svg.hashsalt``), so the
    same results draw the same file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with plt.rc_context({"svg.hashsalt": out.name}):
        fig.savefig(out, format="svg", metadata={"Date": None})
    plt.close(fig)


def _colour(method: str) -> str:
    return METHOD_COLOURS.get(method, "#333333")


def _style(method: str, variant: str) -> str:
    return "-" if variant == "default" or method == "base" else "--"


def _names(frame: pd.DataFrame, task: str, meta: dict | None) -> dict[tuple[str, str], str]:
    """Display names (the tables' row names) of the (method, variant) pairs of ``task`` in ``frame``."""
    sub = frame[frame["task"] == task]
    keys = sorted({(str(m), str(v)) for m, v in zip(sub["method"], sub["variant"], strict=True)})
    names = row_names(keys, task, meta)
    bases = [k for k in keys if k[0] == "base"]
    for key in bases:  # base rows name their model when there are several
        names[key] = f"base ({key[1]})" if len(bases) > 1 else "base"
    return names


def figure_legend(fig: Figure, handles: list | None = None, labels: list[str] | None = None,
                  title: str | None = None):
    """One legend for the whole figure, outside the axes on the right (entries of all axes, each label once);
    as many columns as the figure's height needs. None when there is nothing to label."""
    if handles is None:
        seen: dict[str, object] = {}
        for ax in fig.axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                seen.setdefault(label, handle)
        handles, labels = list(seen.values()), list(seen)
    if not handles:
        return None
    rows = max(2, int((fig.get_figheight() * 72 - 24) / (FONT * 1.9)))
    return fig.legend(handles, labels, loc="outside right upper", fontsize=FONT, ncols=math.ceil(len(handles) / rows),
                      title=title, title_fontsize=FONT)


def degenerate_note(values, metric: str) -> str | None:
    """The note of a panel whose plotted values are all 0 or all NaN (None otherwise, or without values)."""
    vals = np.asarray(list(values), dtype=float)
    if vals.size == 0:
        return None
    finite = vals[np.isfinite(vals)]
    if finite.size == 0:
        return "all values are NaN (metric not finite)"
    if np.all(finite == 0):
        return "all values are 0 (no problem solved)" if any(p in metric for p in PASS_RATES) else "all values are 0"
    return None


def _note(ax, values, metric: str) -> None:
    """Write :func:`degenerate_note` into ``ax`` (upper middle, above a flat zero line) when it applies."""
    text = degenerate_note(values, metric)
    if text:
        ax.text(0.5, 0.82, text, transform=ax.transAxes, ha="center", va="center", fontsize=FONT + 1,
                color="#444444", gid="degenerate-note",
                bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "#bbbbbb"})


def _mean_se(rows: pd.DataFrame, metric: str) -> tuple[float, float]:
    """Mean over seeds of ``metric`` in ``rows`` (NaN if any seed's is) and the standard error of that mean
    from the per-seed ``<metric>_se`` (``sqrt(sum se_i^2) / n``; NaN unless every seed has one)."""
    vals = rows[rows["metric"] == metric].groupby("seed")["value"].mean()
    if vals.empty:
        return math.nan, math.nan
    ses = rows[rows["metric"] == f"{metric}_se"].groupby("seed")["value"].mean()
    se = math.nan
    if len(ses) == len(vals) and ses.notna().all():
        se = math.sqrt(float((ses ** 2).sum())) / len(ses)
    return float(vals.mean(skipna=False)), se


# ------------------------------------------------------------------------------------- run starts
def start_rows(frame: pd.DataFrame, task: str, meta: dict | None, method: str, variant: str,
               seeds) -> pd.DataFrame:
    """Result rows of the model a run of (task, method, variant) with ``seeds`` starts from
    (:func:`ebft.report.frames.start_model`); empty when that model was not evaluated. A base model of
    unknown key (no meta) is the task's only base model."""
    smethod, svariant = start_model(meta, task, method, variant)
    cand = frame[(frame["task"] == task) & (frame["method"] == smethod) & frame["step"].isna()]
    if smethod == "base":
        if svariant is None:
            keys = cand["variant"].unique()
            svariant = keys[0] if len(keys) == 1 else None
        return cand[cand["variant"] == svariant]
    return cand[(cand["variant"] == svariant) & cand["seed"].isin(list(seeds))]


def final_step(run: pd.DataFrame) -> float:
    """The last optimizer step of one run (one seed): the final model's ``train_step``, else the largest
    evaluated step; NaN when unknown."""
    final = run[run["step"].isna()]["train_step"].dropna()
    if len(final):
        return float(final.max())
    steps = pd.concat([run["train_step"], run["step"]]).dropna()
    return float(steps.max()) if len(steps) else math.nan


def run_curve(frame: pd.DataFrame, task: str, meta: dict | None, method: str, variant: str, seeds,
              metric: str) -> tuple[pd.DataFrame, list[float]]:
    """One (method, variant)'s ``metric`` over training, mean over ``seeds``: a frame indexed by the fraction
    of the run (0: the initial model, 1: the final model) with columns ``mean`` and ``se``
    (see :func:`_mean_se`), and the final step of every seed."""
    t = frame[(frame["task"] == task) & (frame["method"] == method) & (frame["variant"] == variant)]
    parts, finals = [], []
    for seed in seeds:
        run = t[t["seed"] == seed]
        last = final_step(run)
        finals.append(last)
        rows = run[run["metric"].isin([metric, f"{metric}_se"])].copy()
        rows["x"] = np.where(rows["step"].isna(), 1.0, rows["train_step"].astype(float) / last)
        parts.append(rows)
    start = start_rows(frame, task, meta, method, variant, seeds)
    start = start[start["metric"].isin([metric, f"{metric}_se"])].assign(x=0.0)
    rows = pd.concat([start, *parts]) if parts else start
    points = {x: _mean_se(g, metric) for x, g in rows.dropna(subset=["x"]).groupby("x")}
    curve = pd.DataFrame.from_dict(points, orient="index", columns=["mean", "se"]).sort_index()
    return curve, finals


def _steps_text(finals: list[float]) -> str:
    known = sorted({int(f) for f in finals if not math.isnan(f)})
    if not known:
        return "steps unknown"
    span = str(known[0]) if len(known) == 1 else f"{known[0]}–{known[-1]}"
    return f"{span} step{'s' if known[-1] != 1 else ''}"


def run_labels(frame: pd.DataFrame, tasks: list[str], meta: dict | None) -> dict[tuple[str, str, str], str]:
    """Legend label of every trained (task, method, variant): its display name and step count, e.g.
    ``SFT (120 steps)``; prefixed with the task where one name has different step counts across tasks."""
    labels: dict[tuple[str, str, str], tuple[str, str]] = {}
    for task in tasks:
        t = frame[(frame["task"] == task) & (frame["method"] != "base")]
        names = _names(frame, task, meta)
        for (method, variant), g in t.groupby(["method", "variant"], observed=True):
            finals = [final_step(r) for _, r in g.groupby("seed")]
            labels[(task, str(method), str(variant))] = (names[(str(method), str(variant))], _steps_text(finals))
    steps_by_name: dict[str, set[str]] = {}
    for name, steps in labels.values():
        steps_by_name.setdefault(name, set()).add(steps)
    return {key: (f"{key[0]}: " if len(steps_by_name[name]) > 1 else "") + f"{name} ({steps})"
            for key, (name, steps) in labels.items()}


# ----------------------------------------------------------------------------------------- figures
def draw_placeholder(text: str) -> Figure:
    """A small figure saying why a figure has no data (every declared output exists)."""
    fig, axes = _new(1, 1, (5, 1.6))
    axes[0][0].axis("off")
    axes[0][0].text(0.5, 0.5, text, ha="center", va="center", fontsize=10)
    return fig


def placeholder(out: Path, text: str) -> None:
    """Write :func:`draw_placeholder` to ``out``."""
    _save(draw_placeholder(text), out)


def draw_ce(frame: pd.DataFrame, meta: dict | None = None) -> Figure:
    """Grouped bars: validation CE (all tokens, answer tokens) of every final model, one panel per task; mean
    over seeds, error bars the standard deviation over seeds when there are several."""
    final = frame[frame["step"].isna() & frame["metric"].isin(["eval/ce", "eval/ce_answer"])]
    tasks = sorted(final["task"].unique())
    if not tasks:
        return draw_placeholder("no validation CE results")
    nbars = max(final[final["task"] == t].groupby(["method", "variant"], observed=True).ngroups for t in tasks)
    fig, axes = _new(1, len(tasks), (max(4.2, 0.25 * nbars + 1.6) * len(tasks) + 1.6, 3.8))
    several = False
    for ax, task in zip(axes[0], tasks, strict=True):
        sub = final[final["task"] == task]
        by_seed = sub.groupby(["method", "variant", "metric", "seed"], observed=True)["value"].mean()
        grouped = by_seed.groupby(level=["method", "variant", "metric"], observed=True)
        means, stds, counts = (grouped.mean().unstack("metric"), grouped.std().unstack("metric"),
                               grouped.count().unstack("metric"))
        names = _names(frame, task, meta)
        x = np.arange(len(means))
        colours = [_colour(m) for m, _ in means.index]
        plotted = []
        for j, metric in enumerate([c for c in ["eval/ce", "eval/ce_answer"] if c in means.columns]):
            err = stds[metric].where(counts[metric] > 1)
            several |= bool(err.notna().any())
            ax.bar(x + 0.4 * j - 0.2, means[metric], width=0.38, color=colours, alpha=1.0 if j == 0 else 0.55,
                   yerr=err.values if err.notna().any() else None, capsize=2, error_kw={"elinewidth": 0.8})
            plotted.extend(means[metric].tolist())
        ax.set_xticks(x, [names.get((str(m), str(v)), f"{m}/{v}") for m, v in means.index], fontsize=FONT,
                      rotation=30, ha="right")
        ax.set_title(task)
        ax.set_ylabel("validation CE (nats/token)")
        _note(ax, plotted, "eval/ce")
    handles = [Patch(facecolor="#555555", label="all tokens"), Patch(facecolor="#555555", alpha=0.55,
                                                                     label="answer tokens")]
    figure_legend(fig, handles, [h.get_label() for h in handles],
                  title="error bars: std over seeds" if several else None)
    return fig


def ce_figure(frame: pd.DataFrame, out: Path, meta: dict | None = None) -> None:
    """Write :func:`draw_ce` to ``out``."""
    _save(draw_ce(frame, meta), out)


def _label(method: str, variant: str) -> str:
    return method if variant == "default" or method == "base" else f"{method}/{variant}"


def draw_cfm_length(frame: pd.DataFrame, task: str | None = None, meta: dict | None = None) -> Figure:
    """CFM vs completion length G (paper Figures 1-2): one panel per task, one line per final model (mean
    over seeds), error bars the standard error (``eval/cfm_len{G}_se``)."""
    sub = frame[frame["step"].isna() & frame["metric"].str.match(r"^eval/cfm_len\d+(_se)?$")].copy()
    tasks = sorted(sub[~sub["metric"].str.endswith("_se")]["task"].unique())
    if not tasks:
        return draw_placeholder(f"{task or 'all tasks'}: no CFM-by-length results")
    fig, axes = _new(1, len(tasks), (4.2 * len(tasks) + 2.0, 3.4))
    sub["G"] = sub["metric"].str.extract(r"len(\d+)")[0].astype(int)
    sub["metric"] = sub["metric"].str.replace(r"len\d+", "len", regex=True)
    for ax, t in zip(axes[0], tasks, strict=True):
        names = _names(frame, t, meta)
        plotted = []
        for (method, variant), g in sub[sub["task"] == t].groupby(["method", "variant"], observed=True):
            points = pd.DataFrame({G: _mean_se(rows, "eval/cfm_len") for G, rows in g.groupby("G")},
                                  index=["mean", "se"]).T.sort_index()
            ax.errorbar(points.index, points["mean"], yerr=points["se"], marker="o", capsize=2,
                        color=_colour(method), linestyle=_style(method, variant),
                        label=names.get((str(method), str(variant)), _label(method, variant)))
            plotted.extend(points["mean"].tolist())
        ax.set_title(t)
        ax.set_xlabel("completion length G (tokens)")
        ax.set_ylabel("validation CFM")
        _note(ax, plotted, "eval/cfm")
    se = sub[sub["metric"].str.endswith("_se")]["value"].notna().any()
    figure_legend(fig, title="error bars: ±1 SE" if se else None)
    return fig


def cfm_length_figure(frame: pd.DataFrame, out: Path, task: str | None = None, meta: dict | None = None) -> None:
    """Write :func:`draw_cfm_length` to ``out``."""
    _save(draw_cfm_length(frame, task, meta), out)


CURVE_METRICS = ["eval/ce", "eval/cfm", "eval/unit_tests_greedy"]


def _curve_metrics(present: set[str]) -> list[str]:
    """The metrics of :data:`CURVE_METRICS` and :data:`~ebft.report.frames.DOWNSTREAM` in ``present``, each once."""
    return list(dict.fromkeys(m for m in [*CURVE_METRICS, *DOWNSTREAM] if m in present))


def _plot_curve(ax, curve: pd.DataFrame, method: str, variant: str, label: str) -> None:
    """One run's line (markers at the evaluated points) and its ±1 SE band where SEs exist."""
    colour = _colour(method)
    ax.plot(curve.index, curve["mean"], marker="o", markersize=4, color=colour,
            linestyle=_style(method, variant), label=label)
    if curve["se"].notna().any():
        ax.fill_between(curve.index, curve["mean"] - curve["se"], curve["mean"] + curve["se"], color=colour,
                        alpha=0.18, linewidth=0)


def draw_curves(frame: pd.DataFrame, task: str | None = None, meta: dict | None = None) -> Figure:
    """Metrics over training (paper Figures 3, 5): rows = metrics, columns = tasks; one line per (method,
    variant), mean over seeds, from its initial model (x = 0) to its final model (x = 1)."""
    tasks = sorted(frame["task"].unique())
    metrics = _curve_metrics(set(frame["metric"]))
    if not tasks or not metrics:
        return draw_placeholder(f"{task or 'all tasks'}: no results")
    fig, axes = _new(len(metrics), len(tasks), (4.2 * len(tasks) + 2.4, 2.8 * len(metrics)))
    labels = run_labels(frame, tasks, meta)
    for j, t in enumerate(tasks):
        sub = frame[frame["task"] == t]
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            m = sub[(sub["metric"] == metric) & (sub["method"] != "base")]
            if m.empty:
                ax.set_visible(False)
                continue
            plotted = []
            for (method, variant), g in m.groupby(["method", "variant"], observed=True):
                curve, _ = run_curve(frame, t, meta, str(method), str(variant), sorted(g["seed"].unique()), metric)
                _plot_curve(ax, curve, str(method), str(variant), labels[(t, str(method), str(variant))])
                plotted.extend(curve["mean"].tolist())
            ax.set_title(f"{t}: {metric.removeprefix('eval/')}", fontsize=9)
            ax.set_xlabel(FRACTION_LABEL, fontsize=8)
            ax.set_xlim(-0.04, 1.04)
            _note(ax, plotted, metric)
    figure_legend(fig, title="bands: ±1 SE" if any(ax.collections for ax in fig.axes) else None)
    return fig


def curves_figure(frame: pd.DataFrame, out: Path, task: str | None = None, meta: dict | None = None) -> None:
    """Write :func:`draw_curves` to ``out``."""
    _save(draw_curves(frame, task, meta), out)


def draw_train_logs(logs: pd.DataFrame, task: str | None = None, meta: dict | None = None) -> Figure:
    """The training logs over training (:func:`ebft.report.frames.load_train_logs`): the training loss of every
    run, RLVR's reward and pass rate, EBFT's reward and CFM estimate on its rollouts; rows = tasks, columns =
    metrics; one line per (method, variant), mean over seeds, x = the fraction of the run (the legend names
    the step counts)."""
    tasks = sorted(logs["task"].unique()) if not logs.empty else []
    metrics = [m for m in LOG_METRICS if not logs.empty and m in set(logs["metric"])]
    if not tasks or not metrics:
        return draw_placeholder(f"{task or 'all tasks'}: no training logs")
    fig, axes = _new(len(tasks), len(metrics), (3.4 * len(metrics) + 2.4, 2.6 * len(tasks)))
    for i, t in enumerate(tasks):
        sub = logs[logs["task"] == t]
        names = row_names(sorted({(str(m), str(v)) for m, v in zip(sub["method"], sub["variant"], strict=True)}),
                          t, meta)
        for j, metric in enumerate(metrics):
            ax, rows = axes[i][j], sub[sub["metric"] == metric]
            for (method, variant), g in rows.groupby(["method", "variant"]):
                last = g.groupby("seed")["step"].max()
                curve = g.groupby("step")["value"].mean()
                steps = int(last.max())
                ax.plot(curve.index / steps, curve.to_numpy(), color=_colour(method), linestyle=_style(method, variant),
                        marker="." if len(curve) < 30 else None,
                        label=f"{names.get((method, variant), f'{method}/{variant}')} ({steps} steps)")
            if rows.empty:
                ax.text(0.5, 0.5, "not logged by these runs", transform=ax.transAxes, ha="center", fontsize=FONT)
            _note(ax, rows["value"].tolist(), metric)
            ax.set_title(f"{t}: {metric}" if len(tasks) > 1 else metric, fontsize=9)
            ax.set_xlabel("fraction of the run", fontsize=8)
            ax.set_xlim(-0.04, 1.04)
    figure_legend(fig)
    return fig


def train_logs_figure(logs: pd.DataFrame, out: Path, task: str | None = None, meta: dict | None = None) -> None:
    """Write :func:`draw_train_logs` to ``out``."""
    _save(draw_train_logs(logs, task, meta), out)


def _trajectory(frame: pd.DataFrame, metric: str) -> pd.Series:
    """Mean over seeds of ``metric`` by train_step (final models included at their last step)."""
    return frame[frame["metric"] == metric].dropna(subset=["train_step"]).groupby("train_step")["value"].mean()


def draw_accuracy_ce(frame: pd.DataFrame, metric: str, paper: dict | None = None, task: str | None = None,
                     meta: dict | None = None) -> Figure:
    """Accuracy vs validation CE over training (paper Figure 1): one line per (method, variant), from its
    initial model (:func:`start_rows`) through each checkpoint to the final model; one panel per task that
    has ``metric``."""
    tasks = sorted(frame[frame["metric"] == metric]["task"].unique())
    if not tasks:
        return draw_placeholder(f"{task or 'all tasks'}: no {metric.removeprefix('eval/')} results")
    fig, axes = _new(1, len(tasks), (5.0 * len(tasks) + 2.4, 4.0))
    for ax, t in zip(axes[0], tasks, strict=True):
        sub = frame[frame["task"] == t]
        names = _names(frame, t, meta)
        accs = []
        for key, base in sub[sub["method"] == "base"].groupby("variant"):
            b_ce, b_acc = _mean_se(base, "eval/ce")[0], _mean_se(base, metric)[0]
            ax.scatter([b_ce], [b_acc], color=METHOD_COLOURS["base"], s=60, zorder=3, label=names[("base", key)])
            accs.append(b_acc)
        for (method, variant), g in sub[sub["method"] != "base"].groupby(["method", "variant"], observed=True):
            ce, acc = _trajectory(g, "eval/ce"), _trajectory(g, metric)
            steps = sorted(set(ce.index) & set(acc.index))
            if not steps:
                continue
            start = start_rows(frame, t, meta, str(method), str(variant), sorted(g["seed"].unique()))
            xs = [_mean_se(start, "eval/ce")[0]] + [ce[s] for s in steps]  # NaN (no start) if not evaluated
            ys = [_mean_se(start, metric)[0]] + [acc[s] for s in steps]
            ax.plot(xs, ys, marker="o", color=_colour(method), linestyle=_style(method, variant),
                    label=names.get((str(method), str(variant)), _label(method, variant)))
            ax.annotate(f"{int(steps[-1])}", (xs[-1], ys[-1]), fontsize=6, xytext=(3, 3), textcoords="offset points")
            accs.extend(ys)
        for kind, values in paper_rows(t, paper or {}).items():
            if "eval/ce" in values and metric in values:
                ax.scatter([values["eval/ce"]["value"]], [values[metric]["value"]], marker="*", s=140,
                           color=_colour(kind.split("_")[0]), edgecolor="black", zorder=4, label=f"paper: {kind}")
        ax.set_title(f"{t}: accuracy vs validation CE", fontsize=9)
        ax.set_xlabel("validation CE (nats/token)")
        ax.set_ylabel(metric.removeprefix("eval/"))
        _note(ax, accs, metric)
    figure_legend(fig)
    return fig


def accuracy_ce_figure(frame: pd.DataFrame, out: Path, metric: str, paper: dict | None = None,
                       task: str | None = None, meta: dict | None = None) -> None:
    """Write :func:`draw_accuracy_ce` to ``out``."""
    _save(draw_accuracy_ce(frame, metric, paper, task, meta), out)


def draw_ablation(frame: pd.DataFrame, meta: dict | None, accuracy: str, task: str | None = None) -> Figure:
    """Bars over the EBFT variants of each task (final models, mean over seeds, error bars the standard
    deviation over seeds when there are several): validation CE, CFM and the accuracy metric; hatched bars
    start from the SFT warm start."""
    final = frame[frame["step"].isna() & (frame["method"] == "ebft")]
    metrics = [m for m in ["eval/ce", "eval/cfm", accuracy] if m in set(final["metric"])]
    tasks = sorted(final["task"].unique())
    if not tasks or not metrics:
        return draw_placeholder(f"{task or 'all tasks'}: no EBFT results")
    fig, axes = _new(len(tasks), len(metrics),
                     (max(4.0, 0.45 * final["variant"].nunique() + 2) * len(metrics) + 1.6, 3.2 * len(tasks)))
    for i, t in enumerate(tasks):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            vals = final[(final["task"] == t) & (final["metric"] == metric)].groupby("variant")["value"]
            means, stds = vals.mean().sort_index(), vals.std().sort_index()
            if means.empty:
                ax.set_visible(False)
                continue
            hatches = ["//" if variant_params(meta, t, "ebft", v).get("init") == "sft" else "" for v in means.index]
            bars = ax.bar(range(len(means)), means.values, yerr=stds.values if stds.notna().any() else None,
                          capsize=2, color=METHOD_COLOURS["ebft"], edgecolor="white")
            for bar, hatch in zip(bars, hatches, strict=True):
                bar.set_hatch(hatch)
            ax.set_xticks(range(len(means)), means.index, rotation=60, ha="right", fontsize=6)
            ax.set_title(f"{t}: {metric.removeprefix('eval/')}", fontsize=9)
            _note(ax, means.values, metric)
    handles = [Patch(facecolor=METHOD_COLOURS["ebft"], edgecolor="white", label="init: base"),
               Patch(facecolor=METHOD_COLOURS["ebft"], edgecolor="white", hatch="//", label="init: sft")]
    several = final.groupby(["task", "variant", "metric"])["value"].count().max() > 1
    figure_legend(fig, handles, [h.get_label() for h in handles],
                  title="error bars: std over seeds" if several else None)
    return fig


def ablation_figure(frame: pd.DataFrame, out: Path, meta: dict | None, accuracy: str,
                    task: str | None = None) -> None:
    """Write :func:`draw_ablation` to ``out``."""
    _save(draw_ablation(frame, meta, accuracy, task), out)


def draw_run(frame: pd.DataFrame, method: str, variant: str, seed: int, meta: dict | None = None) -> Figure:
    """One run over training: each of its metrics from the run's initial model (x = 0) to its final model
    (x = 1), the base model's value as a dotted grey reference."""
    run = frame[(frame["method"] == method) & (frame["variant"] == variant) & (frame["seed"] == seed)]
    metrics = _curve_metrics(set(run["metric"]))
    if not metrics:
        return draw_placeholder(f"{method}/{variant}/seed{seed}: no results")
    task = str(run["task"].iloc[0])
    label = run_labels(frame[(frame["task"] == task) & ((frame["seed"] == seed) | (frame["method"] == "base"))],
                       [task], meta)[(task, method, variant)]
    fig, axes = _new(1, len(metrics), (3.4 * len(metrics) + 2.2, 2.8))
    key = base_model_key(meta, task, method, variant)
    base = frame[(frame["task"] == task) & (frame["method"] == "base") & frame["step"].isna()]
    if key is not None or base["variant"].nunique() == 1:
        base = base[base["variant"] == (key if key is not None else base["variant"].iloc[0])]
    else:
        base = base.iloc[0:0]
    for ax, metric in zip(axes[0], metrics, strict=True):
        curve, _ = run_curve(frame, task, meta, method, variant, [seed], metric)
        _plot_curve(ax, curve, method, variant, label)
        b = _mean_se(base, metric)[0]
        if not math.isnan(b):
            ax.axhline(b, color=METHOD_COLOURS["base"], linestyle=":", label="base model")
        ax.set_title(metric.removeprefix("eval/"), fontsize=9)
        ax.set_xlabel(FRACTION_LABEL, fontsize=8)
        ax.set_xlim(-0.04, 1.04)
        _note(ax, curve["mean"].tolist(), metric)
    fig.suptitle(f"{label.rsplit(' (', 1)[0]}, seed {seed}", fontsize=9)
    figure_legend(fig)
    return fig


def run_figure(frame: pd.DataFrame, out: Path, method: str, variant: str, seed: int,
               meta: dict | None = None) -> None:
    """Write :func:`draw_run` to ``out``."""
    _save(draw_run(frame, method, variant, seed, meta), out)


def write_figures(frame: pd.DataFrame, figures_dir: Path, tasks: list[str], meta: dict | None,
                  numbers: dict, config_name: str = "", logs: pd.DataFrame | None = None, workers: int = 1) -> None:
    """Write the combined figures in ``figures_dir`` and the per-task figures (with one figure per run) in
    ``figures_dir/{task}/``; ``numbers`` (the paper's, drawn in the paper config only) may be empty;
    ``logs``: the runs' training logs (:func:`ebft.report.frames.load_train_logs`). ``workers > 1`` draws the
    figures in that many forked processes (each figure is independent; rendering is most of the time)."""
    logs = logs if logs is not None else pd.DataFrame(columns=["task", "method", "variant", "seed", "step",
                                                               "metric", "value"])
    paper = numbers if config_name == "paper" else None
    accuracy = accuracy_metric(frame, config_name)
    draw = {  # figure name (ebft.paths.FIGURE_TITLES) -> drawing of (frame, file, task or None)
        "validation_ce": lambda f, out, task: ce_figure(f, out, meta),
        "accuracy_vs_ce": lambda f, out, task: accuracy_ce_figure(f, out, accuracy, paper, task=task, meta=meta),
        "cfm_by_length": lambda f, out, task: cfm_length_figure(f, out, task=task, meta=meta),
        "training_curves": lambda f, out, task: curves_figure(f, out, task=task, meta=meta),
        "ablation": lambda f, out, task: ablation_figure(f, out, meta, accuracy, task=task),
        "training_logs": lambda f, out, task: train_logs_figure(logs if task is None else logs[logs["task"] == task],
                                                               out, task, meta),
    }
    jobs: list[Callable[[], None]] = []
    for name in paths.FIGURE_TITLES:
        jobs.append(partial(draw[name], frame, figures_dir / paths.fill(paths.FIGURE_NAME, name=name), None))
    for task in tasks:
        sub = frame[frame["task"] == task]
        tdir = figures_dir / task
        for name in paths.TASK_FIGURES:
            jobs.append(partial(draw[name], sub, tdir / paths.fill(paths.FIGURE_NAME, name=name), task))
        for (method, variant, seed), _ in sub[sub["method"] != "base"].groupby(
                ["method", "variant", "seed"], observed=True):
            out = tdir / paths.fill(paths.RUN_FIGURE_NAME, method=method, variant=variant, seed=seed)
            jobs.append(partial(run_figure, sub, out, method, variant, int(seed), meta))
    _run_all(jobs, workers)


#: The drawings of the current :func:`_run_all`, inherited by its forked workers.
_JOBS: list[Callable[[], None]] = []


def _run_job(index: int) -> None:
    _JOBS[index]()


def _run_all(jobs: list[Callable[[], None]], workers: int) -> None:
    """Call every job, in ``workers`` forked processes when more than one (and fork exists); a failing job's
    exception is raised here, and a worker that dies (e.g. killed for memory) fails the call instead of
    hanging it (``BrokenProcessPool``)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    workers = min(workers, len(jobs))
    if workers <= 1 or "fork" not in mp.get_all_start_methods():
        for job in jobs:
            job()
        return
    _JOBS[:] = jobs
    try:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            list(pool.map(_run_job, range(len(jobs))))
    finally:
        _JOBS.clear()
