"""Typed top-level scoring: results table in, per-model and per-task benchmark-quality scores out.

    >>> from e2lm_vllm.quality import ScoringConfig, score_path
    >>> report = score_path("plot-data-combined-all.json", ScoringConfig(e2lm_filter=True))
    >>> report.tasks[0].task, report.tasks[0].score

Every formula is defined in docs/scoring.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from e2lm_vllm.quality.backends import backend_counts
from e2lm_vllm.quality.noise import SignalDefinition, signal_and_noise, total_variation
from e2lm_vllm.quality.ranking import compliance, decision_accuracy, early_steps, final_scores, ranking_consistency
from e2lm_vllm.quality.samples import sample_metrics_from_scores, sample_metrics_table
from e2lm_vllm.quality.scales import metric_scale
from e2lm_vllm.quality.signal import MIN_AUTOCORRELATION_LENGTH, signal_quality
from e2lm_vllm.quality.table import (
    NanPolicy,
    ResultsTables,
    ScoringInputError,
    is_lower_better,
    load_results,
    metric_label,
    validate_metrics,
)
from e2lm_vllm.quality.tokens import e2lm_checkpoint_filter, iteration_to_tokens

# On the organisers' models: a benchmark that cannot tell the 3B model from the 0.5B model of the
# same (deep) architecture does not measure what more training compute buys.
E2LM_REFERENCE_PAIR = ("dense-3b-arch1", "dense-500m-arch1")


class ScoreWeights(BaseModel):
    """Weights of the E2LM global score; the competition's are 0.5, 0.1, 0.4."""

    model_config = ConfigDict(frozen=True)

    signal_quality: float = Field(0.5, ge=0)
    ranking_consistency: float = Field(0.1, ge=0)
    compliance: float = Field(0.4, ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> ScoreWeights:
        if self.signal_quality + self.ranking_consistency + self.compliance <= 0:
            raise ValueError("at least one weight must be positive")
        return self

    @classmethod
    def parse(cls, text: str) -> ScoreWeights:
        """``"SQ,RC,CS"``, e.g. ``"0.5,0.1,0.4"``."""
        parts = text.split(",")
        if len(parts) != 3:
            raise ValueError(f"weights must be three numbers SQ,RC,CS, got {text!r}")
        try:
            sq, rc, cs = (float(part) for part in parts)
        except ValueError:
            raise ValueError(f"weights must be three numbers SQ,RC,CS, got {text!r}") from None
        return cls(signal_quality=sq, ranking_consistency=rc, compliance=cs)


class ScoringConfig(BaseModel):
    """Everything a score depends on besides the results themselves."""

    model_config = ConfigDict(frozen=True)

    weights: ScoreWeights = ScoreWeights()
    reference_pair: tuple[str, str] | None = Field(
        None, description="(higher, lower) model for compliance; None: the E2LM pair when both models are present"
    )
    noise_last_n: int = Field(5, ge=2, description="checkpoints at the end of each model's series used for noise")
    early_step: int | None = Field(None, description="step for decision accuracy; None: the first shared step")
    nan_policy: NanPolicy = "error"
    e2lm_filter: bool = Field(False, description="keep only step % 4000 == 0 and tokens <= 206e9, as the organisers")
    e2lm_tokens: bool = Field(False, description="fill missing token counts from steps with the E2LM schedule")

    @field_validator("reference_pair")
    @classmethod
    def _distinct_pair(cls, pair: tuple[str, str] | None) -> tuple[str, str] | None:
        if pair is not None and pair[0] == pair[1]:
            raise ValueError("the reference pair needs two different models")
        return pair


@dataclass(frozen=True)
class ModelSignal:
    """E2LM signal quality of one model's checkpoint series on one task and metric."""

    model: str
    task: str
    metric: str
    n_checkpoints: int
    monotonicity: float
    autocorrelation: float
    signal_quality: float


@dataclass(frozen=True)
class TaskScore:
    """Benchmark-quality scores of one task and metric over all models; NaN where undefined (see ``notes``)."""

    task: str
    metric: str
    lower_is_better: bool
    n_models: int
    n_checkpoints: int
    monotonicity: float
    autocorrelation: float
    signal_quality: float
    ranking_consistency: float
    compliance: float
    signal: float
    noise: float
    snr: float
    signal_definition: SignalDefinition  # "relative" (positive rates) or "absolute": see quality/scales.py
    decision_accuracy: float
    total_variation: float
    score: float
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ScoreReport:
    """All scores of one results table, tasks best first."""

    models: list[ModelSignal]
    tasks: list[TaskScore]
    config: ScoringConfig
    reference_pair: tuple[str, str] | None
    notes: list[str] = field(default_factory=list)
    backends: dict[str, int] = field(default_factory=dict)  # cells per recorded backend (quality/backends.py)

    def models_frame(self) -> pd.DataFrame:
        """Per-model rows as a DataFrame."""
        return pd.DataFrame([asdict(row) for row in self.models])

    def tasks_frame(self) -> pd.DataFrame:
        """Per-task rows as a DataFrame (``notes`` joined with "; ")."""
        rows = [asdict(row) | {"notes": "; ".join(row.notes)} for row in self.tasks]
        return pd.DataFrame(rows)

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``models``, ``tasks``, ``weights``, ``reference_pair``, ``notes``, ``backends``; NaN/inf become null."""
        return _json_ready(
            {
                "models": [asdict(row) for row in self.models],
                "tasks": [asdict(row) for row in self.tasks],
                "weights": self.config.weights.model_dump(),
                "reference_pair": list(self.reference_pair) if self.reference_pair else None,
                "notes": self.notes,
                "backends": self.backends,
            }
        )


def prepare_table(
    results: ResultsTables | pd.DataFrame,
    config: ScoringConfig = ScoringConfig(),
    tasks: list[str] | None = None,
    metrics: list[str] | None = None,
    sample_scores: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Validated long table with the derived sample metrics, filters and selection applied.

    Adds a ``metric_label`` column (``metric`` or ``metric,filter``) and an ``oriented`` column:
    the value, negated for lower-is-better metrics so that larger is always better.
    ``sample_scores``: :func:`~e2lm_vllm.quality.samples.per_sample_scores` of ``results.samples``
    when the caller already has them (they are the slow part); computed here otherwise.
    """
    if isinstance(results, pd.DataFrame):
        results = ResultsTables(metrics=results)
    table = results.metrics
    if sample_scores is not None:
        table = pd.concat([table, sample_metrics_from_scores(sample_scores)], ignore_index=True)
    elif results.samples is not None and not results.samples.empty:
        table = pd.concat([table, sample_metrics_table(results.samples)], ignore_index=True)
    table = validate_metrics(table, config.nan_policy)
    if config.e2lm_tokens:
        table["tokens"] = table["tokens"].fillna(pd.Series(iteration_to_tokens(table["step"]), index=table.index))
    if config.e2lm_filter:
        table = e2lm_checkpoint_filter(table)
        if table.empty:
            raise ScoringInputError("no checkpoint passes the E2LM filter (step % 4000 == 0, <= 206e9 tokens)")
    table["metric_label"] = [metric_label(m, f) for m, f in zip(table["metric"], table["filter"])]
    table = _select(table, "task", tasks)
    table = _select(table, "metric", metrics, also="metric_label")
    table["oriented"] = np.where(table["metric"].map(is_lower_better), -table["value"], table["value"])
    return table.reset_index(drop=True)


def score_results(
    results: ResultsTables | pd.DataFrame,
    config: ScoringConfig = ScoringConfig(),
    tasks: list[str] | None = None,
    metrics: list[str] | None = None,
) -> ScoreReport:
    """Score every (task, metric) of a results table; see docs/scoring.md for each formula.

    Args:
        results: long-format metrics (and optional per-sample rows), e.g. from :func:`load_results`.
        config: weights, reference pair, noise window, NaN policy and E2LM options.
        tasks: restrict to these tasks (unknown names raise :class:`ScoringInputError`).
        metrics: restrict to these metrics, by name (``acc``) or label (``exact_match,strict-match``).
    """
    return score_table(prepare_table(results, config, tasks, metrics), config)


def score_table(table: pd.DataFrame, config: ScoringConfig = ScoringConfig()) -> ScoreReport:
    """Score every (task, metric) of a table already prepared by :func:`prepare_table` with the same ``config``."""
    models_present = set(table["model"])
    pair = config.reference_pair
    notes = []
    if pair is None and set(E2LM_REFERENCE_PAIR) <= models_present:
        pair = E2LM_REFERENCE_PAIR
    if pair is None:
        notes.append("no reference pair: compliance and the global score are undefined (pass --reference-pair HIGH,LOW)")
    elif not set(pair) <= models_present:
        absent = ", ".join(sorted(set(pair) - models_present))
        notes.append(f"reference pair model(s) {absent} not in the results: compliance is undefined")
    if len(models_present) < 2:
        notes.append("a single model: ranking consistency, compliance, decision accuracy, signal and SNR are undefined")

    model_rows: list[ModelSignal] = []
    task_rows: list[TaskScore] = []
    for (task, label), cell in table.groupby(["task", "metric_label"], sort=True):
        task_model_rows, task_score = _score_task(str(task), str(label), cell, config, pair, len(models_present))
        model_rows.extend(task_model_rows)
        task_rows.append(task_score)
    # Best first; where the score and signal quality are undefined (short runs), by monotonicity.
    task_rows.sort(
        key=lambda row: (_nan_last(row.score), _nan_last(row.signal_quality), _nan_last(row.monotonicity), row.task, row.metric)
    )
    return ScoreReport(
        models=model_rows, tasks=task_rows, config=config, reference_pair=pair, notes=notes, backends=backend_counts(table)
    )


def score_path(
    path: str | Path,
    config: ScoringConfig = ScoringConfig(),
    tasks: list[str] | None = None,
    metrics: list[str] | None = None,
) -> ScoreReport:
    """:func:`load_results` then :func:`score_results`."""
    return score_results(load_results(path), config, tasks, metrics)


def _score_task(
    task: str, label: str, cell: pd.DataFrame, config: ScoringConfig, pair: tuple[str, str] | None, n_models_present: int
) -> tuple[list[ModelSignal], TaskScore]:
    oriented = cell.pivot(index="step", columns="model", values="oriented").sort_index()
    raw = cell.pivot(index="step", columns="model", values="value").sort_index()
    notes: list[str] = []

    model_rows = []
    for model in oriented.columns:
        series = oriented[model].dropna().to_numpy()
        quality = signal_quality(series)
        model_rows.append(
            ModelSignal(model, task, label, len(series), quality.monotonicity, quality.autocorrelation, quality.signal_quality)
        )
    shortest = min(row.n_checkpoints for row in model_rows)
    if shortest < MIN_AUTOCORRELATION_LENGTH:
        notes.append(f"a model has {shortest} checkpoints (< 8): its autocorrelation and signal quality are undefined")

    n_models = oriented.shape[1]
    rc = ranking_consistency(oriented)
    if n_models >= 2 and math.isnan(rc):
        notes.append("no step shared by all models before their last checkpoints: ranking consistency undefined")
    cs = compliance(oriented, *pair) if pair else math.nan

    metric = str(cell["metric"].iloc[0])
    last = [raw[model].dropna().to_numpy()[-config.noise_last_n :] for model in raw]
    spread = signal_and_noise(final_scores(raw).to_numpy(), last, metric_scale(metric))
    if spread.reason and n_models_present >= 2:  # one model in all: the report's note says it once
        notes.append(spread.reason)

    da = _decision_accuracy(oriented, config.early_step, notes)
    # A single checkpoint has no variation to measure (total_variation would call it 0, "smooth").
    series = [oriented[model].dropna().to_numpy() for model in oriented]
    tv = _mean_defined([total_variation(values) for values in series if len(values) >= 2])

    sq = _mean_defined([row.signal_quality for row in model_rows])
    score = _weighted_score(config.weights, sq, rc, cs)
    return model_rows, TaskScore(
        task=task,
        metric=label,
        lower_is_better=is_lower_better(metric),
        n_models=n_models,
        n_checkpoints=int(oriented.shape[0]),
        monotonicity=_mean_defined([row.monotonicity for row in model_rows]),
        autocorrelation=_mean_defined([row.autocorrelation for row in model_rows]),
        signal_quality=sq,
        ranking_consistency=rc,
        compliance=cs,
        signal=spread.signal,
        noise=spread.noise,
        snr=spread.snr,
        signal_definition=spread.definition,
        decision_accuracy=da,
        total_variation=tv,
        score=score,
        notes=notes,
    )


def _decision_accuracy(oriented: pd.DataFrame, early_step: int | None, notes: list[str]) -> float:
    steps = early_steps(oriented)
    if oriented.shape[1] < 2 or not steps:
        return math.nan
    if early_step is None:
        early_step = steps[0]
    elif early_step not in steps:
        notes.append(f"step {early_step} is not an early step shared by all models: decision accuracy undefined")
        return math.nan
    return decision_accuracy(oriented.loc[early_step].to_numpy(), final_scores(oriented).to_numpy())


def _weighted_score(weights: ScoreWeights, sq: float, rc: float, cs: float) -> float:
    """The weighted sum; undefined if a component with a positive weight is undefined."""
    total = 0.0
    for weight, value in ((weights.signal_quality, sq), (weights.ranking_consistency, rc), (weights.compliance, cs)):
        if weight == 0:
            continue
        if math.isnan(value):
            return math.nan
        total += weight * value
    return total


def _mean_defined(values: list[float]) -> float:
    """Mean of the non-NaN values; NaN if there are none."""
    defined = [value for value in values if not math.isnan(value)]
    return float(np.mean(defined)) if defined else math.nan


def _select(table: pd.DataFrame, column: str, wanted: list[str] | None, also: str | None = None) -> pd.DataFrame:
    if not wanted:
        return table
    known = set(table[column]) | (set(table[also]) if also else set())
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ScoringInputError(f"unknown {column} {', '.join(unknown)}; available: {', '.join(sorted(known))}")
    keep = table[column].isin(wanted)
    if also:
        keep |= table[also].isin(wanted)
    return table.loc[keep]


def _nan_last(value: float) -> float:
    """Sort key: descending values, NaN after every number."""
    return math.inf if math.isnan(value) else -value


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
