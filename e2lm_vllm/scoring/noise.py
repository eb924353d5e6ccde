"""Signal, noise, signal-to-noise ratio and total variation (allenai/signal-and-noise).

Heineman et al., "Signal and Noise: A Framework for Reducing Uncertainty in Language Model
Evaluation" (2025); code at github.com/allenai/signal-and-noise, ``snr/metrics.py``
(``signal_to_noise_ratio``) and ``snr/stats.py`` (``calc_total_variation``):

- signal = max_{j,k} |m_j - m_k| / mean(m), over the models' final scores m;
- noise = std(s) / mean(s), over the last n checkpoints s of one model (population std);
- SNR = signal / noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def relative_dispersion(final_scores: Sequence[float] | np.ndarray) -> float:
    """Signal: the largest gap between two models' final scores, over their mean.

    NaN for fewer than two models (nothing to tell apart) or a zero mean.
    """
    scores = np.asarray(final_scores, dtype=np.float64)
    if len(scores) < 2:
        return math.nan
    mean = float(np.mean(scores))
    if mean == 0:
        return math.nan
    return float(np.ptp(scores)) / mean


def relative_noise(last_scores: Sequence[float] | np.ndarray) -> float:
    """Noise: std / mean of one model's last checkpoints; NaN for a zero mean or no points."""
    scores = np.asarray(last_scores, dtype=np.float64)
    if len(scores) == 0 or float(np.mean(scores)) == 0:
        return math.nan
    return float(np.std(scores)) / float(np.mean(scores))


def signal_to_noise(signal: float, noise: float) -> float:
    """SNR = signal / noise; infinite when the noise is exactly 0 and the signal is not."""
    if math.isnan(signal) or math.isnan(noise):
        return math.nan
    if noise == 0:
        return math.inf if signal > 0 else math.nan
    return signal / noise


def total_variation(
    scores: Sequence[float] | np.ndarray, normalize: bool = True, subtract_improvement: bool = True
) -> float:
    """Total variation of one series in step order (allenai ``calc_total_variation``).

    TV = mean |s_{i+1} - s_i|; with ``normalize`` divided by (max - min); with
    ``subtract_improvement`` minus (s_last - s_first) / n (the paper's "TV-I": lower is smoother,
    i.e. less step-to-step noise beyond the net improvement). 0 for a constant or empty series.
    """
    series = np.asarray(scores, dtype=np.float64)
    if len(series) < 2:
        return 0.0
    variation = float(np.mean(np.abs(np.diff(series))))
    if variation == 0:
        return 0.0
    if normalize:
        variation /= float(np.ptp(series))
    if subtract_improvement:
        variation -= float(series[-1] - series[0]) / len(series)
    return variation
