"""What the report's figures show, read from the matplotlib objects (and the SVG text): every curve starts at
its run's initial model, the x axis is the fraction of the run, standard errors are drawn, legends stay off
the data and an all-zero panel says so."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from ebft.evaluation.results import make_result, write_result
from ebft.report import figures
from ebft.report.frames import load_results, start_model

TASK = "code_qa"
META = {"name": "figures", "tasks": {TASK: {
    "kind": "code_qa", "base_model": "tiny", "sft_warm_start": "own", "embed_method": "last_token",
    "variants": {"sft": {"default": {}, "default.big": {"base_model": "big"}},
                 "rlvr": {"default": {"init": "sft"}},
                 "ebft": {"default": {"init": "base"}, "sft": {"init": "sft"},
                          "sft.big": {"init": "sft", "base_model": "big"}}}}}}
#: (method, variant) -> (final step, checkpoint steps)
RUNS = {("sft", "default"): (120, [60]), ("sft", "default.big"): (120, [60]), ("rlvr", "default"): (10, []),
        ("ebft", "default"): (6, [3]), ("ebft", "sft"): (6, [3]), ("ebft", "sft.big"): (6, [3])}
SEEDS = (0, 1)


def ce(method: str, variant: str, seed: int, fraction: float) -> float:
    """Distinct values per model and seed, so a curve's start tells which model it is."""
    if method == "base":
        return {"tiny": 3.0, "big": 2.5}[variant]
    starts = {("sft", "default"): 3.0, ("sft", "default.big"): 2.5, ("ebft", "default"): 3.0}
    if (method, variant) in starts:
        start = starts[(method, variant)]
    else:  # init: sft, the final SFT model of the same seed
        start = ce("sft", "default.big" if variant.endswith(".big") else "default", seed, 1.0)
    return round(start - fraction * (0.5 + 0.1 * seed), 6)


def write_set(root: Path, *, humaneval: float | None = 0.0, cfm_se: bool = True) -> list[Path]:
    """Result files of the grid above: ce, cfm (+ SE), cfm_by_length (+ SE) and humaneval."""
    out = []

    def add(method, variant, seed, step, train_step, fraction):
        ckpt = "final" if step is None else f"step{step}"
        value = ce(method, variant, seed, fraction)
        groups = {"ce": {"eval/ce": value, "eval/ce_answer": value + 0.1},
                  "cfm": {"eval/cfm": value / 10, **({"eval/cfm_se": 0.02} if cfm_se else {})},
                  "humaneval": {"eval/humaneval_greedy": humaneval}}
        if step is None:
            groups["cfm_by_length"] = {"eval/cfm_len8": value / 10, "eval/cfm_len8_se": 0.01,
                                       "eval/cfm_len16": value / 5, "eval/cfm_len16_se": 0.03}
        for group, metrics in groups.items():
            res = make_result(group, {"task": TASK, "method": method, "variant": variant, "seed": seed, "step": step},
                              metrics, model=f"runs/{method}/{variant}/seed{seed}/model")
            res["train_step"] = train_step
            path = root / method / variant / f"seed{seed}" / ckpt / f"{group}.json"
            write_result(path, res)
            out.append(path)

    for key in ("tiny", "big"):
        add("base", key, 0, None, None, 0.0)
    for (method, variant), (last, ckpts) in RUNS.items():
        for seed in SEEDS:
            add(method, variant, seed, None, last, 1.0)
            for step in ckpts:
                add(method, variant, seed, step, step, step / last)
    return out


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    return load_results(write_set(tmp_path_factory.mktemp("figures")))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def panel(fig, title: str):
    return next(ax for ax in fig.axes if ax.get_title().endswith(title))


