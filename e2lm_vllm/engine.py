"""The vLLM engine: the only module that talks to vLLM.

It runs a `ScoringPlan` wave by wave, checks every prompt-logprob row it returns was computed
rather than read from the cache, and generates greedily. Token ids in, numbers out: no text, no I/O.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from e2lm_vllm.planner import (
    NextTokenQuery,
    PrefixPrimer,
    ScoreResult,
    ScoringPlan,
    SequenceQuery,
)

logger = logging.getLogger(__name__)

# vLLM accepts at most this many `logprob_token_ids` per request (vllm.sampling_params).
MAX_TOKEN_IDS_PER_REQUEST = 128


@dataclass
class EngineStats:
    """What the engine did, read from vLLM's own counters and from our checks."""

    prompt_tokens: int = 0  # tokens of all prompts submitted to vLLM
    computed_prefill_tokens: int = 0  # prefill tokens actually computed (not read from the cache)
    cached_prefill_tokens: int = 0
    requests: int = 0
    cache_overreach_reruns: int = 0  # prompts re-run without the cache (see `_score_sequences`)


def vllm_counter_totals(llm: Any) -> dict[str, float]:
    """Totals of vLLM's own metrics by name (a histogram counts by its sum)."""
    totals: dict[str, float] = {}
    for metric in llm.get_metrics():
        value = getattr(metric, "value", None)
        if value is None:
            value = getattr(metric, "sum", None)
        if isinstance(value, (int, float)):
            totals[metric.name] = totals.get(metric.name, 0.0) + value
    return totals


