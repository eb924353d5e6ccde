"""The request planner: exact HF truncation, trie counts, shared prefixes and waves (no engine)."""

from __future__ import annotations

import random

import pytest

from e2lm_vllm.planner import (
    NextTokenQuery,
    PrefixPrimer,
    ScoreRequest,
    SequenceQuery,
    nesting_levels,
    plan_scoring,
    shared_prefixes,
    trie_token_count,
    truncate_like_hf,
)


def test_truncation_keeps_the_last_max_length_plus_one_tokens_like_hflm():
    context, continuation = list(range(10)), [100, 101]
    kept_context, kept_continuation, truncated = truncate_like_hf(context, continuation, max_length=7)
    # HFLM: (context + continuation)[-(max_length + 1):] -> 8 tokens, the last 2 being the continuation
    assert kept_context + kept_continuation == tuple((context + continuation)[-8:])
    assert kept_continuation == (100, 101)
    assert truncated


def test_no_truncation_at_exactly_max_length_plus_one():
    context, continuation = list(range(6)), [7, 8]
    assert truncate_like_hf(context, continuation, max_length=7) == (tuple(context), (7, 8), False)


def test_continuation_longer_than_max_length_is_an_error():
    with pytest.raises(ValueError, match="longer than max_length"):
        truncate_like_hf([1], list(range(9)), max_length=8)


def test_trie_token_count_counts_each_distinct_prefix_once():
    assert trie_token_count([(1, 2, 3), (1, 2, 4), (1, 5)]) == 5  # 1,2,3 + 4 + 5
    assert trie_token_count([(1, 2), (1, 2)]) == 2
    assert trie_token_count([]) == 0


def test_shared_prefixes_are_the_branch_points():
    few_shot = tuple(range(100, 140))
    q1, q2 = few_shot + (1, 2, 3), few_shot + (7, 8)
    sequences = [q1 + (50,), q1 + (51,), q2 + (60, 61), q2 + (62,)]
    assert shared_prefixes(sequences, min_length=32) == [few_shot, q2, q1]
    assert shared_prefixes(sequences, min_length=44) == []


def test_nesting_levels_follow_the_trie():
    assert nesting_levels([(1, 2), (1, 2, 3), (1, 2, 3, 4), (5,), (1, 9)]) == [0, 1, 2, 0, 0]


def _letter_and_cloze_requests(seed: int = 0) -> list[ScoreRequest]:
    rng = random.Random(seed)
    few_shot = tuple(rng.randrange(1000) for _ in range(70))
    requests = []
    for question in range(6):
        context = few_shot + tuple(rng.randrange(1000, 2000) for _ in range(20 + question))
        requests += [ScoreRequest(context, (letter,)) for letter in (330, 389, 340, 422)]
        requests += [
            ScoreRequest(context, tuple(rng.randrange(2000, 3000) for _ in range(1 + choice % 3 + 1)))
            for choice in range(4)
        ]
    return requests


def test_plan_routes_letters_to_one_decode_step_per_context():
    requests = _letter_and_cloze_requests()
    plan = plan_scoring(requests, max_length=4096, block_size=32)
    next_token = [query for query in plan.queries if isinstance(query, NextTokenQuery)]
    sequences = [query for query in plan.queries if isinstance(query, SequenceQuery)]
    assert len(next_token) == 6  # one per question
    assert all(sorted(query.token_ids) == [330, 340, 389, 422] for query in next_token)
    assert sum(len(query.readers) for query in next_token) == 24
    assert sum(len(query.readers) for query in sequences) == 24
    # every request is read exactly once
    read = [index for query in next_token for index, _ in query.readers]
    read += [index for query in sequences for index in query.readers]
    assert sorted(read) == list(range(len(requests)))


def test_plan_primes_the_few_shot_block_before_its_readers():
    plan = plan_scoring(_letter_and_cloze_requests(), max_length=4096, block_size=32)
    first_wave = plan.waves[0]
    assert all(isinstance(query, PrefixPrimer) for query in first_wave)
    # the 70-token few-shot block, cut to its whole 32-token blocks (the rest is each reader's anyway)
    assert [len(primer.tokens) for primer in first_wave] == [64]
    # then the sequence queries that read it, sorted by tokens; the decode steps come last
    assert [type(wave[0]) for wave in plan.waves] == [PrefixPrimer, SequenceQuery, NextTokenQuery]
    readers = plan.waves[1]
    assert all(isinstance(query, SequenceQuery) for query in readers)
    assert [query.tokens for query in readers] == sorted(query.tokens for query in readers)


def test_plan_accounts_tokens_and_truncations():
    requests = [ScoreRequest(tuple(range(20)), (5, 6)), ScoreRequest(tuple(range(20)), (7,))]
    plan = plan_scoring(requests, max_length=10, block_size=4)
    assert plan.num_truncated == 2
    assert plan.submitted_tokens == 11 + 11
    # after truncation: (11..19, 5, 6) and (10..19, 7): they share no prefix
    assert plan.trie_tokens == 22


def test_primers_that_add_no_full_block_are_dropped():
    from e2lm_vllm.planner import useful_primers

    few_shot = tuple(range(64))  # two blocks of 32
    question_stem = few_shot + (900, 901)  # shared by several questions: no new full block
    long_question = few_shot + tuple(range(1000, 1040))  # one more full block
    assert useful_primers([few_shot, question_stem, long_question], block_size=32) == [few_shot, long_question[:96]]


def test_primers_never_reach_into_a_continuation():
    """Choices sharing their first tokens make a trie branch point inside the continuations; priming
    it would cache rows the choices must compute. The primer stops before the continuation."""
    context = tuple(range(1000, 1062))  # 62 tokens: the continuations cross the 64-token boundary
    choices = [(7, 8, 9, 10, 11), (7, 8, 9, 10, 12), (7, 8, 9, 13)]
    plan = plan_scoring([ScoreRequest(context, choice) for choice in choices], max_length=4096, block_size=32)
    primers = [query for query in plan.queries if isinstance(query, PrefixPrimer)]
    assert [primer.tokens for primer in primers] == [context[:32]]
    sequences = [query for query in plan.queries if isinstance(query, SequenceQuery)]
    assert all(query.first_scored == len(context) for query in sequences)


def test_a_continuation_runs_before_a_deeper_primer_that_would_cover_it():
    """HellaSwag: a later context repeats an earlier context and its ending. The later context's
    primer covers the earlier continuation, so the earlier continuations must be scored first."""
    first_context = tuple(range(1000, 1070))
    ending = tuple(range(2000, 2030))
    later_context = first_context + ending + tuple(range(3000, 3050))
    requests = [ScoreRequest(first_context, ending), ScoreRequest(first_context, (7, 8, 9))]
    requests += [ScoreRequest(later_context, (10 + i, 11 + i)) for i in range(3)]
    plan = plan_scoring(requests, max_length=4096, block_size=32)
    wave_of = {}
    for number, wave in enumerate(plan.waves):
        for query in wave:
            wave_of[query.tokens] = number
    covering = later_context[: len(later_context) // 32 * 32]
    assert covering in wave_of  # the later context is primed (three choices share it)
    for request in requests[:2]:
        assert wave_of[request.context + request.continuation] < wave_of[covering]
    for request in requests[2:]:
        assert wave_of[request.context + request.continuation] > wave_of[covering]
