"""The report's figures: the summary chart (``summary.png``) and the curves (``curves-<metric>.png``).

Neither shows a number the results leave undefined. When some task has a global score, the summary
is that score as stacked weighted parts; when none has (one model, or fewer than 8 checkpoints, or
no reference pair), it shows the quantities that are defined (signal quality, ranking consistency,
compliance, monotonicity, SNR, noise, total variation: each where at least one task has it), and a
footnote says what more data would define the rest (:func:`coverage.undefined_line`).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import pandas as pd

# Figures, not pyplot: pyplot's global figure registry is not thread-safe, and the trackers draw their
# plots on their own threads while a watcher draws its report; a `Figure` saves through Agg by itself.
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from e2lm_vllm.quality.api import ScoreReport, TaskScore
from e2lm_vllm.quality.coverage import defined_anywhere, undefined_line
from e2lm_vllm.quality.formatting import format_value

PANEL_COLUMNS = 4
FOOTNOTE_CHARACTERS_PER_INCH = 15  # wrap width of the footnote at fontsize 8


@dataclass(frozen=True)
class Panel:
    """One quantity of the summary chart when no global score is defined."""

    attribute: str  # TaskScore field
    title: str
    digits: int


DEFINED_PANELS = [
    Panel("signal_quality", "signal quality (0-1, higher better)", 3),
    Panel("ranking_consistency", "ranking consistency (0-1, 0.5 chance)", 3),
    Panel("compliance", "compliance (0-1, 0.5 chance)", 3),
    Panel("monotonicity", "monotonicity (0-1, higher: rises\nwith training)", 2),
    Panel("snr", "SNR (higher: models stand\napart from checkpoint noise)", 2),
    Panel("noise", "noise over the last checkpoints\n(relative for rates, else metric units)", 3),
    Panel("total_variation", "TV-I (lower: smoother)", 2),
]


def task_title(row: TaskScore) -> str:
    """A task's label in tables and figures."""
    # The organisers' JSON names no metric ("score"): the task name alone is clearer there.
    return row.task if row.metric == "score" else f"{row.task} ({row.metric})"


def plot_summary(report: ScoreReport, path: Path) -> Path | None:
    """The summary chart (see the module docstring); None, and no file, when the results define nothing to draw."""
    footnote = undefined_line(report)
    if defined_anywhere(report, "score"):
        return _plot_score_parts(report, path, footnote)
    panels = [panel for panel in DEFINED_PANELS if defined_anywhere(report, panel.attribute)]
    if not panels:
        return None
    return _plot_defined(report, panels, path, footnote)


def _plot_score_parts(report: ScoreReport, path: Path, footnote: str | None) -> Path:
    """Horizontal stacked bars: each task's global score as its weighted SQ, RC and CS parts."""
    weights = report.config.weights
    rows = list(reversed(report.tasks))  # best at the top
    labels = [task_title(row) for row in rows]
    parts = [
        (f"{weights.signal_quality:g} x signal quality", weights.signal_quality, [row.signal_quality for row in rows]),
        (f"{weights.ranking_consistency:g} x ranking consistency", weights.ranking_consistency, [row.ranking_consistency for row in rows]),
        (f"{weights.compliance:g} x compliance", weights.compliance, [row.compliance for row in rows]),
    ]
    width = 9
    note = _wrap(footnote, width)
    figure = Figure(figsize=(width, 0.32 * len(rows) + 1.8 + 0.15 * note.count("\n")))
    axes = figure.subplots()
    left = [0.0] * len(rows)
    for (name, weight, values), color in zip(parts, ("#1f77b4", "#ff7f0e", "#2ca02c")):
        widths = [0.0 if math.isnan(value) else weight * value for value in values]
        axes.barh(labels, widths, left=left, color=color, label=name)
        left = [start + width for start, width in zip(left, widths)]
    for index, row in enumerate(rows):
        axes.text(left[index] + 0.01, index, format_value(row.score, 3), va="center", fontsize=8)
    axes.set_xlim(0, max(1.0, max(left) + 0.12))
    axes.set_xlabel("E2LM global score (undefined parts count as 0 in the bar, n/a in the label)")
    axes.set_title("Benchmark quality per task, best first")
    axes.legend(loc="lower right", fontsize=8)
    axes.tick_params(axis="y", labelsize=8)
    axes.grid(axis="x", linestyle="--", alpha=0.5)
    return _save(figure, path, note, dpi=110)


