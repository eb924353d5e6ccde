"""`data_parallel_size=N`: one lm-eval run on N engines, each a long-lived Ray actor.

lm-eval's own `vllm` model starts N engines per request batch (a Ray task each) and splits the
requests evenly. Ours start N engines once, for the life of the lm, and split the planner's work so
that the numbers do not change: the chunks of planned requests (sorted by tokens, so a few-shot block
and its questions sit in neighbouring chunks) are cut into N runs only where no prompt on one side
shares its first cache block with a prompt on the other. vLLM reuses a cached block only when every
block before it matches, so no engine then misses a prefix that one engine would have reused, each
run's chunks go to one engine in order, and every query sees the cache state it would have seen on
one engine: results equal `data_parallel_size=1` (the test pins 1e-6).

A workload whose prompts all share their first block (one few-shot prefix for everything) has no
clean cut and runs on one engine; the log says so.
"""

from __future__ import annotations

import logging
import os
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from e2lm_vllm.cluster.worker_secrets import WorkerSecrets
from e2lm_vllm.engine.types import EngineStats, NextTokenQuery, PrefixPrimer, ScoreResult, ScoringPlan, SequenceQuery

logger = logging.getLogger(__name__)


def first_blocks(plan: ScoringPlan, block_size: int) -> set[tuple[int, ...]]:
    """The first full cache block of every prompt `plan` submits (shorter prompts cache nothing)."""
    blocks = set()
    for query in plan.queries:
        if isinstance(query, NextTokenQuery):
            tokens = query.context
        elif isinstance(query, (SequenceQuery, PrefixPrimer)):
            tokens = query.tokens
        else:  # pragma: no cover - the planner's query types are closed
            raise TypeError(f"unknown query type {type(query).__name__}")
        if len(tokens) >= block_size:
            blocks.add(tuple(tokens[:block_size]))
    return blocks


def clean_cuts(plans: Sequence[ScoringPlan], block_size: int) -> list[int]:
    """Indices `i` (1..len-1) such that plans[:i] and plans[i:] share no first cache block."""
    per_plan = [first_blocks(plan, block_size) for plan in plans]
    right: Counter[tuple[int, ...]] = Counter(block for blocks in per_plan for block in blocks)
    left: set[tuple[int, ...]] = set()
    cuts = []
    for index, blocks in enumerate(per_plan[:-1], start=1):
        left |= blocks
        right.subtract(blocks)
        if not any(right[block] > 0 for block in left):
            cuts.append(index)
    return cuts


def shard_plans(plans: Sequence[ScoringPlan], shards: int, block_size: int) -> list[range]:
    """`shards` contiguous ranges of `plans` of about equal work (distinct prompt tokens), cut only
    at clean cuts; fewer when there are not enough clean cuts (the rest get empty ranges)."""
    if shards < 1:
        raise ValueError(f"expected shards >= 1, got {shards}")
    work = [0]
    for plan in plans:
        work.append(work[-1] + max(1, plan.trie_tokens))
    cuts = clean_cuts(plans, block_size)
    chosen: list[int] = []
    for shard in range(1, shards):
        target = work[-1] * shard / shards
        candidates = [cut for cut in cuts if not chosen or cut > chosen[-1]]
        if not candidates:
            break
        # The clean cut whose work on the left is nearest to this shard's share.
        at = bisect_left([work[cut] for cut in candidates], target)
        nearby = candidates[max(0, at - 1) : at + 1]
        chosen.append(min(nearby, key=lambda cut: abs(work[cut] - target)))
    bounds = [0, *chosen, len(plans)]
    ranges = [range(start, end) for start, end in zip(bounds, bounds[1:])]
    return ranges + [range(len(plans), len(plans))] * (shards - len(ranges))


def split_evenly(items: Sequence[Any], shards: int) -> list[range]:
    """`shards` contiguous ranges of near-equal length (generation: no cache to keep together)."""
    size, extra = divmod(len(items), shards)
    bounds = [0]
    for shard in range(shards):
        bounds.append(bounds[-1] + size + (shard < extra))
    return [range(start, end) for start, end in zip(bounds, bounds[1:])]


class EngineActor:
    """One engine of a data-parallel lm, in its own Ray worker process (GPUs per `tensor_parallel_size`)."""

    def __init__(self, llm_kwargs: dict[str, Any], environment: dict[str, str], secrets: WorkerSecrets | None = None):
        from e2lm_vllm.engine.vllm_engine import VLLMEngine

        if secrets is not None:
            secrets.apply()  # the HF token, kept out of the runtime env (`e2lm_vllm.cluster.worker_secrets`)

        self.engine = VLLMEngine(llm_kwargs, environment)

    def limits(self) -> tuple[int, int, str]:
        """(block size, max model length, dtype): the same on every engine of one lm."""
        return self.engine.block_size, self.engine.max_model_len, self.engine.dtype

    def run_plan(self, plan: ScoringPlan) -> list[ScoreResult]:
        return self.engine.run_plan(plan)

    def generate_greedy(self, prompts: list[list[int]], kwargs: dict[str, Any]) -> list[list[int]]:
        return self.engine.generate_greedy(prompts, **kwargs)

    def generate_sampled(self, prompts: list[list[int]], kwargs: dict[str, Any]) -> list[list[int]]:
        return self.engine.generate_sampled(prompts, **kwargs)

    def swap_weights(self, model_path: str) -> list[str]:
        return self.engine.swap_weights(model_path)

    def stats(self) -> dict[str, int]:
        return dict(self.engine.stats.__dict__)

    def reset_prefix_cache(self) -> bool:
        return self.engine.reset_prefix_cache()

    def counter_totals(self) -> dict[str, float]:
        return self.engine.counter_totals()

    def shutdown(self) -> None:
        self.engine.shutdown()


