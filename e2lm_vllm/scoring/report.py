"""`e2lm-vllm report RESULTS -o DIR`: plots and a markdown report of a results table.

Writes into DIR: ``report.md`` (tables, figures, notes), ``summary.png`` (global score per task
split into its weighted parts), one ``curves-<metric>.png`` per metric (a panel per task, a line
per model, signal quality in each panel's title), ``scores.json``, and, when per-sample rows are
present, ``item_learnability.csv``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from e2lm_vllm.scoring.api import ScoreReport, ScoringConfig, TaskScore  # noqa: E402
from e2lm_vllm.scoring.backends import backend_line  # noqa: E402
from e2lm_vllm.scoring.cli import add_scoring_arguments, config_from_args  # noqa: E402
from e2lm_vllm.scoring.failures import failure_line, failure_rows  # noqa: E402
from e2lm_vllm.scoring.formatting import format_value, markdown_table, model_rows, task_rows  # noqa: E402
from e2lm_vllm.scoring.scored import ScoredResults, score_source  # noqa: E402
from e2lm_vllm.scoring.table import ScoringInputError  # noqa: E402

PANEL_COLUMNS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`score`'s arguments plus the output folder."""
    add_scoring_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for report.md and the PNGs")


def run(args: argparse.Namespace) -> int:
    """Write the report; exit status 2 with a one-line message on unusable input."""
    try:
        scored = score_source(args.results, config_from_args(args), tasks=args.task, metrics=args.metric)
    except (ScoringInputError, ValueError) as error:
        print(f"e2lm-vllm report: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {write_scored_report(scored, Path(args.output))}")
    return 0


def write_results_report(
    results: str | Path,
    output: Path,
    config: ScoringConfig = ScoringConfig(),
    tasks: list[str] | None = None,
    metrics: list[str] | None = None,
) -> ScoredResults:
    """Score ``results`` and write its report into ``output``, each Parquet file read once.

    One call per rebuild for a caller such as the sweep watcher; the returned scores also give
    the `score` text (``cli.render_text(scored.report, failure_line(scored.failures))``).
    """
    scored = score_source(results, config, tasks, metrics)
    write_scored_report(scored, output)
    return scored


def write_scored_report(scored: ScoredResults, output: Path) -> Path:
    """:func:`write_report` of results already scored by :func:`~e2lm_vllm.scoring.scored.score_source`."""
    return write_report(
        scored.report, scored.table, output, source=scored.source, learnability=scored.learnability, failures=scored.failures
    )


def write_report(
    report: ScoreReport,
    table: pd.DataFrame,
    output: Path,
    source: str,
    learnability: pd.DataFrame | None = None,
    failures: pd.DataFrame | None = None,
) -> Path:
    """Write figures, ``scores.json`` and ``report.md`` into ``output``; returns the report's path.

    ``table`` is the prepared long table the report was scored from (:func:`prepare_table`).
    """
    output.mkdir(parents=True, exist_ok=True)
    summary = plot_summary(report, output / "summary.png")
    curves = []
    for label in sorted({row.metric for row in report.tasks}):
        tasks = [row for row in report.tasks if row.metric == label]
        curves.append((label, plot_curves(tasks, table[table["metric_label"] == label], output / f"curves-{_slug(label)}.png")))
    (output / "scores.json").write_text(json.dumps(report.to_json_dict(), indent=1))
    if learnability is not None:
        learnability.sort_values("slope", ascending=False).to_csv(output / "item_learnability.csv", index=False)
    markdown = render_markdown(report, table, source, summary, curves, learnability, failures)
    path = output / "report.md"
    path.write_text(markdown)
    return path


