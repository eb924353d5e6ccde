"""The types the planner, the engine protocol and the engines share: requests, queries, plans, results,
counters and the non-finite error. Data only, no logic (as vLLM v1 keeps its types apart)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from e2lm_vllm.checkpoint import NonFiniteError

# A token's log-probability given the tokens before it, and whether it is the argmax there.
Row = tuple[float, bool]


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
        context's last token, which must be computed (see `ComputedRows`)."""
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


@dataclass(frozen=True)
class ComputedRows:
    """The prompt-logprob rows an engine computed for one `SequenceQuery`: `rows[i]` is row
    `start + i`, up to the last token.

    Row `p` needs the logits of token `p - 1`; an engine with a prefix cache computes them only
    from the first uncached token on, so rows from `first_scored` up to `start` are hidden: the
    cache can reach into a continuation when its context ends on a block boundary, or when a sibling
    with the same first tokens filled a block a step earlier.
    """

    start: int
    rows: tuple[Row, ...]


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
