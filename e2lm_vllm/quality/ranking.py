"""Does a task order the models early as it does late? Ranking consistency, compliance, decision accuracy.

Inputs are score matrices: a DataFrame with one row per step (ascending) and one column per
model, oriented so that larger is better. The official E2LM ranking-consistency and compliance
formulas are not public; the definitions here are this project's (see docs/scoring.md).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import kendalltau


def decision_accuracy(early_scores: np.ndarray, target_scores: np.ndarray) -> float:
    """Share of model pairs ordered by ``early_scores`` as by ``target_scores``.

    allenai/signal-and-noise ``decision_acc_fast``: for each pair i < j, agreement of
    ``early_i > early_j`` with ``target_i > target_j`` (a pair tied on both sides agrees).
    NaN for fewer than two models.
    """
    early = np.asarray(early_scores, dtype=np.float64)
    target = np.asarray(target_scores, dtype=np.float64)
    if early.shape != target.shape:
        raise ValueError("early and target scores must cover the same models")
    if len(early) < 2:
        return math.nan
    early_wins = early[:, None] > early[None, :]
    target_wins = target[:, None] > target[None, :]
    upper = np.triu(np.ones_like(early_wins, dtype=bool), k=1)
    return float(np.mean((early_wins == target_wins)[upper]))


def ranking_agreement(scores: np.ndarray, target_scores: np.ndarray) -> float:
    """(1 + Kendall tau-b) / 2 of two score vectors over the same models, in [0, 1].

    Without ties this is the share of model pairs ordered alike. All models tied on one side
    carries no order: 0.5 (chance). NaN for fewer than two models.
    """
    if len(scores) < 2:
        return math.nan
    if np.ptp(scores) == 0 or np.ptp(target_scores) == 0:
        return 0.5
    tau = kendalltau(scores, target_scores).statistic
    return (1.0 + float(tau)) / 2.0


def final_scores(matrix: pd.DataFrame) -> pd.Series:
    """Each model's score at its own last checkpoint."""
    return matrix.apply(lambda column: column.dropna().iloc[-1] if column.notna().any() else math.nan)


def early_steps(matrix: pd.DataFrame) -> list[int]:
    """Steps every model has a score at, before the earliest of the models' last checkpoints."""
    complete = matrix.dropna(how="any")
    last_steps = matrix.apply(lambda column: column.last_valid_index())
    return [int(step) for step in complete.index if step < last_steps.min()]


def ranking_consistency(matrix: pd.DataFrame) -> float:
    """Mean over shared early steps of :func:`ranking_agreement` with the models' final ranking.

    Ours (the official formula is not public): 1 means every shared early checkpoint already
    orders the models as their final checkpoints do, 0.5 is chance, 0 the reverse order. NaN for
    fewer than two models or no shared early step.
    """
    if matrix.shape[1] < 2:
        return math.nan
    target = final_scores(matrix).to_numpy()
    steps = early_steps(matrix)
    if not steps:
        return math.nan
    return float(np.mean([ranking_agreement(matrix.loc[step].to_numpy(), target) for step in steps]))


def compliance(matrix: pd.DataFrame, high_model: str, low_model: str) -> float:
    """Share of the pair's shared checkpoints at which ``high_model`` scores above ``low_model``.

    Ours (the official formula is not public): the task should rank a designated stronger model
    (more parameters, or science-trained) above a weaker one, and do so early. 1 = at every
    checkpoint, 0.5 = a coin flip. NaN if either model is absent or they share no checkpoint.
    """
    if high_model not in matrix or low_model not in matrix:
        return math.nan
    pair = matrix[[high_model, low_model]].dropna(how="any")
    if pair.empty:
        return math.nan
    return float(np.mean(pair[high_model].to_numpy() > pair[low_model].to_numpy()))
