"""Signal, noise, signal-to-noise ratio and total variation (allenai/signal-and-noise).

Heineman et al., "Signal and Noise: A Framework for Reducing Uncertainty in Language Model
Evaluation" (2025); code at github.com/allenai/signal-and-noise, ``snr/metrics.py``
(``signal_to_noise_ratio``) and ``snr/stats.py`` (``calc_total_variation``). Two definitions,
chosen per metric by :func:`e2lm_vllm.quality.scales.metric_scale`:

- positive rates (``relative``, the paper's): signal = max_{j,k} |m_j - m_k| / mean(m) over the
  models' final scores m; noise = std(s) / mean(s) over the last n checkpoints s of one model
  (population std), averaged over models; SNR = signal / noise;
- every other metric (``absolute``): signal = max_{j,k} |m_j - m_k| and noise = std(s), both in
  the metric's units, SNR = signal / noise. No mean is divided by, so a margin whose mean is near
  or below 0 gets a finite SNR of the right sign. In allenai's own ``compute_snr_small_scale`` both
  means are taken over the same scores and cancel, so their SNR is a ratio of spreads as well.

Noise needs at least two checkpoints per model (one checkpoint has no checkpoint-to-checkpoint
jitter: its std of 0 would make every SNR infinite); signal needs at least two models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from e2lm_vllm.quality.scales import MetricScale

SignalDefinition = Literal["relative", "absolute"]

# Definition of signal and noise for each metric scale (docs/scoring.md, "Signal and noise").
DEFINITION_OF_SCALE: dict[MetricScale, SignalDefinition] = {"rate": "relative", "other": "absolute"}

MIN_NOISE_CHECKPOINTS = 2
MIN_SIGNAL_MODELS = 2


@dataclass(frozen=True)
class SignalNoise:
    """Signal, noise and SNR of one task and metric; NaN where undefined, ``reason`` saying why."""

    definition: SignalDefinition
    signal: float
    noise: float
    snr: float
    reason: str | None = None


def _defined(scores: Sequence[float] | np.ndarray, minimum: int, statistic: Callable[[np.ndarray], Any]) -> float:
    """`statistic` of the scores; NaN for fewer than `minimum` of them."""
    values = np.asarray(scores, dtype=np.float64)
    return float(statistic(values)) if len(values) >= minimum else math.nan


def _over_mean(value: float, scores: Sequence[float] | np.ndarray) -> float:
    """`value` relative to the scores' mean; NaN when it is NaN or the mean is 0."""
    mean = float(np.mean(scores)) if len(scores) else math.nan
    return math.nan if math.isnan(value) or mean == 0 else value / mean


def dispersion(final_scores: Sequence[float] | np.ndarray) -> float:
    """Absolute signal: the largest gap between two models' final scores; NaN for fewer than two models."""
    return _defined(final_scores, MIN_SIGNAL_MODELS, np.ptp)


def relative_dispersion(final_scores: Sequence[float] | np.ndarray) -> float:
    """Relative signal: the largest gap between two models' final scores, over their mean.

    NaN for fewer than two models (nothing to tell apart) or a zero mean.
    """
    return _over_mean(dispersion(final_scores), final_scores)


def checkpoint_noise(last_scores: Sequence[float] | np.ndarray) -> float:
    """Absolute noise: population std of one model's last checkpoints; NaN for fewer than two."""
    return _defined(last_scores, MIN_NOISE_CHECKPOINTS, np.std)


def relative_noise(last_scores: Sequence[float] | np.ndarray) -> float:
    """Relative noise: std / mean of one model's last checkpoints; NaN for fewer than two or a zero mean."""
    return _over_mean(checkpoint_noise(last_scores), last_scores)


def signal_to_noise(signal: float, noise: float) -> float:
    """SNR = signal / noise; infinite when the noise is exactly 0 and the signal is not."""
    if math.isnan(signal) or math.isnan(noise):
        return math.nan
    if noise == 0:
        return math.inf if signal > 0 else math.nan
    return signal / noise


def signal_and_noise(
    final_scores: Sequence[float] | np.ndarray, last_scores: Sequence[Sequence[float] | np.ndarray], scale: MetricScale
) -> SignalNoise:
    """Signal, noise (mean over models) and SNR with the definition of ``scale``.

    Args:
        final_scores: each model's raw score at its last checkpoint.
        last_scores: each model's raw scores at its last n checkpoints, in step order.
        scale: the metric's scale (:func:`~e2lm_vllm.quality.scales.metric_scale`).
    """
    definition = DEFINITION_OF_SCALE[scale]
    spread, jitter = (relative_dispersion, relative_noise) if definition == "relative" else (dispersion, checkpoint_noise)
    signal = spread(final_scores)
    per_model = [jitter(scores) for scores in last_scores]
    defined = [value for value in per_model if not math.isnan(value)]
    noise = float(np.mean(defined)) if defined else math.nan
    reasons = []
    if len(final_scores) < MIN_SIGNAL_MODELS:
        reasons.append(f"signal needs >= {MIN_SIGNAL_MODELS} models")
    elif math.isnan(signal):
        reasons.append("signal undefined: the models' final scores have mean 0")
    if all(len(scores) < MIN_NOISE_CHECKPOINTS for scores in last_scores):
        reasons.append(f"noise needs >= {MIN_NOISE_CHECKPOINTS} checkpoints per model (not enough checkpoints)")
    elif not defined:
        reasons.append("noise undefined: every model's last checkpoints have mean 0")
    reason = "; ".join(reasons) + ": SNR undefined" if reasons else None
    return SignalNoise(definition, signal, noise, signal_to_noise(signal, noise), reason)


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