def _plot_defined(report: ScoreReport, panels: list[Panel], path: Path, footnote: str | None) -> Path:
    """A panel per defined quantity, a bar per task (same order in every panel, best first)."""
    rows = list(reversed(report.tasks))  # best at the top
    labels = [task_title(row) for row in rows]
    columns = min(PANEL_COLUMNS, len(panels))
    grid_rows = math.ceil(len(panels) / columns)
    width = 2.0 + 3.0 * columns
    note = _wrap(footnote, width)
    height = grid_rows * (0.28 * len(rows) + 1.3) + 0.9 + 0.15 * note.count("\n")
    figure = Figure(figsize=(width, height))
    axes_grid = figure.subplots(grid_rows, columns, squeeze=False, sharey=True)
    for axes, panel in zip(axes_grid.flat, panels):
        values = [getattr(row, panel.attribute) for row in rows]
        finite = [value for value in values if math.isfinite(value)]
        low, high = min([0.0, *finite]), max([0.0, *finite])
        span = (high - low) or 1.0
        axes.barh(labels, [value if math.isfinite(value) else 0.0 for value in values], color="#1f77b4")
        for index, value in enumerate(values):
            # Undefined for this task only (another task has it): say so where its bar would be.
            label = format_value(value, panel.digits)
            axes.text(max(value, 0.0) if math.isfinite(value) else 0.0, index, " " + label, va="center", fontsize=7,
                      color="black" if math.isfinite(value) else "grey")  # fmt: skip
        axes.set_xlim(low - 0.05 * span, high + 0.35 * span)
        axes.set_title(panel.title, fontsize=9)
        axes.axvline(0, color="black", linewidth=0.6)
        axes.tick_params(labelsize=7)
        axes.grid(axis="x", linestyle="--", alpha=0.5)
    for axes in list(axes_grid.flat)[len(panels) :]:
        axes.set_visible(False)
    figure.suptitle("Benchmark quality per task: what these results define", fontsize=11)
    return _save(figure, path, note, dpi=110)


def plot_curves(tasks: list[TaskScore], table: pd.DataFrame, path: Path) -> Path:
    """A panel per task (best first), a line per model: score vs tokens (billions) or step.

    Each panel's title gives the task's defined scores only (:func:`curve_scores`).
    """
    models = sorted(table["model"].unique())
    colors = {model: matplotlib.colormaps["tab10"](index % 10) for index, model in enumerate(models)}
    use_tokens = bool(table["tokens"].notna().all())
    rows = math.ceil(len(tasks) / PANEL_COLUMNS)
    columns = min(PANEL_COLUMNS, len(tasks))
    height = 3.3 * rows + 1.2
    figure = Figure(figsize=(4.2 * columns, height))
    axes_grid = figure.subplots(rows, columns, squeeze=False)
    shown: set[str] = set()
    for axes, task in zip(axes_grid.flat, tasks):
        cell = table[table["task"] == task.task]
        for model, series in cell.groupby("model"):
            series = series.sort_values("step")
            x = series["tokens"] / 1e9 if use_tokens else series["step"]
            axes.plot(x, series["value"], marker="o", markersize=2.5, linewidth=1.3, color=colors[model], label=model)
        scores = curve_scores(task)
        shown |= {name for name, _ in scores}
        axes.set_title("\n".join([task.task, *(["  ".join(f"{name} {text}" for name, text in scores)] if scores else [])]), fontsize=9)
        axes.set_xlabel("tokens (billions)" if use_tokens else "training step", fontsize=8)
        axes.set_ylabel(task.metric + (" (lower is better)" if task.lower_is_better else ""), fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(linestyle="--", alpha=0.5)
    for axes in list(axes_grid.flat)[len(tasks) :]:
        axes.set_visible(False)
    handles = [Line2D([], [], color=colors[model], linewidth=2) for model in models]
    figure.legend(handles, models, loc="lower center", ncol=min(len(models), 6), fontsize=9, frameon=False)
    legend = "; ".join(text for name, text in CURVE_SCORE_LEGEND.items() if name in shown)
    figure.suptitle(f"Score per checkpoint, metric '{tasks[0].metric}'" + (f" ({legend})" if legend else ""), fontsize=11)
    # Leave room for the legend below the panels and the title above them.
    figure.tight_layout(rect=(0, 0.6 / height, 1, 1 - 0.5 / height))
    figure.savefig(path, dpi=100)
    return path


CURVE_SCORE_LEGEND = {
    "SQ": "SQ: E2LM signal quality, mean over models",
    "mono": "mono: monotonicity, mean over models",
}


def curve_scores(task: TaskScore, digits: int | None = None) -> list[tuple[str, str]]:
    """(name, value) of a curve panel's title: SQ, RC and score where defined, monotonicity where SQ is not.

    ``digits`` overrides the title's rounding (3 for SQ, 2 for the others).
    """
    candidates = [("SQ", task.signal_quality, 3), ("RC", task.ranking_consistency, 2), ("score", task.score, 2)]
    if math.isnan(task.signal_quality):
        candidates.insert(0, ("mono", task.monotonicity, 2))
    return [(name, format_value(value, digits or own)) for name, value, own in candidates if not math.isnan(value)]


def _wrap(footnote: str | None, width_inches: float) -> str:
    return textwrap.fill(footnote, width=int(width_inches * FOOTNOTE_CHARACTERS_PER_INCH)) if footnote else ""


def _save(figure: Figure, path: Path, footnote: str, dpi: int) -> Path:
    """Lay out, with the footnote (if any) in a band below the axes, and save."""
    if footnote:
        height = figure.get_figheight()
        band = (0.25 + 0.15 * (footnote.count("\n") + 1)) / height
        figure.text(0.01, 0.01, footnote, fontsize=8, va="bottom", ha="left", color="#444444")
        figure.tight_layout(rect=(0, band, 1, 1))
    else:
        figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    return path