def plot_summary(report: ScoreReport, path: Path) -> Path:
    """Horizontal stacked bars: each task's global score as its weighted SQ, RC and CS parts."""
    weights = report.config.weights
    rows = list(reversed(report.tasks))  # best at the top
    labels = [_task_title(row) for row in rows]
    parts = [
        (f"{weights.signal_quality:g} x signal quality", weights.signal_quality, [row.signal_quality for row in rows]),
        (f"{weights.ranking_consistency:g} x ranking consistency", weights.ranking_consistency, [row.ranking_consistency for row in rows]),
        (f"{weights.compliance:g} x compliance", weights.compliance, [row.compliance for row in rows]),
    ]
    figure, axes = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.8))
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
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_curves(tasks: list[TaskScore], table: pd.DataFrame, path: Path) -> Path:
    """A panel per task (best first), a line per model: score vs tokens (billions) or step."""
    models = sorted(table["model"].unique())
    colors = {model: plt.get_cmap("tab10")(index % 10) for index, model in enumerate(models)}
    use_tokens = bool(table["tokens"].notna().all())
    rows = math.ceil(len(tasks) / PANEL_COLUMNS)
    columns = min(PANEL_COLUMNS, len(tasks))
    height = 3.3 * rows + 1.2
    figure, axes_grid = plt.subplots(rows, columns, figsize=(4.2 * columns, height), squeeze=False)
    for axes, task in zip(axes_grid.flat, tasks):
        cell = table[table["task"] == task.task]
        for model, series in cell.groupby("model"):
            series = series.sort_values("step")
            x = series["tokens"] / 1e9 if use_tokens else series["step"]
            axes.plot(x, series["value"], marker="o", markersize=2.5, linewidth=1.3, color=colors[model], label=model)
        axes.set_title(
            f"{task.task}\nSQ {format_value(task.signal_quality, 3)}  RC {format_value(task.ranking_consistency, 2)}  "
            f"score {format_value(task.score, 2)}",
            fontsize=9,
        )
        axes.set_xlabel("tokens (billions)" if use_tokens else "training step", fontsize=8)
        axes.set_ylabel(task.metric + (" (lower is better)" if task.lower_is_better else ""), fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(linestyle="--", alpha=0.5)
    for axes in list(axes_grid.flat)[len(tasks) :]:
        axes.set_visible(False)
    handles = [plt.Line2D([], [], color=colors[model], linewidth=2) for model in models]
    figure.legend(handles, models, loc="lower center", ncol=min(len(models), 6), fontsize=9, frameon=False)
    figure.suptitle(f"Score per checkpoint, metric '{tasks[0].metric}' (SQ: E2LM signal quality, mean over models)", fontsize=11)
    # Leave room for the legend below the panels and the title above them.
    figure.tight_layout(rect=(0, 0.6 / height, 1, 1 - 0.5 / height))
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def render_markdown(
    report: ScoreReport,
    table: pd.DataFrame,
    source: str,
    summary: Path,
    curves: list[tuple[str, Path]],
    learnability: pd.DataFrame | None,
    failures: pd.DataFrame | None = None,
) -> str:
    """The text of report.md."""
    weights = report.config.weights
    pair = " above ".join(report.reference_pair) if report.reference_pair else "none given"
    best = report.tasks[0]
    backends = backend_line(report.backends)
    lines = [
        "# Benchmark quality report",
        "",
        f"Input: `{source}`: {table['model'].nunique()} models, {table['step'].nunique()} distinct steps, "
        f"{len(report.tasks)} task/metric pairs."
        + (" Organisers' checkpoint filter applied (step % 4000 == 0, <= 206B tokens)." if report.config.e2lm_filter else ""),
        "",
        *([f"> **Warning: {backends}**", ""] if backends else []),
        "## How to read this",
        "",
        "Each task (and metric of it) is scored on how well it tells checkpoints and models apart early in training:",
        "",
        "- **SQ** (signal quality, E2LM): mean of *monotonicity* (does the score rise with training; Spearman rho, "
        "floored at 0) and *autocorrelation* (is the curve smooth rather than noise), averaged over models. 1 is best.",
        "- **RC** (ranking consistency, ours): do early checkpoints already order the models as their last checkpoints do; "
        "1 = always, 0.5 = chance.",
        f"- **CS** (compliance, ours): share of checkpoints at which the task ranks {pair}; 1 = always, 0.5 = chance.",
        f"- **score** = {weights.signal_quality:g} SQ + {weights.ranking_consistency:g} RC + {weights.compliance:g} CS "
        "(the E2LM global score's form; n/a when a weighted part is undefined).",
        "- **SNR** (allenai signal-and-noise): spread of the models' final scores over checkpoint-to-checkpoint noise; "
        "higher is better. **dec.acc**: share of model pairs already ordered as at the end at the first shared checkpoint. "
        "**TV-I**: normalised total variation minus improvement; lower is smoother.",
        "",
        "Exact formulas: `docs/scoring.md` in the e2lm-vllm repository.",
        "",
        f"**Best task: {_task_title(best)}**, score {format_value(best.score, 3)}, "
        f"signal quality {format_value(best.signal_quality, 3)}.",
        "",
        f"![Global score per task]({summary.name})",
        "",
        "## Scores per task, best first",
        "",
        markdown_table(*task_rows(report)),
        "",
        *([failure_line(failures), ""] if failures is not None and not failures.empty else []),
        "## Signal quality per model",
        "",
        markdown_table(*model_rows(report)),
        "",
        "## Curves",
        "",
    ]
    for label, path in curves:
        lines += [f"### Metric `{label}`", "", f"![Score per checkpoint, metric {label}]({path.name})", ""]
    if learnability is not None:
        top = learnability.dropna(subset=["slope"]).sort_values("slope", ascending=False).head(10)
        lines += [
            "## Most learnable items",
            "",
            "Slope of the gold answer's log-likelihood margin per checkpoint (all items: `item_learnability.csv`).",
            "",
            markdown_table(
                ["model", "task", "doc_id", "slope", "mean margin", "checkpoints"],
                [
                    [str(r.model), str(r.task), str(r.doc_id), format_value(r.slope, 3), format_value(r.mean_margin, 3), str(r.n_checkpoints)]
                    for r in top.itertuples()
                ],
            ),
            "",
        ]
    if failures is not None and not failures.empty:
        lines += [
            "## Failures",
            "",
            "Cells the sweep could not evaluate; they are missing from every score above. `non_finite`: the "
            "checkpoint's weights or scores hold NaN or inf (a diverged checkpoint, not retried).",
            "",
            markdown_table(*failure_rows(failures)),
            "",
        ]
    notes = report.notes + sorted({f"{row.task}/{row.metric}: {note}" for row in report.tasks for note in row.notes})
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    return "\n".join(lines)


def _task_title(row: TaskScore) -> str:
    # The organisers' JSON names no metric ("score"): the task name alone is clearer there.
    return row.task if row.metric == "score" else f"{row.task} ({row.metric})"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
