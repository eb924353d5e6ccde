"""Metric rows of the results tables as named values at a checkpoint's step: what every tracker logs."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

# MLflow accepts only these characters in a metric name; the others take the same names for one scheme.
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")
# Columns that say what a cell computed and read (results/schema.py): a change in any means "log it again"
# (a task edited, a checkpoint rewritten, other settings), even where the step and task are the same.
FINGERPRINT_COLUMNS = ("config_hash", "task_fingerprint", "checkpoint_fingerprint")


def safe_name(name: str) -> str:
    """A name every tracker accepts (MLflow's rule is the strictest)."""
    return _UNSAFE.sub("_", name)


def metric_name(task: str, metric: str, filter_name: str | None) -> str:
    """``eval/<task>/<metric>``, then ``/<filter>`` when the filter is not lm-eval's default ``none``."""
    name = f"eval/{task}/{metric}" + (f"/{filter_name}" if filter_name and filter_name != "none" else "")
    return _UNSAFE.sub("_", name)


def by_tokens(name: str) -> str:
    """The same metric in the tag group whose x axis is tokens seen (``eval_by_tokens/...``)."""
    return "eval_by_tokens/" + name.removeprefix("eval/")


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class CheckpointPoint:
    """Every new value of one checkpoint of one family: logged at ``step`` (and at ``tokens`` where known)."""

    model: str
    checkpoint: str
    step: int
    tokens: float | None
    values: dict[str, float] = field(default_factory=dict)
    cells: tuple[tuple[str, str], ...] = ()  # (ledger key, fingerprint) of the cells these values come from


@dataclass(frozen=True)
class FailureNote:
    """A cell that failed: logged as text at its step, never as a value."""

    model: str
    checkpoint: str
    step: int
    task: str
    kind: str
    error: str
    key: str

    @property
    def text(self) -> str:
        return f"{self.task} failed at step {self.step} ({self.checkpoint}) [{self.kind}]: {self.error.strip()}"


def cell_key(checkpoint: str, task: str) -> str:
    return f"{checkpoint}|{task}"


def fingerprint(rows: pd.DataFrame) -> str:
    parts = []
    for column in FINGERPRINT_COLUMNS:
        if column in rows.columns:
            parts.append(",".join(sorted({str(value) for value in rows[column].dropna()})))
    return "|".join(parts)


def checkpoint_points(metrics: pd.DataFrame, logged: dict[str, str]) -> list[CheckpointPoint]:
    """The values of cells not in ``logged`` (cell key -> fingerprint) or logged with another fingerprint, by step."""
    points = []
    if metrics.empty:
        return points
    for (model, checkpoint), rows in metrics.groupby(["model", "checkpoint"], sort=False):
        values: dict[str, float] = {}
        cells = []
        for task, task_rows in rows.groupby("task", sort=True):
            key, print_ = cell_key(str(checkpoint), str(task)), fingerprint(task_rows)
            if logged.get(key) == print_:
                continue
            cells.append((key, print_))
            for row in task_rows.itertuples(index=False):
                name = metric_name(str(task), str(row.metric), getattr(row, "filter", None))
                if (value := _number(row.value)) is not None:  # NaN is no measurement: nothing, never a 0
                    values[name] = value
                if (stderr := _number(getattr(row, "stderr", None))) is not None:
                    values[name + "_stderr"] = stderr
        if cells:
            first = rows.iloc[0]
            tokens = _number(first.get("tokens"))
            points.append(CheckpointPoint(str(model), str(checkpoint), int(first["step"]), tokens, values, tuple(cells)))
    return sorted(points, key=lambda point: (point.model, point.step, point.checkpoint))


def failure_notes(failures: pd.DataFrame, logged: set[str]) -> list[FailureNote]:
    notes = []
    for row in failures.itertuples(index=False):
        key = f"{row.checkpoint}|{row.task}|{getattr(row, 'config_hash', '')}"
        if key not in logged:
            kind = getattr(row, "kind", None) or "error"
            notes.append(FailureNote(str(row.model), str(row.checkpoint), int(row.step), str(row.task), str(kind), str(row.error), key))
    return sorted(notes, key=lambda note: (note.model, note.step, note.task))
