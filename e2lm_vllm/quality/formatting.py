"""Plain-text and markdown tables of a ScoreReport, shared by the score and report commands."""

from __future__ import annotations

import math

import pandas as pd

from e2lm_vllm.quality.api import ScoreReport

# (column in tasks_frame, header, digits)
TASK_COLUMNS = [
    ("task", "task", None),
    ("metric", "metric", None),
    ("score", "score", 3),
    ("signal_quality", "SQ", 3),
    ("monotonicity", "mono", 3),
    ("autocorrelation", "autocorr", 3),
    ("ranking_consistency", "RC", 3),
    ("compliance", "CS", 3),
    ("snr", "SNR", 1),
    ("decision_accuracy", "dec.acc", 2),
    ("total_variation", "TV-I", 3),
]


def format_value(value: object, digits: int | None) -> str:
    """Numbers rounded to ``digits``; NaN as ``n/a``."""
    if digits is None:
        return str(value)
    number = float(value)  # type: ignore[arg-type]
    if math.isnan(number):
        return "n/a"
    if math.isinf(number):
        return "inf"
    return f"{number:.{digits}f}"


# (ModelSignal field, section title) of the per-model table: signal quality, else its defined half.
MODEL_VALUES = [
    ("signal_quality", "Signal quality per model (E2LM: mean of monotonicity and autocorrelation)"),
    ("monotonicity", "Monotonicity per model (Spearman rho of score and checkpoint, floored at 0; signal quality needs 8 checkpoints)"),
]


def task_rows(report: ScoreReport) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of the per-task table, tasks best first.

    A column that is n/a for every task is left out (``coverage.undefined_line`` says why).
    """
    frame = report.tasks_frame()
    columns = [(column, header, digits) for column, header, digits in TASK_COLUMNS if digits is None or frame[column].notna().any()]
    headers = [header for _, header, _ in columns]
    rows = [[format_value(row[column], digits) for column, _, digits in columns] for _, row in frame.iterrows()]
    return headers, rows


def model_value(report: ScoreReport) -> tuple[str, str] | None:
    """(field, title) of the per-model table: the first of MODEL_VALUES some model has; None if none has."""
    frame = report.models_frame()
    return next(((field, title) for field, title in MODEL_VALUES if frame[field].notna().any()), None)


def model_rows(report: ScoreReport, value: str = "signal_quality") -> tuple[list[str], list[list[str]]]:
    """Per-model ``value`` (a ModelSignal field) pivoted to one row per (task, metric), one column per model."""
    frame = report.models_frame()
    order = [(row.task, row.metric) for row in report.tasks]
    pivot = frame.pivot_table(index=["task", "metric"], columns="model", values=value, dropna=False)
    pivot = pivot.reindex(pd.MultiIndex.from_tuples(order, names=["task", "metric"]))
    headers = ["task", "metric", *[str(model) for model in pivot.columns]]
    rows = [[task, metric, *[format_value(value, 3) for value in values]] for (task, metric), values in zip(pivot.index, pivot.to_numpy())]
    return headers, rows


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """Aligned plain-text table: text columns left, numbers right."""
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) if rows else len(headers[i]) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.rjust(width) if num else cell.ljust(width) for cell, width, num in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * width for width in widths]), *(line(row) for row in rows)])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """GitHub markdown table, numeric columns right-aligned."""
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]
    align = ["---:" if num else ":---" for num in numeric]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _is_number(cell: str) -> bool:
    if cell in ("n/a", "inf"):
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True
