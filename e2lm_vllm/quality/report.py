"""`e2lm-vllm report RESULTS -o DIR`: plots and a markdown report of a results table.

Writes into DIR: ``report.md`` (tables, figures, notes), ``summary.png`` (global score per task
split into its weighted parts, or, where no task has one, the quantities that are defined), one
``curves-<metric>.png`` per metric (a panel per task, a line per model, the task's defined scores
in each panel's title), ``scores.json``, and, when per-sample rows are present,
``item_learnability.csv``. Figures: ``quality/plots.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import pandas as pd

from e2lm_vllm.quality.api import ScoreReport, ScoringConfig
from e2lm_vllm.quality.backends import backend_line
from e2lm_vllm.quality.cli import add_scoring_arguments, config_from_args
from e2lm_vllm.quality.coverage import undefined_line
from e2lm_vllm.quality.failures import failure_line, failure_rows
from e2lm_vllm.quality.formatting import format_value, markdown_table, model_rows, model_value, task_rows
from e2lm_vllm.quality.plots import curve_scores, plot_curves, plot_summary, task_title
from e2lm_vllm.quality.scored import ScoredResults, score_source
from e2lm_vllm.quality.table import ScoringInputError


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
    """:func:`write_report` of results already scored by :func:`~e2lm_vllm.quality.scored.score_source`."""
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


def render_markdown(
    report: ScoreReport,
    table: pd.DataFrame,
    source: str,
    summary: Path | None,
    curves: list[tuple[str, Path]],
    learnability: pd.DataFrame | None,
    failures: pd.DataFrame | None = None,
) -> str:
    """The text of report.md."""
    weights = report.config.weights
    pair = " above ".join(report.reference_pair) if report.reference_pair else "a reference pair's stronger model above its weaker (none given)"
    best = report.tasks[0]
    basis = next((name for name, value in _BEST_BY if not math.isnan(getattr(best, value))), None)
    backends = backend_line(report.backends)
    undefined = undefined_line(report)
    per_model = model_value(report)
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
        "- **SNR** (allenai signal-and-noise): spread of the models' final scores over checkpoint-to-checkpoint noise "
        "(both relative to the mean for rates such as acc, absolute for margins and other metrics); higher is better. **dec.acc**: share of model pairs already ordered as at the end at the first shared checkpoint. "
        "**TV-I**: normalised total variation minus improvement; lower is smoother.",
        "",
        "Exact formulas: `docs/scoring.md` in the e2lm-vllm repository.",
        "",
        *([f"**Best task by {basis}: {task_title(best)}**, " + ", ".join(f"{name} {text}" for name, text in curve_scores(best, digits=3)) + ".", ""]
          if basis else []),
        *([f"**{undefined}**", ""] if undefined else []),
        *([f"![{'Global score per task' if _any_score(report) else 'What these results define, per task'}]({summary.name})", ""]
          if summary else []),
        "## Scores per task, best first",
        "",
        markdown_table(*task_rows(report)),
        "",
        *([failure_line(failures), ""] if failures is not None and not failures.empty else []),
        *([f"## {per_model[1]}", "", markdown_table(*model_rows(report, per_model[0])), ""] if per_model else []),
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


def _any_score(report: ScoreReport) -> bool:
    return any(not math.isnan(task.score) for task in report.tasks)


# What "best" rests on, in order: the first of these the top task has.
_BEST_BY = [("score", "score"), ("signal quality", "signal_quality"), ("monotonicity", "monotonicity")]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
