"""What the lm-eval model needs of an engine: the `ScoringEngine` protocol, its counters and its error.

`e2lm_vllm.lm.E2LMVLLM` talks to its engine only through this protocol; `e2lm_vllm.engine.VLLMEngine`
implements it on vLLM. Another engine (SGLang, a later vLLM) implements the same methods: token ids
in, numbers out, with a prefix cache of `block_size`-token blocks that the planner plans for. Its
scoring primitives (`e2lm_vllm.planner.EngineSteps`) are what `planner.execute_plan` drives, and
that function repairs the rows a prefix cache hides, so an engine need not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from e2lm_vllm.checkpoint import NonFiniteError

if TYPE_CHECKING:
    from e2lm_vllm.planner import ScoreResult, ScoringPlan


class NonFiniteScoreError(NonFiniteError):
    """A log-probability came out NaN or inf: the checkpoint is diverged, its scores are not numbers.

    Raised by every scoring path (decode-step and prompt logprobs, so rolling too) and by greedy
    generation; the message names the request (prompt length and first tokens).
    """


def describe_prompt(tokens: Sequence[int], shown: int = 8) -> str:
    """``a prompt of 1234 tokens [1, 2, 3, ...]``: enough to find the request again."""
    head = ", ".join(str(token) for token in tokens[:shown])
    return f"a prompt of {len(tokens)} tokens [{head}{', ...' if len(tokens) > shown else ''}]"


@dataclass
class EngineStats:
    """What the engine did, read from its own counters and from the planner's repairs."""

    prompt_tokens: int = 0  # tokens of all prompts submitted to the engine
    computed_prefill_tokens: int = 0  # prefill tokens actually computed (not read from the cache)
    cached_prefill_tokens: int = 0
    requests: int = 0
    # continuation rows the cache hid (`planner.repair_hidden_rows`): read from a sibling, or decoded
    borrowed_rows: int = 0
    decoded_rows: int = 0


@runtime_checkable
class ScoringEngine(Protocol):
    """An engine that `E2LMVLLM` scores and generates on."""

    block_size: int  # prefix-cache block, in tokens: the planner primes whole blocks only
    max_model_len: int  # the longest prompt plus generation it takes
    stats: EngineStats

    def run_plan(self, plan: ScoringPlan, progress: Callable[[int], None] | None = None) -> list[ScoreResult]:
        """One result per planned request, in request order (`progress` gets the requests done per wave)."""
        ...

    def run_plans(self, plans: Sequence[ScoringPlan], progress: Callable[[int], None] | None = None) -> list[list[ScoreResult]]:
        """`run_plan` of each plan, in order; several engines may run them at once (`data_parallel`)."""
        ...

    def generate_greedy(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_tokens: int,
        stop_token_ids: Sequence[int],
        options: dict[str, Any] | None = None,
    ) -> list[list[int]]:
        """Greedy continuations, stopped at `stop_token_ids` or after `max_tokens`; `options` are other
        sampling parameters that apply to greedy decoding (repetition penalty, ...)."""
        ...

    def generate_sampled(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_tokens: int,
        stop_token_ids: Sequence[int],
        seeds: Sequence[int],
        options: dict[str, Any],
    ) -> list[list[int]]:
        """Sampled continuations, one seed per prompt (reruns repeat); `options` are sampling parameters."""
        ...

    def swap_weights(self, model_path: str) -> list[str]:
        """Load another checkpoint of the same architecture in place; returns the modules refreshed beyond the reload."""
        ...

    def shutdown(self) -> None:
        """Free the engine's memory."""
        ...
