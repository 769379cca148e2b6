"""Figures (matplotlib, Agg backend, SVG) of the tidy frame (:mod:`ebft.report.frames`), with one colour per
method (:data:`ebft.report.frames.METHOD_COLOURS`) across every figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ebft import paths  # noqa: E402
from ebft.report.frames import (  # noqa: E402
    DOWNSTREAM,
    METHOD_COLOURS,
    accuracy_metric,
    paper_rows,
    variant_params,
)


def _save(fig, out: Path) -> None:
    """Lay the figure out, write it to ``out`` as SVG and close it."""
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="svg")
    plt.close(fig)


def ce_figure(frame: pd.DataFrame, out: Path) -> None:
    """Grouped bars: validation CE (all tokens, answer tokens) of every final model, one panel per task."""
    final = frame[frame["step"].isna() & frame["metric"].isin(["eval/ce", "eval/ce_answer"])]
    tasks = sorted(final["task"].unique())
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(4.2 * max(len(tasks), 1), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=False):
        sub = final[final["task"] == task]
        means = sub.groupby(["method", "variant", "metric"], observed=True)["value"].mean().unstack("metric")
        labels = [m if v == "default" else f"{m}\n{v}" for m, v in means.index]
        x = range(len(means))
        for j, metric in enumerate([c for c in ["eval/ce", "eval/ce_answer"] if c in means.columns]):
            colours = [METHOD_COLOURS.get(m, "#333333") for m, _ in means.index]
            ax.bar([i + 0.4 * j - 0.2 for i in x], means[metric], width=0.38, color=colours,
                   alpha=1.0 if j == 0 else 0.55, label=metric.split("/")[-1])
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_title(task)
        ax.set_ylabel("validation CE (nats/token)")
        ax.legend(fontsize=7, title="solid: all tokens, light: answer", title_fontsize=7)
    _save(fig, out)


def _label(method: str, variant: str) -> str:
    return method if variant == "default" or method == "base" else f"{method}/{variant}"


def cfm_length_figure(frame: pd.DataFrame, out: Path, task: str | None = None) -> None:
    """CFM vs completion length G (paper Figures 1-2): one panel per task, one line per final model."""
    sub = frame[frame["step"].isna() & frame["metric"].str.match(r"^eval/cfm_len\d+$")].copy()
    tasks = sorted(sub["task"].unique())
    if not tasks:
        return placeholder(out, f"{task or 'all tasks'}: no CFM-by-length results")
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(4.2 * max(len(tasks), 1), 3.4), squeeze=False)
    sub["G"] = sub["metric"].str.extract(r"(\d+)$")[0].astype(int)
    for ax, task in zip(axes[0], tasks, strict=False):
        t = sub[sub["task"] == task]
        for (method, variant), g in t.groupby(["method", "variant"], observed=True):
            g = g.groupby("G")["value"].mean().sort_index()
            ax.plot(g.index, g.values, marker="o", color=METHOD_COLOURS.get(method, "#333333"),
                    linestyle="-" if variant in ("default",) or method == "base" else "--",
                    label=_label(method, variant))
        ax.set_title(task)
        ax.set_xlabel("completion length G (tokens)")
        ax.set_ylabel("validation CFM")
        ax.legend(fontsize=7)
    _save(fig, out)


CURVE_METRICS = ["eval/ce", "eval/cfm", "eval/unit_tests_greedy"]


def _curve_metrics(present: set[str]) -> list[str]:
    """The metrics of :data:`CURVE_METRICS` and :data:`~ebft.report.frames.DOWNSTREAM` in ``present``, each once."""
    return list(dict.fromkeys(m for m in [*CURVE_METRICS, *DOWNSTREAM] if m in present))


def curves_figure(frame: pd.DataFrame, out: Path, task: str | None = None) -> None:
    """Metrics vs training step (paper Figures 3, 5): rows = metrics, columns = tasks; the base model is
    every run's step 0, the final model its last step."""
    tasks = sorted(frame["task"].unique())
    metrics = _curve_metrics(set(frame["metric"]))
    if not tasks or not metrics:
        return placeholder(out, f"{task or 'all tasks'}: no results")
    fig, axes = plt.subplots(max(len(metrics), 1), max(len(tasks), 1), squeeze=False,
                             figsize=(4.2 * max(len(tasks), 1), 2.8 * max(len(metrics), 1)))
    for j, task in enumerate(tasks):
        t = frame[frame["task"] == task]
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            m = t[t["metric"] == metric]
            base = m[m["method"] == "base"]["value"].mean()
            if m.empty:
                ax.set_visible(False)
                continue
            for (method, variant), g in m[m["method"] != "base"].groupby(["method", "variant"], observed=True):
                points = g.dropna(subset=["train_step"]).groupby("train_step")["value"].mean().sort_index()
                xs = [0, *points.index.tolist()]
                ys = [base, *points.values.tolist()]
                ax.plot(xs, ys, marker="o", color=METHOD_COLOURS.get(method, "#333333"),
                        linestyle="-" if variant == "default" else "--", label=_label(method, variant))
            if m.empty:
                ax.set_visible(False)
                continue
            ax.set_title(f"{task}: {metric.removeprefix('eval/')}", fontsize=9)
            ax.set_xlabel("training step (0: base model)", fontsize=8)
            ax.legend(fontsize=6)
    _save(fig, out)


