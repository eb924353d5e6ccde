"""What the lm-eval model needs of an engine: the `ScoringEngine` protocol (its counters and its error
are in `e2lm_vllm.engine.types`).

`e2lm_vllm.lm.E2LMVLLM` talks to its engine only through this protocol;
`e2lm_vllm.engine.vllm_engine.VLLMEngine` implements it on vLLM. Another engine (SGLang, a later
vLLM) implements the same methods: token ids in, numbers out, with a prefix cache of
`block_size`-token blocks that the planner plans for. Its scoring primitives
(`e2lm_vllm.engine.planner.EngineSteps`) are what `planner.execute_plan` drives, and that function
repairs the rows a prefix cache hides, so an engine need not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from e2lm_vllm.engine.types import EngineStats, ScoreResult, ScoringPlan


@runtime_checkable
class ScoringEngine(Protocol):
    """An engine that `E2LMVLLM` scores and generates on."""

    block_size: int  # prefix-cache block, in tokens: the planner primes whole blocks only
    max_model_len: int  # the longest prompt plus generation it takes
    dtype: str  # the dtype the weights run in, `auto` resolved: "float32", "bfloat16", ...
    stats: EngineStats
    llm_kwargs: dict[str, Any]  # what the engine was built from (`vllm.LLM`'s kwargs; `model`: the current weights)

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

    def reset_prefix_cache(self) -> bool:
        """Drop every cached prefix (a timing must not read what earlier requests cached); False if refused."""
        ...

    def counter_totals(self) -> dict[str, float]:
        """The engine's own counters by name, summed over its engines (vLLM's metrics; a histogram by its sum)."""
        ...

    def shutdown(self) -> None:
        """Free the engine's memory."""
        ...
