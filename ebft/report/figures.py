"""Figures (matplotlib, Agg backend, SVG) with one colour per method across every figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

METHOD_COLOURS = {"base": "#7f7f7f", "sft": "#1f77b4", "rlvr": "#2ca02c", "ebft": "#d62728"}


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
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="svg")
    plt.close(fig)


def _label(method: str, variant: str) -> str:
    return method if variant == "default" or method == "base" else f"{method}/{variant}"


def cfm_length_figure(frame: pd.DataFrame, out: Path) -> None:
    """CFM vs completion length G (paper Figures 1-2): one panel per task, one line per final model."""
    sub = frame[frame["step"].isna() & frame["metric"].str.match(r"^eval/cfm_len\d+$")].copy()
    tasks = sorted(sub["task"].unique())
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
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="svg")
    plt.close(fig)


CURVE_METRICS = ["eval/ce", "eval/cfm", "eval/unit_tests_greedy"]


def curves_figure(frame: pd.DataFrame, out: Path) -> None:
    """Metrics vs training step (paper Figures 3, 5): rows = metrics, columns = tasks; the base model is
    every run's step 0, the final model its last step."""
    tasks = sorted(frame["task"].unique())
    metrics = [m for m in CURVE_METRICS if m in set(frame["metric"])]
    fig, axes = plt.subplots(max(len(metrics), 1), max(len(tasks), 1), squeeze=False,
                             figsize=(4.2 * max(len(tasks), 1), 2.8 * max(len(metrics), 1)))
    for j, task in enumerate(tasks):
        t = frame[frame["task"] == task]
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            m = t[t["metric"] == metric]
            base = m[m["method"] == "base"]["value"].mean()
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
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="svg")
    plt.close(fig)