class DataParallelEngine:
    """N `VLLMEngine`s behind the same methods as one: `run_plans`, generation, weight swaps, stats."""

    def __init__(self, llm_kwargs: dict[str, Any], environment: dict[str, str], size: int, cpus_per_engine: int):
        from e2lm_vllm.cluster.ray_init import init_ray, worker_environment

        self.llm_kwargs = dict(llm_kwargs)
        self.ray = ray = init_ray(None)
        gpus_per_engine = int(llm_kwargs.get("tensor_parallel_size") or 1) if ray.cluster_resources().get("GPU") else 0
        env = worker_environment(cpus_per_engine, "sweep")  # engine core in the actor's own process
        actor = ray.remote(EngineActor).options(
            num_cpus=cpus_per_engine, num_gpus=gpus_per_engine, max_restarts=0, runtime_env={"env_vars": env}
        )
        secrets = WorkerSecrets.from_environ(os.environ)
        self.actors = [actor.remote(llm_kwargs, environment, secrets) for _ in range(size)]
        self.block_size, self.max_model_len, self.dtype = ray.get([engine.limits.remote() for engine in self.actors])[0]
        logger.info("e2lm_vllm: %d data-parallel engines x %d CPUs + %d GPUs", size, cpus_per_engine, gpus_per_engine)

    @property
    def stats(self) -> EngineStats:
        """The engines' statistics summed (read from each engine per call)."""
        summed = EngineStats()
        for stats in self.ray.get([engine.stats.remote() for engine in self.actors]):
            for field in fields(summed):
                setattr(summed, field.name, getattr(summed, field.name) + int(stats.get(field.name, 0)))
        return summed

    def run_plans(self, plans: Sequence[ScoringPlan], progress: Callable[[int], None] | None = None) -> list[list[ScoreResult]]:
        """Each plan's results, in order; each shard's plans run on one engine in order (Ray runs an
        actor's calls in the order they were submitted)."""
        shards = shard_plans(plans, len(self.actors), self.block_size)
        if len(plans) > 1 and sum(1 for shard in shards if shard) == 1:
            logger.info("e2lm_vllm: every chunk shares a prefix block with its neighbours: one engine runs them all")
        refs: dict[Any, int] = {}
        for engine, shard in zip(self.actors, shards):
            for index in shard:
                refs[engine.run_plan.remote(plans[index])] = index
        results: list[list[ScoreResult] | None] = [None] * len(plans)
        waiting = list(refs)
        while waiting:
            ready, waiting = self.ray.wait(waiting, num_returns=1)
            index = refs[ready[0]]
            results[index] = self.ray.get(ready[0])
            if progress is not None:
                progress(plans[index].num_requests)
        return results  # type: ignore[return-value]

    def run_plan(self, plan: ScoringPlan, progress: Callable[[int], None] | None = None) -> list[ScoreResult]:
        return self.run_plans([plan], progress)[0]

    def _generate(
        self, method: str, prompts: Sequence[Sequence[int]], kwargs: dict[str, Any], seeds: Sequence[int] | None = None
    ) -> list[list[int]]:
        """Contiguous, even slices of `prompts` (and their seeds) on the engines; outputs in prompt order."""
        refs = []
        for engine, shard in zip(self.actors, split_evenly(prompts, len(self.actors))):
            if shard:
                shard_kwargs = kwargs if seeds is None else {**kwargs, "seeds": [seeds[i] for i in shard]}
                refs.append(getattr(engine, method).remote([list(prompts[i]) for i in shard], shard_kwargs))
        return [tokens for shard in self.ray.get(refs) for tokens in shard]

    def generate_greedy(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_tokens: int,
        stop_token_ids: Sequence[int],
        options: dict[str, Any] | None = None,
    ) -> list[list[int]]:
        kwargs = {"max_tokens": max_tokens, "stop_token_ids": list(stop_token_ids), "options": options}
        return self._generate("generate_greedy", prompts, kwargs)

    def generate_sampled(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_tokens: int,
        stop_token_ids: Sequence[int],
        seeds: Sequence[int],
        options: dict[str, Any],
    ) -> list[list[int]]:
        kwargs = {"max_tokens": max_tokens, "stop_token_ids": list(stop_token_ids), "options": options}
        return self._generate("generate_sampled", prompts, kwargs, seeds)

    def reset_prefix_cache(self) -> bool:
        return all(self.ray.get([engine.reset_prefix_cache.remote() for engine in self.actors]))

    def counter_totals(self) -> dict[str, float]:
        """Each counter summed over the engines."""
        totals: dict[str, float] = {}
        for counters in self.ray.get([engine.counter_totals.remote() for engine in self.actors]):
            for name, value in counters.items():
                totals[name] = totals.get(name, 0.0) + value
        return totals

    def swap_weights(self, model_path: str) -> list[str]:
        refreshed = self.ray.get([engine.swap_weights.remote(model_path) for engine in self.actors])
        self.llm_kwargs["model"] = model_path
        return sorted({name for names in refreshed for name in names})

    def shutdown(self) -> None:
        for engine in self.actors:
            try:
                self.ray.get(engine.shutdown.remote())
            finally:
                self.ray.kill(engine)
        self.actors = []
