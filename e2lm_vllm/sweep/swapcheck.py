"""Is a weight swap exact on this machine? A swapped engine's probe scores against a fresh engine's.

On CPU, a swap reproduced a fresh engine; the one defect it had, a stale tied `lm_head`, put it
several nats off (docs/measurements.md#weight-swaps). So the check is strict: it
is not a tolerance for kernel noise (the same engine, the same batch, the same kernels are
deterministic) but a guard for derived state a swap forgot, which nothing here has measured on a
GPU. Each sweep worker runs it on its first swap and keeps fresh engines if it fails.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

# Above float32 round-off of a summed logprob, far below any stale-weight error (docs/measurements.md#weight-swaps).
SWAP_TOLERANCE = 1e-6

# Short texts of different kinds; each gives a multi-token continuation (prompt-logprob path)
# and a one-token continuation (decode-step path), the two ways the engine scores.
PROBE_TEXTS = (
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Question: What do plants need to make food?\nAnswer: sunlight, water and carbon dioxide",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "In 1969, two astronauts walked on the Moon while a third stayed in orbit.",
)


@dataclass(frozen=True)
class SwapCheck:
    """The result of comparing a swapped engine with a fresh one on the same checkpoint, or why there
    was none (`skipped`: the neighbouring checkpoint could not serve as reference): not passed either way."""

    checkpoint: str
    probes: int
    max_difference: float | None
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return self.skipped is None and self.max_difference is not None and self.max_difference <= SWAP_TOLERANCE

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "tolerance": SWAP_TOLERANCE}


def probe_requests(lm: Any) -> list[tuple[None, list[int], list[int]]]:
    """(key, context tokens, continuation tokens) requests in lm-eval's token form."""
    requests: list[tuple[None, list[int], list[int]]] = []
    for text in PROBE_TEXTS:
        tokens = [lm.prefix_token_id, *lm.tok_encode(text)]
        half = len(tokens) // 2
        requests.append((None, tokens[:half], tokens[half:]))
        requests.append((None, tokens[:-1], tokens[-1:]))
    return requests


def probe_scores(lm: Any) -> list[float]:
    """Summed logprobs of the probe requests under `lm`'s current weights."""
    return [logprob for logprob, _ in lm._loglikelihood_tokens(probe_requests(lm), disable_tqdm=True)]


def compare(checkpoint: str, swapped: list[float], fresh: list[float]) -> SwapCheck:
    if len(swapped) != len(fresh):
        raise ValueError(f"expected as many swapped as fresh probe scores, got {len(swapped)} and {len(fresh)}")
    difference = max(abs(a - b) if math.isfinite(a - b) else math.inf for a, b in zip(swapped, fresh))
    return SwapCheck(checkpoint=checkpoint, probes=len(fresh), max_difference=difference)
