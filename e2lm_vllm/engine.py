"""The vLLM engine: the only module that talks to vLLM.

It runs a `ScoringPlan` wave by wave, checks every prompt-logprob row it returns was computed
rather than read from the cache, and generates (greedily, or sampled with a seed per request). Token ids
in, numbers out: no text, no I/O. It can also change its weights in place (`swap_weights`), so a
sweep pays engine start once per device instead of once per checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from e2lm_vllm.checkpoint import NonFiniteError
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
    """What the engine did, read from vLLM's own counters and from our checks."""

    prompt_tokens: int = 0  # tokens of all prompts submitted to vLLM
    computed_prefill_tokens: int = 0  # prefill tokens actually computed (not read from the cache)
    cached_prefill_tokens: int = 0
    requests: int = 0
    # continuation rows the cache hid (see `_score_sequences`): read from a sibling, or decoded
    borrowed_rows: int = 0
    decoded_rows: int = 0


def refresh_shared_modules(model: Any) -> list[str]:
    """Rebuild the derived state of every module whose parameters another module also holds.

    vLLM's `reload_weights` re-processes each layer it loads (on CPU: packs it into a oneDNN/SGL
    handler), but a module whose weight is tied to another's (`lm_head` = `embed_tokens` in SmolLM2
    and Gemma 3) is never loaded itself, so its handler keeps the old weights: measured 5.35 nats off
    a fresh engine on SmolLM2 (vLLM 0.32 CPU), 0.0 after this. Processing a tied module again is
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
    """A `vllm.LLM` built from our engine kwargs, with the scoring and generation primitives."""

    def __init__(self, llm_kwargs: dict[str, Any], environment: dict[str, str] | None = None):
        # Read by vLLM at import and engine start (its engine core process inherits them).
        for name, value in (environment or {}).items():
            os.environ.setdefault(name, value)
        from vllm import LLM

        self.llm_kwargs = dict(llm_kwargs)
        self.llm = LLM(**self.llm_kwargs)
        self.block_size = int(self.llm.llm_engine.vllm_config.cache_config.block_size)
        self.max_model_len = int(self.llm.llm_engine.vllm_config.model_config.max_model_len)
        self.stats = EngineStats()

    # -- weights -------------------------------------------------------------------------------

    def swap_weights(self, model_path: str) -> list[str]:
        """Load another checkpoint of the same architecture into this engine, in place.

        vLLM's `reload_weights` re-processes every layer it loads; `refresh_shared_modules` does the
        tied ones it skips; the prefix cache holds keys and values of the old weights, so it is reset.
        Exact on CPU (0.0 nats against a fresh engine, SmolLM2 and Gemma 3); a sweep still verifies
        its first swap per worker, since GPU kernels keep other derived state. Returns the refreshed
        modules' names.
        """
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": model_path})
        refreshed = self.llm.collective_rpc("refresh_shared_modules")
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset the prefix cache after a weight swap")
        self.llm_kwargs["model"] = model_path
        return sorted({name for names in refreshed for name in names})

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

    def _next_token_logprobs(self, queries: list[NextTokenQuery]) -> list[list[tuple[float, bool]]]:
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
        answers: list[list[tuple[float, bool]]] = [[] for _ in queries]
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

    def _score_next_tokens(self, queries: list[NextTokenQuery], results: list[ScoreResult | None]) -> None:
        for query, answers in zip(queries, self._next_token_logprobs(queries)):
            for request_index, position in query.readers:
                results[request_index] = ScoreResult(*answers[position])

    def _score_sequences(self, queries: list[SequenceQuery], results: list[ScoreResult | None]) -> None:
        """Score continuations from prompt logprobs, reading the context from the prefix cache.

        vLLM computes prompt-logprob rows only from the first uncached token on; rows before are
        left unfilled. Row `p` (the logprob of token `p`) needs the logits of token `p - 1`, so it
        is valid iff `p > num_cached_tokens`. The cache can reach into a continuation: when the
        context ends on a block boundary, or when a sibling with the same first tokens filled a
        block a step earlier. Such a hidden row depends only on `tokens[: p + 1]`: it is read from
        a sibling that computed it, or else from one decode step on `tokens[:p]` (exact, as for
        letters), never from the unfilled row.
        """
        params = self._sampling(max_tokens=1, prompt_logprobs=0, skip_reading_prefix_cache=False)
        outputs = self._generate([query.tokens for query in queries], params)
        first_valid = [output.num_cached_tokens + 1 for output in outputs]
        hidden = {
            query.tokens[: position + 1]
            for query, valid in zip(queries, first_valid)
            for position in range(query.first_scored, min(valid, len(query.tokens)))
        }
        rows: dict[tuple[int, ...], tuple[float, bool]] = {}
        if hidden:
            for query, output, valid in zip(queries, outputs, first_valid):
                for position in range(max(query.first_scored, valid), len(query.tokens)):
                    prefix = query.tokens[: position + 1]
                    if prefix in hidden and prefix not in rows:
                        rows[prefix] = self._row(output.prompt_logprobs, query.tokens, position)
            self.stats.borrowed_rows += len(rows)
            self._decode_hidden_rows(hidden - rows.keys(), rows)
        for query, output, valid in zip(queries, outputs, first_valid):
            answers = [
                self._row(output.prompt_logprobs, query.tokens, position)
                if position >= valid
                else rows[query.tokens[: position + 1]]
                for position in range(query.first_scored, len(query.tokens))
            ]
            total = sum(logprob for logprob, _ in answers)
            if not math.isfinite(total):
                position, logprob = next(
                    (query.first_scored + i, lp) for i, (lp, _) in enumerate(answers) if not math.isfinite(lp)
                )
                raise NonFiniteScoreError(
                    f"log-probability {logprob} of token {query.tokens[position]} at position {position} of "
                    f"{describe_prompt(query.tokens)}"
                )
            for request_index in query.readers:
                results[request_index] = ScoreResult(total, all(greedy for _, greedy in answers))

    def _decode_hidden_rows(self, prefixes: set[tuple[int, ...]], rows: dict[tuple[int, ...], tuple[float, bool]]) -> None:
        """Fill `rows` for `prefixes` (context + scored token) with one decode step per distinct context."""
        by_context: dict[tuple[int, ...], NextTokenQuery] = {}
        for prefix in sorted(prefixes):
            by_context.setdefault(prefix[:-1], NextTokenQuery(prefix[:-1], [])).token_ids.append(prefix[-1])
        queries = list(by_context.values())
        for query, answers in zip(queries, self._next_token_logprobs(queries)):
            for token, answer in zip(query.token_ids, answers):
                rows[query.context + (token,)] = answer
        self.stats.decoded_rows += len(prefixes)

    @staticmethod
    def _row(prompt_logprobs: list[Any], tokens: tuple[int, ...], position: int) -> tuple[float, bool]:
        entry = prompt_logprobs[position][tokens[position]]
        # rank 1 is the argmax, as lm-eval's HF model checks with `logits.argmax(-1)`.
        return entry.logprob, entry.rank == 1

    # -- generation ----------------------------------------------------------------------------

    def generate_greedy(
        self, prompts: Sequence[Sequence[int]], *, max_tokens: int, stop_token_ids: Sequence[int]
    ) -> list[list[int]]:
        """Greedy continuations of `prompts`, stopped at EOS, at `stop_token_ids`, or after `max_tokens`."""
        return self._generate_tokens(prompts, self._sampling(max_tokens=max_tokens, stop_token_ids=list(stop_token_ids), logprobs=0))

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
