"""E2LM signal quality of one checkpoint series: monotonicity, autocorrelation and their mean.

Formulas follow the competition's scoring notebook (``5_Scoring.ipynb`` in the E2LM starter kit,
functions ``spearmancorrelation``, ``autocorrelation`` and ``signal_quality_score``). The series
is one model's scores on one task in step order, oriented so that "better" is larger (negate
lower-is-better metrics before calling these functions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The notebook averages lags 1 .. n//4 - 1, so a series needs n >= 8 for one lag.
MIN_AUTOCORRELATION_LENGTH = 8


@dataclass(frozen=True)
class SignalQuality:
    """The three E2LM signal-quality numbers of one series; NaN where undefined."""

    monotonicity: float
    autocorrelation: float
    signal_quality: float


def ordinal_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 by a double argsort; equal values are ranked by position (never averaged)."""
    values = np.asarray(values)
    # A stable sort makes "ties broken by position" hold for every n; numpy's default sort does
    # this for the notebook's 16-point series but is not guaranteed to for longer ones.
    return np.argsort(np.argsort(values, kind="stable"), kind="stable")


def monotonicity(scores: np.ndarray | list[float]) -> float:
    """``max(0, rho)`` with rho the Spearman correlation of checkpoint index and score.

    rho = 1 - 6 * sum(d_i^2) / (n (n^2 - 1)) on ordinal ranks (:func:`ordinal_ranks`). Because
    ties keep their order, a constant series has rho = 1. NaN for fewer than 2 points.
    """
    series = _as_series(scores)
    n = len(series)
    if n < 2:
        return math.nan
    rank_difference = np.arange(n) - ordinal_ranks(series)
    rho = 1.0 - 6.0 * float(np.sum(rank_difference**2)) / (n * (n**2 - 1))
    return max(rho, 0.0)


def lag_correlation(scores: np.ndarray | list[float], lag: int) -> float:
    """Pearson correlation of ``s[lag:]`` and ``s[:n-lag]``; NaN if either segment is constant."""
    series = _as_series(scores)
    later, earlier = series[lag:], series[: len(series) - lag]
    if len(later) < 2 or np.ptp(later) == 0 or np.ptp(earlier) == 0:
        return math.nan
    return float(np.corrcoef(later, earlier)[0, 1])


def autocorrelation(scores: np.ndarray | list[float]) -> float:
    """Mean over lag = 1 .. floor(n/4) - 1 of ``|lag_correlation(s, lag)|``.

    NaN when there is no lag (n < 8) or when a lag's correlation is undefined (a constant
    segment), as in the notebook, where ``np.corrcoef`` yields NaN and the mean propagates it.
    """
    series = _as_series(scores)
    lags = range(1, len(series) // 4)
    if not lags:
        return math.nan
    return float(np.mean([abs(lag_correlation(series, lag)) for lag in lags]))


def signal_quality(scores: np.ndarray | list[float]) -> SignalQuality:
    """Monotonicity, autocorrelation and signal quality = their mean, for one series."""
    mono = monotonicity(scores)
    auto = autocorrelation(scores)
    return SignalQuality(monotonicity=mono, autocorrelation=auto, signal_quality=(mono + auto) / 2)


def _as_series(scores: np.ndarray | list[float]) -> np.ndarray:
    series = np.asarray(scores, dtype=np.float64)
    if series.ndim != 1:
        raise ValueError("a score series must be one-dimensional")
    if np.isnan(series).any():
        raise ValueError("a score series contains NaN: drop or fill those checkpoints first")
    return series
