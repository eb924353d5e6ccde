"""Request planner: turns lm-eval's token-level scoring requests into the cheapest exact engine work.

Pure Python, no engine: it truncates exactly as lm-eval's HF model does, groups requests by their
shared token prefixes and orders the work in waves so that every shared prefix (a few-shot block,
the question shared by all choices) is in the prefix cache before the requests that read it run.

Two exact paths:
- `NextTokenQuery`: all one-token continuations of one context (letter answers " A".." D") are read
  from a single decode step on the context, with the exact logprobs of exactly those tokens.
- `SequenceQuery`: longer continuations (cloze answers) are scored from prompt logprobs of the rows
  after the cached prefix; a row the cache hid is read from a sibling or from one decode step.

`execute_plan` runs a plan on an engine's three steps (`EngineSteps`), and repairs the rows its
prefix cache hid (`repair_hidden_rows`), still without knowing which engine it drives. The requests,
queries, plans and results it works on are in `e2lm_vllm.engine.types`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from e2lm_vllm.engine.types import (
    ComputedRows,
    NextTokenQuery,
    NonFiniteScoreError,
    PrefixPrimer,
    Query,
    Row,
    ScoreRequest,
    ScoreResult,
    ScoringPlan,
    SequenceQuery,
    describe_prompt,
)


def truncate_like_hf(
    context: Sequence[int], continuation: Sequence[int], max_length: int
) -> tuple[tuple[int, ...], tuple[int, ...], bool]:
    """Left-truncate `context + continuation` to `max_length + 1` tokens, as lm-eval's HFLM does.

    HFLM feeds `(context + continuation)[-(max_length + 1):][:-1]` and scores the continuation on
    the last positions, so the sequence that matters is the last `max_length + 1` tokens.
    """
    if len(continuation) > max_length:
        raise ValueError(
            f"continuation of {len(continuation)} tokens is longer than max_length={max_length}"
        )
    whole = tuple(context) + tuple(continuation)
    if len(whole) <= max_length + 1:
        return tuple(context), tuple(continuation), False
    kept = whole[-(max_length + 1) :]
    return kept[: len(kept) - len(continuation)], tuple(continuation), True


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    limit = min(len(a), len(b))
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index


def trie_token_count(sequences: Sequence[Sequence[int]]) -> int:
    """Number of nodes of the token trie of `sequences`: each distinct prefix counted once."""
    ordered = sorted({tuple(sequence) for sequence in sequences})
    total = 0
    previous: tuple[int, ...] = ()
    for sequence in ordered:
        total += len(sequence) - common_prefix_length(previous, sequence)
        previous = sequence
    return total


def shared_prefixes(sequences: Sequence[Sequence[int]], min_length: int) -> list[tuple[int, ...]]:
    """Prefixes shared by at least two of `sequences` (branch points of their trie), shortest first.

    In sorted order the branch points are exactly the longest common prefixes of neighbours; a
    sequence given twice is shared whole.
    """
    ordered = sorted(tuple(sequence) for sequence in sequences)
    found = set()
    for left, right in zip(ordered, ordered[1:]):
        length = common_prefix_length(left, right)
        if length >= min_length:
            found.add(left[:length])
    return sorted(found, key=lambda prefix: (len(prefix), prefix))


def primers_read(primers: list[tuple[int, ...]], sequences: list[tuple[int, ...]]) -> list[int]:
    """For each sequence, how many of `primers` are prefixes of it (itself included): the primers
    whose cached blocks it reads."""
    # In lexicographic order a prefix comes right before its extensions: a stack walks the trie.
    entries = sorted([(primer, 0, i) for i, primer in enumerate(primers)] + [(sequence, 1, i) for i, sequence in enumerate(sequences)])
    counts = [0] * len(sequences)
    ancestors: list[tuple[int, ...]] = []
    for tokens, is_sequence, index in entries:
        while ancestors and tokens[: len(ancestors[-1])] != ancestors[-1]:
            ancestors.pop()
        if is_sequence:
            counts[index] = len(ancestors)
        else:
            ancestors.append(tokens)
    return counts


def nesting_levels(prefixes: list[tuple[int, ...]]) -> list[int]:
    """For each prefix, how many of the others are proper prefixes of it (its depth in their trie)."""
    return [count - 1 for count in primers_read(prefixes, prefixes)]


def useful_primers(prefixes: list[tuple[int, ...]], block_size: int) -> list[tuple[int, ...]]:
    """The prefixes worth priming, each cut to its whole blocks, shortest first.

    The cache keeps whole blocks only: a primer's partial last block would be computed again by
    every reader, and a branch point a few tokens past its parent (questions that all start with
    "Question: What") would cost an engine step and save nothing, so it is dropped.
    """
    kept: list[tuple[int, ...]] = []
    ancestors: list[tuple[int, ...]] = []
    for prefix in sorted(prefixes):
        while ancestors and prefix[: len(ancestors[-1])] != ancestors[-1]:
            ancestors.pop()
        parent_blocks = len(ancestors[-1]) // block_size if ancestors else 0
        if len(prefix) // block_size > parent_blocks:
            kept.append(prefix)
            ancestors.append(prefix)
    whole_blocks = {prefix[: len(prefix) // block_size * block_size] for prefix in kept}
    return sorted(whole_blocks, key=lambda prefix: (len(prefix), prefix))


def plan_scoring(
    requests: Sequence[ScoreRequest], *, max_length: int, block_size: int
) -> ScoringPlan:
    """Plan the exact scoring of `requests` (see the module docstring).

    `block_size` is the engine's cache block: the cache serves whole blocks only, so nothing shorter
    is worth priming.
    """
    next_token: dict[tuple[int, ...], NextTokenQuery] = {}
    sequences: dict[tuple[int, ...], SequenceQuery] = {}
    num_truncated = 0
    submitted = 0
    prompts: list[tuple[int, ...]] = []
    # Per request, the longest prefix the cache may serve it (a decode step needs only its context).
    cacheable: list[tuple[int, ...]] = []
    for index, request in enumerate(requests):
        context, continuation, truncated = truncate_like_hf(
            request.context, request.continuation, max_length
        )
        num_truncated += truncated
        if not context:
            raise ValueError("empty context after tokenization: lm-eval passes the prefix token instead")
        whole = context + continuation
        submitted += len(whole)
        prompts.append(whole)
        if len(continuation) == 1:
            query = next_token.setdefault(context, NextTokenQuery(context, []))
            token = continuation[0]
            if token not in query.token_ids:
                query.token_ids.append(token)
            query.readers.append((index, query.token_ids.index(token)))
            cacheable.append(context)
        else:
            query = sequences.setdefault(whole, SequenceQuery(whole, len(context)))
            query.readers.append(index)
            cacheable.append(query.cacheable)

    # Prime the prefixes that several requests share (few-shot blocks, the question shared by all of
    # its choices), shallowest first. Only cacheable prefixes are primed: a primer reaching into
    # continuations that share their first tokens would hide their rows. A context shared only by
    # the letters of one next-token query is not primed: that query computes it once anyway.
    contexts_of_next_token = set(next_token)
    primer_prefixes = useful_primers(
        [prefix for prefix in shared_prefixes(cacheable, block_size) if prefix not in contexts_of_next_token],
        block_size=block_size,
    )
    # Waves: each query runs after the primers it reads and before any deeper primer. A primer can
    # cover a continuation without being a prefix of its cacheable part (HellaSwag: a later
    # context repeats an earlier context and its ending); had it run first, it would hide that
    # continuation's rows. A sequence query reading k primers runs right after primer level k - 1.
    levels = nesting_levels(primer_prefixes)
    ordered_sequences = sorted(sequences.values(), key=lambda query: query.tokens)
    reads = primers_read(primer_prefixes, [query.cacheable for query in ordered_sequences])
    depth = max(levels, default=-1) + 1
    waves: list[list[Query]] = [[] for _ in range(2 * depth + 1)]
    for query, count in zip(ordered_sequences, reads):
        waves[2 * count].append(query)  # sorted by tokens: neighbours share the longest prefixes
    for prefix, level in zip(primer_prefixes, levels):
        waves[2 * level + 1].append(PrefixPrimer(prefix))
    # A decode step computes the last context token itself: no primer hides anything from it.
    waves.append(sorted(next_token.values(), key=lambda query: query.context))
    return ScoringPlan(
        waves=[wave for wave in waves if wave],
        num_requests=len(requests),
        num_truncated=num_truncated,
        submitted_tokens=submitted,
        trie_tokens=trie_token_count(prompts),
    )


# --- running a plan ----------------------------------------------------------------------------


class EngineSteps(Protocol):
    """The scoring steps `execute_plan` drives (`e2lm_vllm.engine.vllm_engine.VLLMEngine` has them on vLLM)."""

    def prefill(self, prompts: Sequence[Sequence[int]]) -> None:
        """Compute `prompts` into the prefix cache."""
        ...

    def next_token_rows(self, queries: list[NextTokenQuery]) -> list[list[Row]]:
        """One decode step per query: the row of each of its `token_ids`, exact whatever the cache holds."""
        ...

    def prompt_rows(self, queries: list[SequenceQuery]) -> list[ComputedRows]:
        """Prefill each query's tokens, reading the prefix cache; the rows computed from `first_scored` on."""
        ...


