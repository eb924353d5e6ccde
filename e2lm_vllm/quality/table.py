"""Load and validate the long-format results a score or report reads.

Accepted inputs: a sweep output folder (``metrics.parquet``, plus ``samples.parquet`` when
present), a ``.parquet`` or ``.csv`` file with the columns ``model, step, task, metric, value``
(optional ``tokens, checkpoint, filter``), or the organisers' ``plot-data-combined-all.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("model", "step", "task", "metric", "value")
SAMPLE_COLUMNS = ("model", "step", "task", "doc_id", "target", "choice_logprobs", "choice_bytes")

# Substrings of metric names that are lower-is-better in lm-evaluation-harness.
LOWER_IS_BETTER_MARKERS = ("perplexity", "bits_per_byte")

NanPolicy = Literal["error", "drop"]


class ScoringInputError(ValueError):
    """The results cannot be scored as given; the message says why in one line."""


@dataclass
class ResultsTables:
    """The long-format metrics of a sweep and, when the sweep saved them, its per-sample rows."""

    metrics: pd.DataFrame
    samples: pd.DataFrame | None = None


def is_lower_better(metric: str) -> bool:
    """True for perplexity- and bits-per-byte-type metrics (perplexity, byte_perplexity, ...)."""
    name = metric.lower()
    return any(marker in name for marker in LOWER_IS_BETTER_MARKERS)


def metric_label(metric: str, filter_name: str) -> str:
    """``metric`` alone for lm-eval's default filter ``none``, else ``metric,filter`` as lm-eval prints it."""
    return metric if filter_name in ("none", "") else f"{metric},{filter_name}"


def load_results(path: str | Path) -> ResultsTables:
    """Read results from a sweep folder, a Parquet or CSV file, or the organisers' E2LM JSON."""
    path = Path(path)
    if not path.exists():
        raise ScoringInputError(f"no such file or folder: {path}")
    samples = None
    if path.is_dir():
        metrics_path = path / "metrics.parquet"
        if not metrics_path.exists():
            raise ScoringInputError(f"{path} is a folder without metrics.parquet")
        metrics = pd.read_parquet(metrics_path)
        if (path / "samples.parquet").exists():
            samples = pd.read_parquet(path / "samples.parquet")
    elif path.suffix == ".parquet":
        metrics = pd.read_parquet(path)
    elif path.suffix == ".csv":
        metrics = pd.read_csv(path)
    elif path.suffix == ".json":
        metrics = load_e2lm_json(path)
    else:
        raise ScoringInputError(f"{path}: expected a folder, .parquet, .csv or .json file")
    return ResultsTables(metrics=metrics, samples=samples)


def load_e2lm_json(path: str | Path) -> pd.DataFrame:
    """The organisers' ``plot-data-combined-all.json`` as long-format rows.

    One row per model x iteration x benchmark with ``metric="score"`` (the file holds each
    benchmark's headline score without naming the metric), ``step`` = iteration and
    ``tokens`` = ``gtokens * 1e9``.
    """
    try:
        data = json.loads(Path(path).read_text())["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ScoringInputError(f"{path}: not an E2LM plot-data JSON with a 'data' object ({error})") from None
    frames = []
    for model, series in data.items():
        iterations = series.get("iteration")
        if not iterations:
            raise ScoringInputError(f"{path}: model {model!r} has no 'iteration' list")
        benchmarks = [key for key, values in series.items() if _is_score_list(key, values, len(iterations))]
        gtokens = series.get("gtokens", [math.nan] * len(iterations))
        for benchmark in benchmarks:
            frames.append(
                pd.DataFrame(
                    {
                        "model": model,
                        "step": iterations,
                        "tokens": np.asarray(gtokens, dtype=np.float64) * 1e9,
                        "task": benchmark,
                        "metric": "score",
                        "value": np.asarray(series[benchmark], dtype=np.float64),
                    }
                )
            )
    if not frames:
        raise ScoringInputError(f"{path}: no benchmark score lists found")
    return pd.concat(frames, ignore_index=True)


def _is_score_list(key: str, values: object, length: int) -> bool:
    if key in ("iteration", "gtokens", "model_type", "experiment") or not isinstance(values, list):
        return False
    return len(values) == length and all(isinstance(value, (int, float)) or value is None for value in values)


def validate_metrics(table: pd.DataFrame, nan_policy: NanPolicy = "error") -> pd.DataFrame:
    """Check and normalise a long-format metrics table.

    Adds missing optional columns (``tokens`` NaN, ``checkpoint`` "", ``filter`` "none"), casts
    types, and applies ``nan_policy`` to NaN values: ``"error"`` refuses them, ``"drop"`` drops
    those rows (the checkpoint then counts as missing for that model and task). Duplicate rows
    for one (model, step, task, metric, filter) are refused: which one to score is ambiguous.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise ScoringInputError(f"results table lacks column(s) {', '.join(missing)}; needs {', '.join(REQUIRED_COLUMNS)}")
    if table.empty:
        raise ScoringInputError("results table is empty")
    table = table.copy()
    if "tokens" not in table:
        table["tokens"] = math.nan
    if "checkpoint" not in table:
        table["checkpoint"] = ""
    if "filter" not in table:
        table["filter"] = "none"
    table["filter"] = table["filter"].fillna("none").astype(str)
    for column in ("model", "task", "metric"):
        if table[column].isna().any():
            raise ScoringInputError(f"column {column!r} has empty values")
        table[column] = table[column].astype(str)
    try:
        table["step"] = pd.to_numeric(table["step"], errors="raise").astype(np.int64)
        table["value"] = pd.to_numeric(table["value"], errors="raise").astype(np.float64)
        table["tokens"] = pd.to_numeric(table["tokens"], errors="raise").astype(np.float64)
    except (ValueError, TypeError) as error:
        raise ScoringInputError(f"non-numeric step, value or tokens: {error}") from None
    not_finite = ~np.isfinite(table["value"])
    if not_finite.any():
        if nan_policy == "error":
            first = table.loc[not_finite].iloc[0]
            raise ScoringInputError(
                f"{int(not_finite.sum())} NaN/inf value(s), first at model={first.model} step={first.step} "
                f"task={first.task} metric={first.metric}; pass --nan-policy drop to treat them as missing checkpoints"
            )
        table = table.loc[~not_finite]
        if table.empty:
            raise ScoringInputError("results table is empty once NaN values are dropped")
    key = ["model", "step", "task", "metric", "filter"]
    duplicated = table.duplicated(key, keep=False)
    if duplicated.any():
        first = table.loc[duplicated].iloc[0]
        raise ScoringInputError(
            f"{int(duplicated.sum())} rows share a (model, step, task, metric, filter), first model={first.model} "
            f"step={first.step} task={first.task} metric={first.metric}: keep one row per cell"
        )
    return table.sort_values(key).reset_index(drop=True)


def validate_samples(samples: pd.DataFrame) -> pd.DataFrame:
    """Check a per-sample table has what the derived metrics need (see SAMPLES_SCHEMA)."""
    missing = [column for column in SAMPLE_COLUMNS if column not in samples.columns]
    if missing:
        raise ScoringInputError(f"samples table lacks column(s) {', '.join(missing)}")
    return samples