def lines(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Labelled lines of ``ax``: label -> (x, y)."""
    return {ln.get_label(): (np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float))
            for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def legend_labels(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def notes(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == "degenerate-note"]


# ------------------------------------------------------------------------------- 1: initial models
def test_start_model_follows_init_and_scale_variant():
    assert start_model(META, TASK, "sft", "default") == ("base", "tiny")
    assert start_model(META, TASK, "sft", "default.big") == ("base", "big")
    assert start_model(META, TASK, "ebft", "default") == ("base", "tiny")
    assert start_model(META, TASK, "ebft", "sft") == ("sft", "default")
    assert start_model(META, TASK, "rlvr", "default") == ("sft", "default")
    assert start_model(META, TASK, "ebft", "sft.big") == ("sft", "default.big")
    warm = {"tasks": {TASK: {**META["tasks"][TASK], "sft_warm_start": "sft-code-qa"}}}
    assert start_model(warm, TASK, "ebft", "sft") == ("base", "sft-code-qa")  # the paper's published SFT model
    assert start_model(None, TASK, "ebft", "sft_x") == ("sft", "default")  # name convention without meta


def test_every_curve_starts_at_its_own_initial_model(frame):
    fig = figures.draw_curves(frame, TASK, META)
    curves = lines(panel(fig, ": ce"))
    by_name = {label.rsplit(" (", 1)[0]: xy for label, xy in curves.items()}  # without the step count
    sft_final = np.mean([ce("sft", "default", s, 1.0) for s in SEEDS])
    sft_big_final = np.mean([ce("sft", "default.big", s, 1.0) for s in SEEDS])
    assert by_name["EBFT (from SFT): sft"][1][0] == pytest.approx(sft_final)  # not the base model's 3.0
    assert by_name["RLVR (from SFT)"][1][0] == pytest.approx(sft_final)
    assert by_name["EBFT (from SFT): sft.big"][1][0] == pytest.approx(sft_big_final)
    assert by_name["EBFT (from base)"][1][0] == pytest.approx(3.0)
    assert by_name["SFT: default.big"][1][0] == pytest.approx(2.5)  # the scale variant's own base model
    assert all(xy[0][0] == 0 for xy in curves.values())


def test_run_figure_starts_at_the_sft_model_of_the_same_seed(frame):
    fig = figures.draw_run(frame, "ebft", "sft", 1, META)
    (x, y), = [xy for label, xy in lines(panel(fig, "ce")).items() if label != "base model"]
    assert y[0] == pytest.approx(ce("sft", "default", 1, 1.0))
    assert list(x) == [0.0, 0.5, 1.0]
    base = [ln for ln in panel(fig, "ce").get_lines() if ln.get_label() == "base model"]
    assert base and base[0].get_ydata()[0] == pytest.approx(3.0)  # the reference line stays the base model


# --------------------------------------------------------------------------- 2: fraction of the run
def test_curves_use_the_fraction_of_the_run_and_name_step_counts(frame):
    fig = figures.draw_curves(frame, TASK, META)
    ax = panel(fig, ": ce")
    assert "fraction of the run" in ax.get_xlabel()
    curves = lines(ax)
    assert list(curves["SFT: default (120 steps)"][0]) == [0.0, 0.5, 1.0]  # checkpoint 60 of 120
    assert list(curves["EBFT (from SFT): sft (6 steps)"][0]) == [0.0, 0.5, 1.0]  # checkpoint 3 of 6
    assert list(curves["RLVR (from SFT) (10 steps)"][0]) == [0.0, 1.0]
    labels = legend_labels(fig)
    assert "SFT: default (120 steps)" in labels and "RLVR (from SFT) (10 steps)" in labels
    assert max(x.max() for x, _ in curves.values()) == 1.0


def test_step_counts_that_differ_across_tasks_name_the_task(frame):
    other = frame.copy()
    other["task"] = "other"
    other.loc[other["train_step"].notna(), "train_step"] *= 2
    both = pd.concat([frame, other], ignore_index=True)
    meta = {"tasks": {TASK: META["tasks"][TASK], "other": META["tasks"][TASK]}}
    labels = legend_labels(figures.draw_curves(both, None, meta))
    assert f"{TASK}: SFT: default (120 steps)" in labels and "other: SFT: default (240 steps)" in labels
    assert "RLVR (from SFT) (10 steps)" not in labels  # the same in both tasks: no prefix needed


# -------------------------------------------------------------------------------- 3: error bars
def test_cfm_by_length_has_standard_error_bars(frame):
    fig = figures.draw_cfm_length(frame, TASK, META)
    ax = fig.axes[0]
    bars = {c.get_label(): c for c in ax.containers if c.has_yerr}
    sft = bars["SFT: default"]
    segments = sft.lines[2][0].get_segments()
    half = sorted((seg[1][1] - seg[0][1]) / 2 for seg in segments)
    assert half == pytest.approx([np.sqrt(2 * 0.01 ** 2) / 2, np.sqrt(2 * 0.03 ** 2) / 2])  # SE of the seed mean
    assert "error bars: ±1 SE" in fig.legends[0].get_title().get_text()


def test_cfm_curve_has_a_standard_error_band(frame):
    fig = figures.draw_curves(frame, TASK, META)
    bands = [c for c in panel(fig, ": cfm").collections if isinstance(c, PolyCollection)]
    assert len(bands) == len(RUNS)
    ys = bands[0].get_paths()[0].vertices[:, 1]
    se = np.sqrt(2 * 0.02 ** 2) / 2
    assert ys.max() - ys.min() > 2 * se - 1e-9
    assert not [c for c in panel(fig, ": ce").collections if isinstance(c, PolyCollection)]  # no SE, no band


def test_validation_ce_bars_show_the_spread_over_seeds(frame):
    fig = figures.draw_ce(frame, META)
    ax = fig.axes[0]
    err = [c for c in ax.containers if getattr(c, "errorbar", None) is not None]
    assert err, "no error bars with two seeds"
    segments = err[0].errorbar.lines[2][0].get_segments()
    lengths = {round(seg[1][1] - seg[0][1], 6) for seg in segments if len(seg) == 2}
    sft = [ce("sft", "default", s, 1.0) for s in SEEDS]
    assert round(2 * np.std(sft, ddof=1), 6) in lengths
    one_seed = frame[frame["seed"] == 0]
    ax1 = figures.draw_ce(one_seed, META).axes[0]
    assert not [c for c in ax1.containers if getattr(c, "errorbar", None) is not None]


# ------------------------------------------------------------------------------------- 4: legends
@pytest.mark.parametrize("draw", [
    lambda f: figures.draw_ce(f, META),
    lambda f: figures.draw_curves(f, TASK, META),
    lambda f: figures.draw_cfm_length(f, TASK, META),
    lambda f: figures.draw_accuracy_ce(f, "eval/ce_answer", None, TASK, META),
    lambda f: figures.draw_ablation(f, META, "eval/humaneval_greedy"),
    lambda f: figures.draw_run(f, "ebft", "sft", 0, META),
], ids=["validation_ce", "training_curves", "cfm_by_length", "accuracy_vs_ce", "ablation", "run"])
def test_legends_do_not_cover_any_axes(frame, draw):
    fig = draw(frame)
    fig.canvas.draw()
    assert fig.legends, "the figure has a legend"
    assert not [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]  # no legend inside a panel
    for legend in fig.legends:
        box = legend.get_window_extent()
        for ax in fig.axes:
            if ax.get_visible():
                assert not box.overlaps(ax.get_window_extent()), (legend, ax.get_title())
        fig_box = fig.bbox
        assert box.x1 <= fig_box.x1 + 1 and box.y0 >= fig_box.y0 - 1  # and it is inside the figure


# ------------------------------------------------------------------------------ 5: all-zero panels
def test_all_zero_panel_says_so_and_svg_carries_the_note(frame, tmp_path):
    fig = figures.draw_curves(frame, TASK, META)
    ax = panel(fig, ": humaneval_greedy")
    assert [t.get_text() for t in ax.texts] == ["all values are 0 (no problem solved)"]
    assert not panel(fig, ": ce").texts
    out = tmp_path / "curves.svg"
    figures.curves_figure(frame, out, TASK, META)
    assert "all values are 0 (no problem solved)" in re.findall(r"<!-- (.*?) -->", out.read_text())
    assert "all values are 0 (no problem solved)" in notes(figures.draw_run(frame, "sft", "default", 0, META))
    acc = figures.draw_accuracy_ce(frame, "eval/humaneval_greedy", None, TASK, META)
    assert notes(acc) == ["all values are 0 (no problem solved)"]


def test_all_nan_panel_says_so(tmp_path):
    frame = load_results(write_set(tmp_path, humaneval=None, cfm_se=False))
    fig = figures.draw_curves(frame, TASK, META)
    assert notes(fig) == ["all values are NaN (metric not finite)"]
    assert figures.degenerate_note([0.0, 0.0], "eval/bleu") == "all values are 0"
    assert figures.degenerate_note([0.0, 0.1], "eval/humaneval_greedy") is None
    assert figures.degenerate_note([], "eval/ce") is None


def test_training_logs_figure_draws_the_logged_rewards(tmp_path):
    """RLVR's reward over training, as its train_log.jsonl has it, is a panel of the training-log figure."""
    from ebft.report.figures import draw_train_logs
    from ebft.report.frames import load_train_logs

    logs = []
    runs = (("rlvr", "rlvr/reward_mean", [0.25, 0.5, 0.75]), ("sft", "train/loss", [3.0, 2.0, 1.5]))
    for method, key, values in runs:
        path = tmp_path / "code_qa" / method / "default" / "seed0" / "train_log.jsonl"
        path.parent.mkdir(parents=True)
        records = [{"event": "start", "step": 0}, *({"step": i + 1, key: v, "train/loss": 1.0 + i}
                                                   for i, v in enumerate(values)), {"event": "end", "step": 3}]
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        logs.append(path)
    frame = load_train_logs(logs)
    fig = draw_train_logs(frame, "code_qa")
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == {"train/loss", "rlvr/reward_mean"}
    (line,) = panels["rlvr/reward_mean"].get_lines()
    assert list(line.get_ydata()) == [0.25, 0.5, 0.75] and list(line.get_xdata()) == pytest.approx([1 / 3, 2 / 3, 1])
    assert "(3 steps)" in line.get_label()


def test_figures_drawn_in_parallel_are_the_files_drawn_one_by_one(frame, tmp_path):
    """write_figures in forked workers writes the same bytes as in one process (SVGs carry no date and fixed
    element ids), and a drawing that fails fails the call."""
    out = {}
    for workers in (1, 2):
        figures.write_figures(frame, tmp_path / f"w{workers}", [TASK], META, {}, workers=workers)
        out[workers] = {p.relative_to(tmp_path / f"w{workers}"): p.read_bytes()
                        for p in sorted((tmp_path / f"w{workers}").rglob("*.svg"))}
    assert len(out[1]) == 6 + 5 + len(RUNS) * len(SEEDS)  # overview, per task, one per run
    assert out[1] == out[2]

    def fail() -> None:
        raise ValueError("drawing 2 failed")

    with pytest.raises(ValueError, match="drawing 2 failed"):
        figures._run_all([lambda: None, fail, lambda: None], workers=2)