@dataclass(frozen=True)
class HiddenRowRepair:
    """Where the hidden rows of a wave of sequence queries come from (keys: the tokens up to and
    including the scored token; a row depends on nothing else)."""

    borrowed: dict[tuple[int, ...], Row]  # computed by a sibling query of the same wave
    to_decode: list[NextTokenQuery]  # the rest: one decode step per distinct context

    @property
    def num_decoded(self) -> int:
        return sum(len(query.token_ids) for query in self.to_decode)


def repair_hidden_rows(queries: Sequence[SequenceQuery], computed: Sequence[ComputedRows]) -> HiddenRowRepair:
    """How to fill the rows the cache hid: from a sibling that computed the same row, else from a
    decode step on the tokens before it (exact, as for letters), never from the engine's unfilled row."""
    hidden = {
        query.tokens[: position + 1]
        for query, rows in zip(queries, computed)
        for position in range(query.first_scored, rows.start)
    }
    borrowed: dict[tuple[int, ...], Row] = {}
    if hidden:
        for query, rows in zip(queries, computed):
            for offset, row in enumerate(rows.rows):
                prefix = query.tokens[: rows.start + offset + 1]
                if prefix in hidden and prefix not in borrowed:
                    borrowed[prefix] = row
    by_context: dict[tuple[int, ...], NextTokenQuery] = {}
    for prefix in sorted(hidden - borrowed.keys()):
        by_context.setdefault(prefix[:-1], NextTokenQuery(prefix[:-1], [])).token_ids.append(prefix[-1])
    return HiddenRowRepair(borrowed, list(by_context.values()))


