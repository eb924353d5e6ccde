"""Which metrics are positive rates: the one place that decides how signal and noise are measured.

A positive rate is a share of items, bounded in [0, 1] (accuracy, exact match, F1, ...). Its mean
over models sits well away from 0 on any run worth scoring, so allenai/signal-and-noise's relative
definitions (spread / mean, std / mean) are meaningful and comparable across tasks.

Every other metric uses absolute spreads: a log-likelihood margin (``gold_margin``, the E2LM
winning task's ``likelihood``, lm-eval's ``acc_mutual_info``) can have a mean near or below 0,
where dividing by it explodes or flips the sign (finals -0.10 and +0.12 would give a "signal" of
22); perplexity, bits per byte and BLEU are not bounded in [0, 1]. An unknown metric name is not a
rate: the absolute definition is defined for any scale, the relative one only for rates.
"""

from __future__ import annotations

from typing import Literal

MetricScale = Literal["rate", "other"]

# Names as lm-eval reports them (the filter is separate: ``exact_match`` of ``exact_match,strict-match``).
RATE_METRICS = frozenset(
    {
        "acc",
        "acc_norm",
        "exact_match",
        "em",
        "f1",
        "mc1",  # truthfulqa
        "mc2",
        "pass@1",
        "prompt_level_strict_acc",  # ifeval
        "prompt_level_loose_acc",
        "inst_level_strict_acc",
        "inst_level_loose_acc",
        "sample_acc",  # ours, from samples.parquet
        "sample_acc_norm",
        "score",  # the organisers' headline scores in plot-data-combined-all.json, all in [0, 1]
    }
)


def metric_scale(metric: str) -> MetricScale:
    """``"rate"`` for the positive rates of RATE_METRICS, ``"other"`` for every other metric."""
    return "rate" if metric in RATE_METRICS else "other"
