"""A results source read once and scored once: what `score`, `report` and the sweep watcher's rebuild share.

Reading the Parquet files and scoring every sample (:func:`~e2lm_vllm.quality.samples.per_sample_scores`,
a Python loop over the rows of ``samples.parquet``) are the slow parts of a report; the derived
metrics and the item learnability both need the per-sample scores. Here each file is read once and
the per-sample scores are computed once, then handed to both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from e2lm_vllm.quality.api import ScoreReport, ScoringConfig, prepare_table, score_table
from e2lm_vllm.quality.failures import read_failures
from e2lm_vllm.quality.samples import learnability_from_scores, per_sample_scores
from e2lm_vllm.quality.table import ResultsTables, load_results


@dataclass(frozen=True)
class ScoredResults:
    """Everything a score table or a report shows about one results source."""

    source: str
    results: ResultsTables
    table: pd.DataFrame  # prepared (prepare_table): what `report` was scored from
    report: ScoreReport
    failures: pd.DataFrame  # failures.parquet of a sweep folder, else empty
    learnability: pd.DataFrame | None  # item_learnability when asked for and samples are present


def score_source(
    path: str | Path,
    config: ScoringConfig = ScoringConfig(),
    tasks: list[str] | None = None,
    metrics: list[str] | None = None,
    learnability: bool = True,
) -> ScoredResults:
    """Read ``path`` (:func:`load_results`) and its failures once, score every sample once, score the table.

    ``learnability=False`` skips the item learnability (the `score` command prints none).
    """
    results = load_results(path)
    has_samples = results.samples is not None and not results.samples.empty
    sample_scores = per_sample_scores(results.samples) if has_samples else None
    table = prepare_table(results, config, tasks, metrics, sample_scores=sample_scores)
    return ScoredResults(
        source=str(path),
        results=results,
        table=table,
        report=score_table(table, config),
        failures=read_failures(path),
        learnability=learnability_from_scores(sample_scores) if learnability and sample_scores is not None else None,
    )
