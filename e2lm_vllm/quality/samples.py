"""Alternative metrics and per-item learnability from per-sample rows (``samples.parquet``).

For a multiple-choice task the per-sample log-probabilities let one score the same task with
several metrics, so a user sees which metric gives the most signal:

- ``sample_acc``: argmax of ``choice_logprobs`` equals ``target``;
- ``sample_acc_norm``: argmax of ``choice_logprobs / choice_bytes`` equals ``target`` (lm-eval's
  acc_norm divides by characters; bytes equal characters for ASCII choices);
- ``gold_margin``: gold log-probability minus the mean log-probability of the other choices;
- ``gold_bits_per_byte``: ``-gold_logprob / ln 2 / gold_bytes`` (lower is better).

Each is averaged over a cell's documents. Rows without a target or with fewer than two choices
(generation tasks) are skipped.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd

from e2lm_vllm.quality.table import ScoringInputError, validate_samples

SAMPLE_METRICS = ("sample_acc", "sample_acc_norm", "gold_margin", "gold_bits_per_byte")
CELL_KEY = ["model", "step", "task"]

LearnabilityAxis = Literal["index", "log_step"]


def per_sample_scores(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per multiple-choice sample with its four derived scores (columns of SAMPLE_METRICS)."""
    samples = validate_samples(samples)
    usable = samples[samples["target"].notna() & samples["choice_logprobs"].map(_has_two_choices)]
    records = []
    for row in usable.itertuples(index=False):
        logprobs = np.asarray(row.choice_logprobs, dtype=np.float64)
        n_bytes = np.asarray(row.choice_bytes, dtype=np.float64)
        gold = int(row.target)
        if not 0 <= gold < len(logprobs) or len(n_bytes) != len(logprobs):
            raise ScoringInputError(
                f"sample model={row.model} step={row.step} task={row.task} doc_id={row.doc_id}: "
                "target out of range or choice_bytes and choice_logprobs of different lengths"
            )
        others = np.delete(logprobs, gold)
        records.append(
            {
                "sample_acc": float(np.argmax(logprobs) == gold),
                "sample_acc_norm": float(np.argmax(logprobs / np.maximum(n_bytes, 1)) == gold),
                "gold_margin": float(logprobs[gold] - others.mean()),
                "gold_bits_per_byte": -logprobs[gold] / math.log(2) / max(n_bytes[gold], 1.0),
            }
        )
    scores = pd.DataFrame.from_records(records, columns=list(SAMPLE_METRICS), index=usable.index)
    keep = [column for column in (*CELL_KEY, "tokens", "doc_id") if column in usable]
    return pd.concat([usable[keep], scores], axis=1).reset_index(drop=True)


def sample_metrics_table(samples: pd.DataFrame) -> pd.DataFrame:
    """The derived metrics in the long results format: one row per cell and metric (mean over docs)."""
    return sample_metrics_from_scores(per_sample_scores(samples))


def sample_metrics_from_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """:func:`sample_metrics_table` from per-sample scores already computed (:func:`per_sample_scores`)."""
    scores = scores.copy()  # the caller may share these scores with item learnability
    if scores.empty:
        return pd.DataFrame(columns=[*CELL_KEY, "tokens", "metric", "filter", "value"])
    if "tokens" not in scores:
        scores["tokens"] = math.nan
    cells = scores.groupby(CELL_KEY, as_index=False).agg(
        tokens=("tokens", "first"), **{metric: (metric, "mean") for metric in SAMPLE_METRICS}
    )
    long = cells.melt(id_vars=[*CELL_KEY, "tokens"], value_vars=list(SAMPLE_METRICS), var_name="metric")
    long["filter"] = "none"
    return long


def item_learnability(samples: pd.DataFrame, axis: LearnabilityAxis = "index") -> pd.DataFrame:
    """OLS slope of each item's gold margin over training, per (model, task, doc_id).

    ``axis="index"`` regresses on the checkpoint index (0, 1, 2, ... in step order of that model),
    ``axis="log_step"`` on ln(step) (steps must be positive). A large positive slope marks an item
    the models learn during the run; ~0 an item that is never learned or already known.
    Returns columns model, task, doc_id, slope, mean_margin, n_checkpoints; the slope is NaN for
    items seen at fewer than two checkpoints.
    """
    return learnability_from_scores(per_sample_scores(samples), axis)


def learnability_from_scores(scores: pd.DataFrame, axis: LearnabilityAxis = "index") -> pd.DataFrame:
    """:func:`item_learnability` from per-sample scores already computed (:func:`per_sample_scores`)."""
    scores = scores[["model", "task", "doc_id", "step", "gold_margin"]].copy()  # columns are added below
    if axis == "index":
        steps = scores.groupby(["model", "task"])["step"].rank(method="dense") - 1
        scores["x"] = steps.astype(np.float64)
    elif axis == "log_step":
        if (scores["step"] <= 0).any():
            raise ScoringInputError("log_step learnability needs positive steps")
        scores["x"] = np.log(scores["step"].astype(np.float64))
    else:
        raise ValueError(f"unknown axis {axis!r}: use 'index' or 'log_step'")
    scores["y"] = scores["gold_margin"]
    key = ["model", "task", "doc_id"]
    grouped = scores.groupby(key)
    scores["dx"] = scores["x"] - grouped["x"].transform("mean")
    scores["dy"] = scores["y"] - grouped["y"].transform("mean")
    scores["sxy"] = scores["dx"] * scores["dy"]
    scores["sxx"] = scores["dx"] ** 2
    items = scores.groupby(key, as_index=False).agg(
        sxy=("sxy", "sum"), sxx=("sxx", "sum"), mean_margin=("y", "mean"), n_checkpoints=("x", "size")
    )
    items["slope"] = np.where(items["sxx"] > 0, items["sxy"] / items["sxx"].where(items["sxx"] > 0), np.nan)
    return items[[*key, "slope", "mean_margin", "n_checkpoints"]]


def _has_two_choices(value: object) -> bool:
    return value is not None and not isinstance(value, float) and len(value) >= 2
