"""Request planner: turns lm-eval's token-level scoring requests into the cheapest exact engine work.

Pure Python, no engine: it truncates exactly as lm-eval's HF model does, groups requests by their
shared token prefixes and orders the work in waves so that every shared prefix (a few-shot block,
the question shared by all choices) is in the prefix cache before the requests that read it run.

Two exact paths:
- `NextTokenQuery`: all one-token continuations of one context (letter answers " A".." D") are read
  from a single decode step on the context, with the exact logprobs of exactly those tokens.
- `SequenceQuery`: longer continuations (cloze answers) are scored from prompt logprobs of the rows
  after the cached prefix; a row the cache hid is read from a sibling or from one decode step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScoreRequest:
    """One lm-eval loglikelihood request after tokenization."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass(frozen=True)
class ScoreResult:
    logprob: float
    is_greedy: bool


@dataclass
class NextTokenQuery:
    """Decode one step after `context`; read the logprobs of `token_ids` (and the greedy token)."""

    context: tuple[int, ...]
    token_ids: list[int]
    # request index -> position of its token in `token_ids`
    readers: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class SequenceQuery:
    """Prefill `tokens`; the continuation is `tokens[first_scored:]`."""

    tokens: tuple[int, ...]
    first_scored: int
    readers: list[int] = field(default_factory=list)

    @property
    def cacheable(self) -> tuple[int, ...]:
        """The longest prefix the cache may serve: the first scored row needs the logits of the
        context's last token, which must be computed (see `engine._score_sequences`)."""
        return self.tokens[: self.first_scored - 1]


@dataclass
class PrefixPrimer:
    """Prefill a shared prefix once so that the requests of the next wave read it from the cache."""

    tokens: tuple[int, ...]


Query = NextTokenQuery | SequenceQuery | PrefixPrimer


@dataclass
class ScoringPlan:
    """Waves of engine work: every query of wave k may read the prefixes computed by waves < k."""

    waves: list[list[Query]]
    num_requests: int
    num_truncated: int
    submitted_tokens: int  # prompt tokens lm-eval's own backends would submit (one prompt per request)
    trie_tokens: int  # distinct tokens of all prompts: the floor of prefill work

    @property
    def queries(self) -> list[Query]:
        return [query for wave in self.waves for query in wave]


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
