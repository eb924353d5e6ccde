"""The vLLM engine: the only module that talks to vLLM, a `ScoringEngine` (`e2lm_vllm.engine.protocol`).

It runs a `ScoringPlan` (`planner.execute_plan` over its three scoring steps), tells the planner which
prompt-logprob rows vLLM computed rather than left unfilled for cached tokens, and generates (greedily,
or sampled with a seed per request). Token ids in, numbers out: no text, no I/O. It can also change
its weights in place (`swap_weights`), so a sweep pays engine start once per device instead of once
per checkpoint.

One exception to "no I/O": with ``E2LM_VLLM_TOKEN_LEDGER`` set to a file, each scoring call appends
the prefill tokens it computed and the model's hidden size, so a test session can total the scoring work of every process it
starts (engines in Ray workers and CLI subprocesses included): tests/conftest.py reports it per test.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from e2lm_vllm.engine.planner import execute_plan
from e2lm_vllm.engine.types import (
    ComputedRows,
    EngineStats,
    NextTokenQuery,
    NonFiniteScoreError,
    Row,
    ScoreResult,
    ScoringPlan,
    SequenceQuery,
    describe_prompt,
)

logger = logging.getLogger(__name__)

TOKEN_LEDGER_VARIABLE = "E2LM_VLLM_TOKEN_LEDGER"  # see the module docstring

# vLLM accepts at most this many `logprob_token_ids` per request (vllm.sampling_params).
MAX_TOKEN_IDS_PER_REQUEST = 128


def refresh_shared_modules(model: Any) -> list[str]:
    """Rebuild the derived state of every module whose parameters another module also holds.

    vLLM's `reload_weights` re-processes each layer it loads (on CPU: packs it into a oneDNN/SGL
    handler), but a module whose weight is tied to another's (`lm_head` = `embed_tokens` in SmolLM2
    and Gemma 3) is never loaded itself, so its handler keeps the old weights: several nats off
    a fresh engine, exact after this (docs/measurements.md#weight-swaps). Processing a tied module again is
    safe because its weight stays in place (the embedding keeps it).
    """
    holders: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for parameter in module.parameters(recurse=False):
            holders.setdefault(id(parameter), []).append(name)
    refreshed = []
    for name in sorted({name for names in holders.values() if len(names) > 1 for name in names}):
        module = model.get_submodule(name)
        method = getattr(module, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(module)
            refreshed.append(name)
    return refreshed


class WeightSwapExtension:
    """Methods vLLM mixes into its workers (`worker_extension_cls`), called by name through
    `collective_rpc`: a function object cannot cross to an engine core in another process (vLLM's
    serializer refuses it), a method name can."""

    def refresh_shared_modules(self) -> list[str]:
        return refresh_shared_modules(self.get_model())  # type: ignore[attr-defined]


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
    """A `vllm.LLM` built from our engine kwargs: a `ScoringEngine`, whose scoring steps are `planner.EngineSteps`."""

    def __init__(self, llm_kwargs: dict[str, Any], environment: dict[str, str] | None = None):
        # Read by vLLM at import and engine start (its engine core process inherits them).
        for name, value in (environment or {}).items():
            os.environ.setdefault(name, value)
        from vllm import LLM

        self.llm_kwargs = dict(llm_kwargs)
        self.llm = LLM(**self.llm_kwargs)
        self.block_size = int(self.llm.llm_engine.vllm_config.cache_config.block_size)
        self.max_model_len = int(self.llm.llm_engine.vllm_config.model_config.max_model_len)
        self.dtype = str(self.llm.llm_engine.vllm_config.model_config.dtype).removeprefix("torch.")
        self.stats = EngineStats()

    # -- weights -------------------------------------------------------------------------------

    def swap_weights(self, model_path: str) -> list[str]:
        """Load another checkpoint of the same architecture into this engine, in place.

        vLLM's `reload_weights` re-processes every layer it loads; `refresh_shared_modules` does the
        tied ones it skips; the prefix cache holds keys and values of the old weights, so it is reset.
        Exact on CPU against a fresh engine (docs/measurements.md#weight-swaps); a sweep still verifies
        its first swap per worker, since GPU kernels keep other derived state. Returns the refreshed
        modules' names.
        """
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": model_path})
        refreshed = self.llm.collective_rpc("refresh_shared_modules")
        if not self.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset the prefix cache after a weight swap")
        self.llm_kwargs["model"] = model_path
        return sorted({name for names in refreshed for name in names})

    # -- scoring -------------------------------------------------------------------------------

    def run_plan(self, plan: ScoringPlan, progress: Callable[[int], None] | None = None) -> list[ScoreResult]:
        """Execute `plan` and return one result per planned request, in request order."""
        before = vllm_counter_totals(self.llm)
        run = execute_plan(plan, self, progress)
        self.stats.borrowed_rows += run.borrowed_rows
        self.stats.decoded_rows += run.decoded_rows
        self._account(before)
        return run.results

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

    # `planner.EngineSteps`

    def prefill(self, prompts: Sequence[Sequence[int]]) -> None:
        self._generate(prompts, self._sampling(max_tokens=1))

    def next_token_rows(self, queries: list[NextTokenQuery]) -> list[list[Row]]:
        """One decode step per context: for each query, (exact logprob, is greedy) of each of its tokens.

        Greedy is the sampled token at temperature 0, the argmax lm-eval's HF model checks.
        """
        prompts, params, chunks = [], [], []
        for query_index, query in enumerate(queries):
            for start in range(0, len(query.token_ids), MAX_TOKEN_IDS_PER_REQUEST):
                token_ids = query.token_ids[start : start + MAX_TOKEN_IDS_PER_REQUEST]
                prompts.append(query.context)
                params.append(self._sampling(max_tokens=1, logprob_token_ids=token_ids))
                chunks.append((query_index, token_ids))
        answers: list[list[Row]] = [[] for _ in queries]
        for (query_index, token_ids), output in zip(chunks, self._generate(prompts, params)):
            completion = output.outputs[0]
            greedy_token = completion.token_ids[0]
            step = completion.logprobs[0]
            answer = [(step[token].logprob, token == greedy_token) for token in token_ids]
            for token, (logprob, _) in zip(token_ids, answer):
                if not math.isfinite(logprob):
                    raise NonFiniteScoreError(
                        f"log-probability {logprob} of token {token} after {describe_prompt(queries[query_index].context)}"
                    )
            answers[query_index] += answer
        return answers

    def prompt_rows(self, queries: list[SequenceQuery]) -> list[ComputedRows]:
        """Prompt logprobs of each query's tokens, reading the context from the prefix cache.

        vLLM computes prompt-logprob rows only from the first uncached token on; rows before are
        left unfilled. Row `p` (the logprob of token `p`) needs the logits of token `p - 1`, so it
        is valid iff `p > num_cached_tokens`; the planner repairs the others (`repair_hidden_rows`).
        """
        params = self._sampling(max_tokens=1, prompt_logprobs=0, skip_reading_prefix_cache=False)
        computed = []
        for query, output in zip(queries, self._generate([query.tokens for query in queries], params)):
            end = len(query.tokens)
            start = min(max(query.first_scored, output.num_cached_tokens + 1), end)
            rows = tuple(self._row(output.prompt_logprobs, query.tokens, position) for position in range(start, end))
            computed.append(ComputedRows(start, rows))
        return computed

    @staticmethod
    def _row(prompt_logprobs: list[Any], tokens: tuple[int, ...], position: int) -> Row:
        entry = prompt_logprobs[position][tokens[position]]
        # rank 1 is the argmax, as lm-eval's HF model checks with `logits.argmax(-1)`.
        return entry.logprob, entry.rank == 1

    # -- generation ----------------------------------------------------------------------------

    def run_plans(self, plans: Sequence[ScoringPlan], progress: Callable[[int], None] | None = None) -> list[list[ScoreResult]]:
        return [self.run_plan(plan, progress) for plan in plans]

    def generate_greedy(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_tokens: int,
        stop_token_ids: Sequence[int],
        options: dict[str, Any] | None = None,
    ) -> list[list[int]]:
        """Greedy continuations of `prompts`, stopped at EOS, at `stop_token_ids`, or after `max_tokens`.

        `options` are other `vllm.SamplingParams` fields that apply to greedy decoding too
        (`repetition_penalty`, ...), as HF's `generate` and lm-eval's `vllm` model apply them.
        """
        try:
            params = self._sampling(max_tokens=max_tokens, stop_token_ids=list(stop_token_ids), logprobs=0, **(options or {}))
        except TypeError as error:
            raise ValueError(f"generation kwargs {sorted(options or {})} are not all vLLM SamplingParams: {error}") from None
        return self._generate_tokens(prompts, params)

    def generate_sampled(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_tokens: int,
        stop_token_ids: Sequence[int],
        seeds: Sequence[int],
        options: dict[str, Any],
    ) -> list[list[int]]:
        """Sampled continuations through vLLM's sampler, one seed per prompt (reruns repeat).

        `options` are `vllm.SamplingParams` fields (temperature, top_p, top_k, min_p, ...).
        """
        from vllm import SamplingParams

        try:
            params = [
                SamplingParams(
                    max_tokens=max_tokens, stop_token_ids=list(stop_token_ids), seed=seed, detokenize=False, logprobs=0, **options
                )
                for seed in seeds
            ]
        except TypeError as error:
            raise ValueError(f"generation kwargs {sorted(options)} are not all vLLM SamplingParams: {error}") from None
        return self._generate_tokens(prompts, params)

    def _generate_tokens(self, prompts: Sequence[Sequence[int]], params: Any) -> list[list[int]]:
        """Generated token ids; each generated token's logprob (``logprobs=0``: the chosen token only) is
        checked, since logits with NaN or inf still yield token ids and only the logprobs show it."""
        before = vllm_counter_totals(self.llm)
        outputs = self._generate(prompts, params)
        self._account(before)
        for prompt, output in zip(prompts, outputs):
            completion = output.outputs[0]
            for index, (token, step) in enumerate(zip(completion.token_ids, completion.logprobs or [])):
                if not math.isfinite(step[token].logprob):
                    raise NonFiniteScoreError(
                        f"log-probability {step[token].logprob} of generated token {index} ({token}) "
                        f"after {describe_prompt(prompt)}"
                    )
        return [list(output.outputs[0].token_ids) for output in outputs]

    # -- bookkeeping ---------------------------------------------------------------------------

    def reset_prefix_cache(self) -> bool:
        return bool(self.llm.reset_prefix_cache())

    def counter_totals(self) -> dict[str, float]:
        return vllm_counter_totals(self.llm)

    def _account(self, before: dict[str, float]) -> None:
        after = vllm_counter_totals(self.llm)

        def delta(name: str) -> int:
            return int(after.get(name, 0.0) - before.get(name, 0.0))

        computed = delta("vllm:request_prefill_kv_computed_tokens")
        self.stats.prompt_tokens += delta("vllm:prompt_tokens")
        self.stats.computed_prefill_tokens += computed
        self.stats.cached_prefill_tokens += delta("vllm:prompt_tokens_cached")
        ledger = os.environ.get(TOKEN_LEDGER_VARIABLE)
        if ledger and computed:
            # The model's width beside the tokens: what a token costs depends on it (tiny test models vs real ones).
            hidden_size = self.llm.llm_engine.vllm_config.model_config.get_hidden_size()
            with open(ledger, "a") as file:  # one short line per call: appends of concurrent processes do not interleave
                file.write(f"{computed} {hidden_size}\n")

    def shutdown(self) -> None:
        """Free the engine: vLLM keeps memory until its engine core is shut down and collected."""
        import gc

        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del self.llm
        gc.collect()
