"""Benchmark-quality metrics: which task, and which metric of it, gives signal early in training (numpy/scipy/pandas; formulas: docs/scoring.md).

Imports no other e2lm_vllm package; the sweep (its report), trackers, curriculum and the demo import it, the engine never does.
"""

from e2lm_vllm.quality.api import (
    E2LM_REFERENCE_PAIR,
    ModelSignal,
    ScoreReport,
    ScoreWeights,
    ScoringConfig,
    TaskScore,
    prepare_table,
    score_path,
    score_results,
    score_table,
)
from e2lm_vllm.quality.noise import (
    SignalNoise,
    checkpoint_noise,
    dispersion,
    relative_dispersion,
    relative_noise,
    signal_and_noise,
    signal_to_noise,
    total_variation,
)
from e2lm_vllm.quality.ranking import compliance, decision_accuracy, ranking_agreement, ranking_consistency
from e2lm_vllm.quality.samples import item_learnability, per_sample_scores, sample_metrics_table
from e2lm_vllm.quality.scales import RATE_METRICS, metric_scale
from e2lm_vllm.quality.scored import ScoredResults, score_source
from e2lm_vllm.quality.signal import SignalQuality, autocorrelation, monotonicity, ordinal_ranks, signal_quality
from e2lm_vllm.quality.table import (
    ResultsTables,
    ScoringInputError,
    is_lower_better,
    load_e2lm_json,
    load_results,
    validate_metrics,
)
from e2lm_vllm.quality.tokens import E2LM_SCHEDULE, BatchSchedule, e2lm_checkpoint_filter, iteration_to_tokens

__all__ = [
    "E2LM_REFERENCE_PAIR",
    "E2LM_SCHEDULE",
    "BatchSchedule",
    "ModelSignal",
    "RATE_METRICS",
    "ResultsTables",
    "ScoreReport",
    "ScoreWeights",
    "ScoredResults",
    "ScoringConfig",
    "ScoringInputError",
    "SignalNoise",
    "SignalQuality",
    "TaskScore",
    "autocorrelation",
    "checkpoint_noise",
    "compliance",
    "decision_accuracy",
    "dispersion",
    "e2lm_checkpoint_filter",
    "is_lower_better",
    "item_learnability",
    "iteration_to_tokens",
    "load_e2lm_json",
    "load_results",
    "metric_scale",
    "monotonicity",
    "ordinal_ranks",
    "per_sample_scores",
    "prepare_table",
    "ranking_agreement",
    "ranking_consistency",
    "relative_dispersion",
    "relative_noise",
    "sample_metrics_table",
    "score_path",
    "score_results",
    "score_source",
    "score_table",
    "signal_and_noise",
    "signal_quality",
    "signal_to_noise",
    "total_variation",
    "validate_metrics",
]
