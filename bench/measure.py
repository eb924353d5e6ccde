"""What is measured inside one backend's process: scoring time, the token requests, engine counters.

`ScoringProbe` wraps the lm-eval model's own request methods on the instance, so timing covers
exactly the scoring lm-eval asks for (tokenization + forward passes), not task building or metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from e2lm_vllm.engine.planner import common_prefix_length, trie_token_count, truncate_like_hf
from e2lm_vllm.settings import GPU_BLOCK_SIZE

# vLLM counters read before and after each workload (sums of counters and histograms).
VLLM_COUNTERS = {
    "engine_prompt_tokens": "vllm:prompt_tokens",
    "computed_prefill_tokens": "vllm:request_prefill_kv_computed_tokens",
    "cached_prefill_tokens": "vllm:prompt_tokens_cached",
    "engine_requests": "vllm:request_success",
    "generation_tokens": "vllm:generation_tokens",
}

def counter_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {key: int(round(after.get(name, 0.0) - before.get(name, 0.0))) for key, name in VLLM_COUNTERS.items()}


@dataclass
class TokenAccount:
    """The token requests lm-eval submitted, after the HF-style left truncation to `max_length`."""

    requests: int = 0
    submitted_tokens: int = 0  # sum of len(context + continuation): one prompt per request
    trie_tokens: int = 0  # distinct prefixes of all prompts: the floor of prefill work
    truncated_requests: int = 0
    # The trie floor for a prefix cache of `block_size`-token blocks: a prompt reads only the whole
    # blocks of what an earlier prompt computed, and always computes its last token.
    block_floor_tokens: int = 0
    gpu_block_floor_tokens: int = 0  # the same at the GPU block size (vLLM's CUDA backends take 16)


def block_floor_token_count(sequences: list[tuple[int, ...]], block_size: int) -> int:
    """Tokens computed if each distinct prompt ran once, in trie order, on a block-granular cache.

    In sorted order a prompt's longest prefix shared with any earlier prompt is the one shared with
    its predecessor; the cache serves that prefix rounded down to whole blocks (and never the last
    token, which must be computed to produce its logits).
    """
    ordered = sorted(set(sequences))
    total = 0
    previous: tuple[int, ...] = ()
    for sequence in ordered:
        shared = min(common_prefix_length(previous, sequence), len(sequence) - 1)
        total += len(sequence) - (shared // block_size) * block_size
        previous = sequence
    return total


def account_tokens(
    pairs: list[tuple[list[int], list[int]]], max_length: int, block_size: int = 1
) -> TokenAccount:
    prompts = []
    truncated = 0
    for context, continuation in pairs:
        kept_context, kept_continuation, was_truncated = truncate_like_hf(context, continuation, max_length)
        prompts.append(tuple(kept_context) + tuple(kept_continuation))
        truncated += was_truncated
    return TokenAccount(
        requests=len(prompts),
        submitted_tokens=sum(len(prompt) for prompt in prompts),
        trie_tokens=trie_token_count(prompts),
        truncated_requests=truncated,
        block_floor_tokens=block_floor_token_count(prompts, block_size),
        gpu_block_floor_tokens=block_floor_token_count(prompts, GPU_BLOCK_SIZE),
    )


@dataclass
class ScoringProbe:
    """Instance-level wrappers on an lm-eval model; `reset()` between workloads."""

    lm: Any
    scoring_seconds: float = 0.0
    token_pairs: list[tuple[list[int], list[int]]] = field(default_factory=list)
    model_positions: int = 0  # HF only: positions fed to the model, padding included

    def __post_init__(self) -> None:
        lm = self.lm
        loglikelihood = lm.loglikelihood
        loglikelihood_tokens = lm._loglikelihood_tokens

        def timed_loglikelihood(requests: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return loglikelihood(requests, *args, **kwargs)
            finally:
                self.scoring_seconds += time.perf_counter() - started

        def recorded_loglikelihood_tokens(requests: Any, *args: Any, **kwargs: Any) -> Any:
            self.token_pairs.extend((list(context), list(continuation)) for _, context, continuation in requests)
            return loglikelihood_tokens(requests, *args, **kwargs)

        lm.loglikelihood = timed_loglikelihood
        lm._loglikelihood_tokens = recorded_loglikelihood_tokens
        model_call = getattr(lm, "_model_call", None)
        if model_call is not None and hasattr(lm, "_model"):  # lm-eval's HFLM

            def counted_model_call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
                self.model_positions += int(inputs.numel())
                return model_call(inputs, *args, **kwargs)

            lm._model_call = counted_model_call

    def reset(self) -> None:
        self.scoring_seconds = 0.0
        self.token_pairs = []
        self.model_positions = 0


def sample_scores(
    samples: dict[str, list[dict[str, Any]]],
) -> tuple[dict[str, float], dict[str, list[tuple[float, bool]]]]:
    """Accuracy means over all documents of a workload, and each request's (log-likelihood, greedy)."""
    metric_sums: dict[str, float] = {}
    documents = 0
    loglikelihoods: dict[str, list[tuple[float, bool]]] = {}
    for task, task_samples in samples.items():
        for sample in task_samples:
            documents += 1
            for metric in ("acc", "acc_norm"):
                if metric in sample:
                    metric_sums[metric] = metric_sums.get(metric, 0.0) + float(sample[metric])
            responses = sample["filtered_resps"]
            loglikelihoods[f"{task}/{sample['doc_id']}"] = [(float(response[0]), bool(response[1])) for response in responses]
    means = {metric: total / documents for metric, total in metric_sums.items()} if documents else {}
    means["documents"] = documents
    return means, loglikelihoods
