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