def placeholder(out: Path, text: str) -> None:
    """A small SVG saying why a figure has no data (every declared output exists)."""
    fig, ax = plt.subplots(figsize=(5, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10)
    _save(fig, out)


def _trajectory(frame: pd.DataFrame, metric: str) -> pd.Series:
    """Mean over seeds of ``metric`` by train_step (final models included at their last step)."""
    return frame[frame["metric"] == metric].dropna(subset=["train_step"]).groupby("train_step")["value"].mean()


def accuracy_ce_figure(frame: pd.DataFrame, out: Path, metric: str, paper: dict | None = None,
                       task: str | None = None, meta: dict | None = None) -> None:
    """Accuracy vs validation CE over training (paper Figure 1): one line per (method, variant), from its
    starting model (the base model at step 0, or the final SFT model for warm starts) through each checkpoint
    to the final model; one panel per task that has ``metric``."""
    tasks = sorted(frame[frame["metric"] == metric]["task"].unique())
    if not tasks:
        return placeholder(out, f"{task or 'all tasks'}: no {metric.removeprefix('eval/')} results")
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.0 * len(tasks), 4.0), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=False):
        sub = frame[frame["task"] == t]
        base = sub[sub["method"] == "base"]
        b_ce = base[base["metric"] == "eval/ce"]["value"].mean()
        b_acc = base[base["metric"] == metric]["value"].mean()
        ax.scatter([b_ce], [b_acc], color=METHOD_COLOURS["base"], s=60, zorder=3, label="base")
        for (method, variant), g in sub[sub["method"] != "base"].groupby(["method", "variant"], observed=True):
            ce, acc = _trajectory(g, "eval/ce"), _trajectory(g, metric)
            steps = sorted(set(ce.index) & set(acc.index))
            if not steps:
                continue
            start_ce, start_acc = b_ce, b_acc
            if method != "sft" and variant_params(meta, t, method, variant).get("init") == "sft":
                sft = sub[(sub["method"] == "sft") & (sub["variant"] == "default") & sub["step"].isna()]
                start_ce = sft[sft["metric"] == "eval/ce"]["value"].mean()  # NaN (no start) without own SFT
                start_acc = sft[sft["metric"] == metric]["value"].mean()
            xs = [start_ce] + [ce[s] for s in steps]
            ys = [start_acc] + [acc[s] for s in steps]
            ax.plot(xs, ys, marker="o", color=METHOD_COLOURS.get(method, "#333333"),
                    linestyle="-" if variant == "default" else "--", label=_label(method, variant))
            ax.annotate(f"{int(steps[-1])}", (xs[-1], ys[-1]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        rows = paper_rows(t, paper or {})
        for kind, values in rows.items():
            if "eval/ce" in values and metric in values:
                colour = METHOD_COLOURS.get(kind.split("_")[0], "#333333")
                ax.scatter([values["eval/ce"]["value"]], [values[metric]["value"]], marker="*", s=140,
                           color=colour, edgecolor="black", zorder=4, label=f"paper: {kind}")
        ax.set_title(f"{t}: accuracy vs validation CE", fontsize=9)
        ax.set_xlabel("validation CE (nats/token)")
        ax.set_ylabel(metric.removeprefix("eval/"))
        ax.legend(fontsize=6)
    _save(fig, out)


def ablation_figure(frame: pd.DataFrame, out: Path, meta: dict | None, accuracy: str,
                    task: str | None = None) -> None:
    """Bars over the EBFT variants of each task (final models, mean over seeds): validation CE, CFM and the
    accuracy metric; hatched bars start from the SFT warm start."""
    final = frame[frame["step"].isna() & (frame["method"] == "ebft")]
    metrics = [m for m in ["eval/ce", "eval/cfm", accuracy] if m in set(final["metric"])]
    tasks = sorted(final["task"].unique())
    if not tasks or not metrics:
        return placeholder(out, f"{task or 'all tasks'}: no EBFT results")
    fig, axes = plt.subplots(len(tasks), len(metrics), squeeze=False,
                             figsize=(max(4.0, 0.45 * final["variant"].nunique() + 2) * len(metrics), 3.2 * len(tasks)))
    for i, t in enumerate(tasks):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            vals = final[(final["task"] == t) & (final["metric"] == metric)].groupby("variant")["value"]
            means, stds = vals.mean().sort_index(), vals.std().sort_index()
            if means.empty:
                ax.set_visible(False)
                continue
            hatches = ["//" if variant_params(meta, t, "ebft", v).get("init") == "sft" else "" for v in means.index]
            bars = ax.bar(range(len(means)), means.values, yerr=stds.fillna(0).values,
                          color=METHOD_COLOURS["ebft"], edgecolor="white")
            for bar, hatch in zip(bars, hatches, strict=True):
                bar.set_hatch(hatch)
            ax.set_xticks(range(len(means)), means.index, rotation=60, ha="right", fontsize=6)
            ax.set_title(f"{t}: {metric.removeprefix('eval/')}", fontsize=9)
    _save(fig, out)


def run_figure(frame: pd.DataFrame, out: Path, method: str, variant: str, seed: int) -> None:
    """One run over training: each of its metrics vs step, the base model's value as a grey reference."""
    run = frame[(frame["method"] == method) & (frame["variant"] == variant) & (frame["seed"] == seed)]
    metrics = _curve_metrics(set(run["metric"]))
    if not metrics:
        return placeholder(out, f"{method}/{variant}/seed{seed}: no results")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 2.8), squeeze=False)
    base = frame[frame["method"] == "base"]
    for ax, metric in zip(axes[0], metrics, strict=False):
        traj = _trajectory(run, metric).sort_index()
        ax.plot(traj.index, traj.values, marker="o", color=METHOD_COLOURS.get(method, "#333333"))
        b = base[base["metric"] == metric]["value"].mean()
        if pd.notna(b):
            ax.axhline(b, color=METHOD_COLOURS["base"], linestyle=":", label="base")
            ax.legend(fontsize=6)
        ax.set_title(metric.removeprefix("eval/"), fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
    fig.suptitle(f"{_label(method, variant)} seed {seed}", fontsize=9)
    _save(fig, out)


def write_figures(frame: pd.DataFrame, figures_dir: Path, tasks: list[str], meta: dict | None,
                  numbers: dict, config_name: str = "") -> None:
    """Write the combined figures in ``figures_dir`` and the per-task figures (with one figure per run) in
    ``figures_dir/{task}/``; ``numbers`` (the paper's, drawn in the paper config only) may be empty."""
    paper = numbers if config_name == "paper" else None
    accuracy = accuracy_metric(frame, config_name)
    draw = {  # figure name (ebft.paths.FIGURE_TITLES) -> drawing of (frame, file, task or None)
        "validation_ce": lambda f, out, task: ce_figure(f, out),
        "accuracy_vs_ce": lambda f, out, task: accuracy_ce_figure(f, out, accuracy, paper, task=task, meta=meta),
        "cfm_by_length": lambda f, out, task: cfm_length_figure(f, out, task=task),
        "training_curves": lambda f, out, task: curves_figure(f, out, task=task),
        "ablation": lambda f, out, task: ablation_figure(f, out, meta, accuracy, task=task),
    }
    for name in paths.FIGURE_TITLES:
        draw[name](frame, figures_dir / paths.fill(paths.FIGURE_NAME, name=name), None)
    for task in tasks:
        sub = frame[frame["task"] == task]
        tdir = figures_dir / task
        for name in paths.TASK_FIGURES:
            draw[name](sub, tdir / paths.fill(paths.FIGURE_NAME, name=name), task)
        for (method, variant, seed), _ in sub[sub["method"] != "base"].groupby(
                ["method", "variant", "seed"], observed=True):
            out = tdir / paths.fill(paths.RUN_FIGURE_NAME, method=method, variant=variant, seed=seed)
            run_figure(sub, out, method, variant, int(seed))
