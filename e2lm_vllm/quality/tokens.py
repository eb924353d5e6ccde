"""The E2LM token axis: training iteration -> tokens seen, and the organisers' checkpoint filters.

The organisers' models were trained with Megatron-style batch-size ramp-up
(``--global-batch-size 1024 --seq-length 4096 --rampup-batch-size 256 256 4882812``): the global
batch starts at 256 sequences and grows by 256 after each ``4882812 / 3`` samples until it
reaches 1024. Two conversions are provided:

- ``method="e2lm"`` (default) is the competition's scoring notebook (``convert_iter_to_gt`` in
  ``5_Scoring.ipynb`` of the E2LM starter kit): each ramp phase is treated as a *fractional*
  number of iterations (``phase_samples / phase_batch``). It reproduces the ``gtokens`` column of
  the organisers' ``plot-data-combined-all.json`` to floating-point precision, so it is the axis
  every published E2LM figure and the ``<= 206`` billion-token filter use.
- ``method="megatron"`` replays what Megatron-LM's ``RampupBatchsizeNumMicroBatchesCalculator``
  actually consumes: the batch of an iteration is fixed by the samples consumed *before* it, so
  each phase lasts a whole number of iterations and overshoots its sample budget by up to one
  batch. On the E2LM schedule the two differ by at most 1.5 million tokens, under 0.007 % of
  the tokens at any of the organisers' checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

TokenMethod = Literal["e2lm", "megatron"]


@dataclass(frozen=True)
class BatchSchedule:
    """A Megatron batch schedule: final global batch, sequence length and ramp-up triple."""

    global_batch_size: int = 1024
    seq_length: int = 4096
    rampup_start: int = 256
    rampup_increment: int = 256
    rampup_samples: int = 4_882_812

    @property
    def phase_batch_sizes(self) -> list[int]:
        """Global batch of each phase: the ramp phases, then the final batch."""
        return list(range(self.rampup_start, self.global_batch_size + 1, self.rampup_increment))

    @property
    def samples_per_increment(self) -> float:
        """Samples consumed at each ramp batch size before the next increment (Megatron's formula)."""
        increments = (self.global_batch_size - self.rampup_start) // self.rampup_increment
        return self.rampup_samples / increments if increments else 0.0  # no ramp: the full batch from step 0


E2LM_SCHEDULE = BatchSchedule()

# Organisers' filters in the scoring notebook: checkpoints every 4000 iterations, up to 206 GT.
E2LM_STEP_MULTIPLE = 4000
E2LM_MAX_TOKENS = 206e9


def iteration_to_tokens(
    iterations: np.ndarray | list[int] | pd.Series,
    schedule: BatchSchedule = E2LM_SCHEDULE,
    method: TokenMethod = "e2lm",
) -> np.ndarray:
    """Tokens seen (raw count, not billions) after each training iteration.

    Args:
        iterations: training iterations (steps), any order.
        schedule: the batch schedule; the default is the E2LM models'.
        method: ``"e2lm"`` for the organisers' notebook conversion (matches their ``gtokens``),
            ``"megatron"`` for the samples Megatron-LM really consumed (see the module docstring).
    """
    steps = np.asarray(iterations, dtype=np.float64)
    if np.any(steps < 0):
        raise ValueError("iterations must be non-negative")
    batches = np.asarray(schedule.phase_batch_sizes, dtype=np.float64)
    phase_iterations = _phase_iterations(schedule, method)
    tokens = np.zeros_like(steps)
    remaining = steps.copy()
    for batch, length in zip(batches, phase_iterations):
        taken = np.minimum(remaining, length)
        tokens += taken * batch * schedule.seq_length
        remaining -= taken
    return tokens


def _phase_iterations(schedule: BatchSchedule, method: TokenMethod) -> list[float]:
    """Iterations spent at each ramp batch size; the last (full-batch) phase never ends."""
    per_increment = schedule.samples_per_increment
    ramp_batches = schedule.phase_batch_sizes[:-1]
    if method == "e2lm":
        lengths = [per_increment / batch for batch in ramp_batches]
    elif method == "megatron":
        lengths, consumed = [], 0
        for index, batch in enumerate(ramp_batches):
            # Megatron picks the batch from int(consumed / per_increment): phase `index` lasts while
            # consumed < (index + 1) * per_increment, a whole number of iterations.
            count = max(0, math.ceil(((index + 1) * per_increment - consumed) / batch))
            lengths.append(float(count))
            consumed += count * batch
    else:
        raise ValueError(f"unknown token method {method!r}: use 'e2lm' or 'megatron'")
    return lengths + [math.inf]


def e2lm_checkpoint_filter(
    table: pd.DataFrame,
    step_multiple: int = E2LM_STEP_MULTIPLE,
    max_tokens: float = E2LM_MAX_TOKENS,
) -> pd.DataFrame:
    """Keep the rows the organisers' notebook scores: ``step % 4000 == 0`` and ``tokens <= 206e9``.

    Rows without a token count get one from :func:`iteration_to_tokens` for the token test.
    """
    tokens = table["tokens"] if "tokens" in table else pd.Series(np.nan, index=table.index)
    tokens = tokens.where(tokens.notna(), pd.Series(iteration_to_tokens(table["step"]), index=table.index))
    keep = (table["step"] % step_multiple == 0) & (tokens <= max_tokens)
    return table.loc[keep].reset_index(drop=True)