def sequence_scores(
    queries: Sequence[SequenceQuery], computed: Sequence[ComputedRows], hidden_rows: dict[tuple[int, ...], Row]
) -> list[ScoreResult]:
    """Each query's continuation score: its hidden rows from `hidden_rows`, then the computed ones."""
    scores = []
    for query, rows in zip(queries, computed):
        answers = [hidden_rows[query.tokens[: position + 1]] for position in range(query.first_scored, rows.start)]
        answers += rows.rows
        total = sum(logprob for logprob, _ in answers)
        if not math.isfinite(total):
            position, logprob = next(
                (query.first_scored + i, lp) for i, (lp, _) in enumerate(answers) if not math.isfinite(lp)
            )
            raise NonFiniteScoreError(
                f"log-probability {logprob} of token {query.tokens[position]} at position {position} of "
                f"{describe_prompt(query.tokens)}"
            )
        scores.append(ScoreResult(total, all(greedy for _, greedy in answers)))
    return scores


@dataclass(frozen=True)
class PlanRun:
    results: list[ScoreResult]  # one per planned request, in request order
    borrowed_rows: int  # hidden rows read from a sibling
    decoded_rows: int  # hidden rows read from a decode step


def execute_plan(plan: ScoringPlan, steps: EngineSteps, progress: Callable[[int], None] | None = None) -> PlanRun:
    """Run `plan` wave by wave on `steps`; `progress` gets the number of requests each wave scored."""
    results: list[ScoreResult | None] = [None] * plan.num_requests
    borrowed = decoded = 0
    for wave in plan.waves:
        primers = [query for query in wave if isinstance(query, PrefixPrimer)]
        next_token = [query for query in wave if isinstance(query, NextTokenQuery)]
        sequences = [query for query in wave if isinstance(query, SequenceQuery)]
        if primers:
            steps.prefill([primer.tokens for primer in primers])
        if next_token:
            for query, answers in zip(next_token, steps.next_token_rows(next_token)):
                for request_index, position in query.readers:
                    results[request_index] = ScoreResult(*answers[position])
        if sequences:
            computed = steps.prompt_rows(sequences)
            repair = repair_hidden_rows(sequences, computed)
            hidden_rows = dict(repair.borrowed)
            if repair.to_decode:
                for query, answers in zip(repair.to_decode, steps.next_token_rows(repair.to_decode)):
                    for token, answer in zip(query.token_ids, answers):
                        hidden_rows[query.context + (token,)] = answer
            borrowed += len(repair.borrowed)
            decoded += repair.num_decoded
            for query, score in zip(sequences, sequence_scores(sequences, computed, hidden_rows)):
                for request_index in query.readers:
                    results[request_index] = score
        if progress is not None:
            progress(sum(len(query.readers) for query in next_token + sequences))
    missing = [index for index, result in enumerate(results) if result is None]
    if missing:
        raise RuntimeError(f"plan left {len(missing)} requests unscored, e.g. {missing[:5]}")
    return PlanRun(results, borrowed, decoded)  # type: ignore[arg-type]
