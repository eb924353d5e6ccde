"""What the results define, and what more data would define the rest: one line for tables, charts and reports.

A sweep of one model with three checkpoints (the demo's) leaves signal quality, ranking consistency,
compliance, decision accuracy, SNR and the global score undefined for every task. Tables and charts
then leave those out (a column or bar that is n/a everywhere says nothing) and show this line
instead, so the reader knows what is missing and what would supply it.
"""

from __future__ import annotations

import math

from e2lm_vllm.quality.api import ScoreReport
from e2lm_vllm.quality.noise import MIN_NOISE_CHECKPOINTS, MIN_SIGNAL_MODELS
from e2lm_vllm.quality.signal import MIN_AUTOCORRELATION_LENGTH

# TaskScore attribute -> name in the line, in the order the line lists them.
QUANTITY_NAMES = {
    "signal_quality": "signal quality",
    "monotonicity": "monotonicity",
    "ranking_consistency": "ranking consistency",
    "decision_accuracy": "decision accuracy",
    "compliance": "compliance",
    "snr": "SNR",
    "total_variation": "total variation",
}


def defined_anywhere(report: ScoreReport, attribute: str) -> bool:
    """True when at least one task has a number (finite or inf) for ``attribute``."""
    return any(not math.isnan(getattr(task, attribute)) for task in report.tasks)


def undefined_line(report: ScoreReport) -> str | None:
    """``Not defined by these results: signal quality needs >= 8 checkpoints per model ...``; None if all are defined."""
    needs: dict[str, list[str]] = {}
    for attribute, name in QUANTITY_NAMES.items():
        if not defined_anywhere(report, attribute):
            needs.setdefault(_requirement(report, attribute), []).append(name)
    if not needs:
        return None
    clauses = [f"{_join(names)} need{'s' if len(names) == 1 else ''} {requirement}" for requirement, names in needs.items()]
    if not defined_anywhere(report, "score"):
        clauses.append("so the global score is undefined")
    return "Not defined by these results: " + "; ".join(clauses) + "."


def _requirement(report: ScoreReport, attribute: str) -> str:
    """What data would define ``attribute``, given what is there."""
    models = max((task.n_models for task in report.tasks), default=0)
    longest = max((row.n_checkpoints for row in report.models), default=0)
    few_models = models < MIN_SIGNAL_MODELS
    if attribute == "signal_quality":
        if longest < MIN_AUTOCORRELATION_LENGTH:
            return f">= {MIN_AUTOCORRELATION_LENGTH} checkpoints per model (the longest series here has {longest})"
        return f"a series of >= {MIN_AUTOCORRELATION_LENGTH} checkpoints whose segments are not constant"
    if attribute in ("monotonicity", "total_variation"):
        return ">= 2 checkpoints per model"
    if attribute in ("ranking_consistency", "decision_accuracy"):
        return f">= {MIN_SIGNAL_MODELS} models" if few_models else "a step every model has before its last checkpoint"
    if attribute == "compliance":
        if report.reference_pair is None:
            return (f">= {MIN_SIGNAL_MODELS} models and " if few_models else "") + "a reference pair (--reference-pair HIGH,LOW)"
        return f"the reference pair {' and '.join(report.reference_pair)} at a shared checkpoint"
    if attribute == "snr":
        if few_models:
            return f">= {MIN_SIGNAL_MODELS} models"
        if longest < MIN_NOISE_CHECKPOINTS:
            return f">= {MIN_NOISE_CHECKPOINTS} checkpoints per model"
        return "final scores and last checkpoints of non-zero mean"
    raise ValueError(f"unknown quantity {attribute!r}; valid: {', '.join(QUANTITY_NAMES)}")


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