class VLLMEngine:
    """A `vllm.LLM` built from our engine kwargs, with the scoring and generation primitives."""

    def __init__(self, llm_kwargs: dict[str, Any]):
        from vllm import LLM

        self.llm_kwargs = dict(llm_kwargs)
        self.llm = LLM(**self.llm_kwargs)
        self.block_size = int(self.llm.llm_engine.vllm_config.cache_config.block_size)
        self.max_model_len = int(self.llm.llm_engine.vllm_config.model_config.max_model_len)
        self.stats = EngineStats()

    # -- scoring -------------------------------------------------------------------------------

    def run_plan(self, plan: ScoringPlan, progress: Callable[[int], None] | None = None) -> list[ScoreResult]:
        """Execute `plan` and return one result per planned request, in request order."""
        results: list[ScoreResult | None] = [None] * plan.num_requests
        before = vllm_counter_totals(self.llm)
        for wave in plan.waves:
            primers = [query for query in wave if isinstance(query, PrefixPrimer)]
            next_token = [query for query in wave if isinstance(query, NextTokenQuery)]
            sequences = [query for query in wave if isinstance(query, SequenceQuery)]
            if primers:
                self._prefill([primer.tokens for primer in primers])
            if next_token:
                self._score_next_tokens(next_token, results)
            if sequences:
                self._score_sequences(sequences, results)
            if progress is not None:
                progress(sum(len(q.readers) for q in next_token + sequences))
        self._account(before)
        missing = [index for index, result in enumerate(results) if result is None]
        if missing:
            raise RuntimeError(f"plan left {len(missing)} requests unscored, e.g. {missing[:5]}")
        return results  # type: ignore[return-value]

    def _sampling(self, **kwargs: Any) -> Any:
        from vllm import SamplingParams

        return SamplingParams(temperature=0.0, detokenize=False, **kwargs)

    def _generate(self, prompts: Sequence[Sequence[int]], params: Any) -> list[Any]:
        from vllm.inputs import TokensPrompt

        self.stats.requests += len(prompts)
        return self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(prompt)) for prompt in prompts],
            params,
            use_tqdm=False,
        )

    def _prefill(self, prompts: Sequence[Sequence[int]]) -> None:
        self._generate(prompts, self._sampling(max_tokens=1))

    def _score_next_tokens(self, queries: list[NextTokenQuery], results: list[ScoreResult | None]) -> None:
        """One decode step per context; exact logprobs of the asked tokens; greedy = sampled token."""
        prompts, params, chunks = [], [], []
        for query in queries:
            for start in range(0, len(query.token_ids), MAX_TOKEN_IDS_PER_REQUEST):
                token_ids = query.token_ids[start : start + MAX_TOKEN_IDS_PER_REQUEST]
                prompts.append(query.context)
                params.append(self._sampling(max_tokens=1, logprob_token_ids=token_ids))
                chunks.append((query, start, token_ids))
        outputs = self._generate(prompts, params)
        logprob_of: dict[tuple[int, int], tuple[float, bool]] = {}
        for (query, start, token_ids), output in zip(chunks, outputs):
            completion = output.outputs[0]
            greedy_token = completion.token_ids[0]
            step = completion.logprobs[0]
            for offset, token in enumerate(token_ids):
                logprob_of[(id(query), start + offset)] = (step[token].logprob, token == greedy_token)
        for query in queries:
            for request_index, position in query.readers:
                logprob, greedy = logprob_of[(id(query), position)]
                results[request_index] = ScoreResult(logprob, greedy)

    def _score_sequences(self, queries: list[SequenceQuery], results: list[ScoreResult | None]) -> None:
        """Score continuations from prompt logprobs, reading the context from the prefix cache.

        vLLM computes prompt-logprob rows only from the first uncached token on; rows before are
        left unfilled. A continuation row is valid only if the cache stopped before it, i.e.
        `num_cached_tokens <= first_scored - 1`. When a cached block reaches into the continuation
        (choices that share their first tokens), that prompt is re-run without reading the cache.
        """
        cached_params = self._sampling(max_tokens=1, prompt_logprobs=0, skip_reading_prefix_cache=False)
        outputs = self._generate([query.tokens for query in queries], cached_params)
        rerun: list[SequenceQuery] = []
        for query, output in zip(queries, outputs):
            if output.num_cached_tokens > query.first_scored - 1:
                rerun.append(query)
            else:
                self._read_continuation(query, output.prompt_logprobs, results)
        if rerun:
            self.stats.cache_overreach_reruns += len(rerun)
            fresh_params = self._sampling(max_tokens=1, prompt_logprobs=0, skip_reading_prefix_cache=True)
            for query, output in zip(rerun, self._generate([q.tokens for q in rerun], fresh_params)):
                self._read_continuation(query, output.prompt_logprobs, results)

    @staticmethod
    def _read_continuation(query: SequenceQuery, rows: list[Any], results: list[ScoreResult | None]) -> None:
        total = 0.0
        greedy = True
        for position in range(query.first_scored, len(query.tokens)):
            entry = rows[position][query.tokens[position]]
            total += entry.logprob
            # rank 1 is the argmax, as lm-eval's HF model checks with `logits.argmax(-1)`.
            greedy = greedy and entry.rank == 1
        if math.isnan(total):
            raise FloatingPointError(f"NaN log-likelihood for a prompt of {len(query.tokens)} tokens")
        for request_index in query.readers:
            results[request_index] = ScoreResult(total, greedy)

    # -- generation ----------------------------------------------------------------------------

    def generate_greedy(
        self, prompts: Sequence[Sequence[int]], *, max_tokens: int, stop_token_ids: Sequence[int]
    ) -> list[list[int]]:
        """Greedy continuations of `prompts`, stopped at EOS, at `stop_token_ids`, or after `max_tokens`."""
        before = vllm_counter_totals(self.llm)
        params = self._sampling(max_tokens=max_tokens, stop_token_ids=list(stop_token_ids))
        outputs = self._generate(prompts, params)
        self._account(before)
        return [list(output.outputs[0].token_ids) for output in outputs]

    # -- bookkeeping ---------------------------------------------------------------------------

    def _account(self, before: dict[str, float]) -> None:
        after = vllm_counter_totals(self.llm)

        def delta(name: str) -> int:
            return int(after.get(name, 0.0) - before.get(name, 0.0))

        self.stats.prompt_tokens += delta("vllm:prompt_tokens")
        self.stats.computed_prefill_tokens += delta("vllm:request_prefill_kv_computed_tokens")
        self.stats.cached_prefill_tokens += delta("vllm:prompt_tokens_cached")

    def shutdown(self) -> None:
        """Free the engine: vLLM keeps memory until its engine core is shut down and collected."""
        import gc

        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del self.llm
        gc.collect()
