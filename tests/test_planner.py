"""The request planner: exact HF truncation, trie counts, shared prefixes and waves (no engine)."""

from __future__ import annotations

import random

import pytest

from e2lm_vllm.engine.planner import (
    nesting_levels,
    plan_scoring,
    shared_prefixes,
    trie_token_count,
    truncate_like_hf,
)
from e2lm_vllm.engine.types import NextTokenQuery, PrefixPrimer, ScoreRequest, SequenceQuery


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
    from e2lm_vllm.engine.planner import useful_primers

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


# --- running a plan on a fake engine with vLLM's prefix-cache behaviour -----------------------------


class PrefixCachingFakeEngine:
    """A `ScoringEngine` without vLLM: a made-up model (each context gives a seeded random
    distribution over `VOCAB` tokens) behind a prefix cache that behaves as vLLM's does.

    - The cache holds whole blocks of `block_size` tokens; a prompt reads the longest cached run of
      its whole blocks, but at least its last token is computed (vLLM's `num_tokens - 1` cap).
    - Prompts of one call run in order, so a later one reads the blocks an earlier one filled.
    - Prompt-logprob row `p` needs the logits of token `p - 1`: it is computed only when
      `p > num_cached_tokens`; the rows before are never returned (vLLM leaves them unfilled).
    """

    VOCAB = 24

    def __init__(self, block_size: int = 4, model_seed: int = 0):
        from e2lm_vllm.engine.types import EngineStats

        self.block_size = block_size
        self.max_model_len = 4096
        self.dtype = "float32"
        self.llm_kwargs = {"model": "made-up"}
        self.stats = EngineStats()
        self.model_seed = model_seed
        self.cached_blocks: set[tuple[int, ...]] = set()

    # the made-up model
    def logprobs(self, context: tuple[int, ...]) -> list[float]:
        import math

        generator = random.Random(hash((self.model_seed, context)))
        logits = [generator.gauss(0.0, 2.0) for _ in range(self.VOCAB)]
        top = max(logits)
        norm = top + math.log(sum(math.exp(logit - top) for logit in logits))
        return [logit - norm for logit in logits]

    def row(self, tokens: tuple[int, ...], position: int) -> tuple[float, bool]:
        logprobs = self.logprobs(tokens[:position])
        return logprobs[tokens[position]], logprobs[tokens[position]] == max(logprobs)

    # the prefix cache
    def _compute(self, tokens: tuple[int, ...]) -> int:
        """Run one prompt: how many leading tokens came from the cache; its whole blocks are cached after."""
        size, cached = self.block_size, 0
        while cached + size <= len(tokens) - 1 and tokens[: cached + size] in self.cached_blocks:
            cached += size
        self.cached_blocks.update(tokens[:end] for end in range(size, len(tokens) + 1, size))
        self.stats.requests += 1
        self.stats.prompt_tokens += len(tokens)
        self.stats.cached_prefill_tokens += cached
        self.stats.computed_prefill_tokens += len(tokens) - cached
        return cached

    # planner.EngineSteps
    def prefill(self, prompts):
        for prompt in prompts:
            self._compute(tuple(prompt))

    def next_token_rows(self, queries):
        answers = []
        for query in queries:
            self._compute(query.context)
            answers.append([self.row(query.context + (token,), len(query.context)) for token in query.token_ids])
        return answers

    def prompt_rows(self, queries):
        from e2lm_vllm.engine.types import ComputedRows

        computed = []
        for query in queries:
            start = min(max(query.first_scored, self._compute(query.tokens) + 1), len(query.tokens))
            computed.append(ComputedRows(start, tuple(self.row(query.tokens, p) for p in range(start, len(query.tokens)))))
        return computed

    # ScoringEngine
    def run_plan(self, plan, progress=None):
        from e2lm_vllm.engine.planner import execute_plan

        run = execute_plan(plan, self, progress)
        self.stats.borrowed_rows += run.borrowed_rows
        self.stats.decoded_rows += run.decoded_rows
        return run.results

    def run_plans(self, plans, progress=None):
        return [self.run_plan(plan, progress) for plan in plans]

    def generate_greedy(self, prompts, *, max_tokens, stop_token_ids, options=None):
        return self.generate_sampled(prompts, max_tokens=max_tokens, stop_token_ids=stop_token_ids, seeds=[None] * len(prompts), options=options or {})

    def generate_sampled(self, prompts, *, max_tokens, stop_token_ids, seeds, options):
        import math

        generations = []
        for prompt, seed in zip(prompts, seeds):
            tokens, generated = tuple(prompt), []
            sampler = random.Random(seed)
            while len(generated) < max_tokens and (not generated or generated[-1] not in stop_token_ids):
                logprobs = self.logprobs(tokens)
                token = logprobs.index(max(logprobs)) if seed is None else sampler.choices(range(self.VOCAB), [math.exp(lp) for lp in logprobs])[0]
                generated.append(token)
                tokens += (token,)
            generations.append(generated)
        return generations

    def swap_weights(self, model_path):
        self.model_seed, self.cached_blocks = hash(model_path), set()
        return []

    def reset_prefix_cache(self):
        self.cached_blocks = set()
        return True

    def counter_totals(self):
        return {"prompt_tokens": float(self.stats.prompt_tokens), "cached_prefill_tokens": float(self.stats.cached_prefill_tokens)}

    def shutdown(self):
        self.cached_blocks = set()


def _fresh_score(engine: PrefixCachingFakeEngine, request: ScoreRequest) -> tuple[float, bool]:
    """The request as one whole prompt on a cold cache: every row computed."""
    tokens = request.context + request.continuation
    rows = [engine.row(tokens, p) for p in range(len(request.context), len(tokens))]
    return sum(logprob for logprob, _ in rows), all(greedy for _, greedy in rows)


def _cloze_requests(seed: int, block_size: int) -> list[ScoreRequest]:
    """Few-shot blocks, questions whose contexts often end on a block boundary, and answers that share
    their first tokens: every way the cache hides a continuation row."""
    generator = random.Random(seed)
    tokens = lambda n: tuple(generator.randrange(PrefixCachingFakeEngine.VOCAB) for _ in range(n))  # noqa: E731
    requests = []
    for _ in range(3):
        shots = tokens(generator.choice([2, 3]) * block_size)
        for _ in range(4):
            question = tokens(generator.choice([block_size, block_size + 1, 2 * block_size - 1]))
            stem = tokens(generator.choice([1, 2]))
            for _ in range(4):
                answer = stem[: generator.randrange(len(stem) + 1)] + tokens(generator.randint(1, 3))
                if len(answer) > 1:
                    requests.append(ScoreRequest(shots + question, answer))
    return requests


def test_fake_engine_is_a_scoring_engine():
    from e2lm_vllm.engine.protocol import ScoringEngine

    assert isinstance(PrefixCachingFakeEngine(), ScoringEngine)


@pytest.mark.parametrize("seed", range(4))
def test_plans_on_a_prefix_cache_score_as_fresh_prompts_exactly(seed):
    """Through the cache, hidden rows and their repair, every score equals the fresh prompt's, bit for bit."""
    engine = PrefixCachingFakeEngine(block_size=4)
    requests = _cloze_requests(seed, engine.block_size)
    plan = plan_scoring(requests, max_length=4096, block_size=engine.block_size)
    scored = [(result.logprob, result.is_greedy) for result in engine.run_plan(plan)]
    assert scored == [_fresh_score(engine, request) for request in requests]
    # the cache did hide rows, and both repairs ran: the equality above covers them
    assert engine.stats.borrowed_rows > 0 and engine.stats.decoded_rows > 0
    assert engine.stats.cached_prefill_tokens > 0


def test_hidden_rows_are_borrowed_from_a_sibling_else_decoded():
    from e2lm_vllm.engine.planner import repair_hidden_rows
    from e2lm_vllm.engine.types import ComputedRows

    # Two answers sharing their first token after an 8-token context: the first computed row 8, the
    # second read tokens up to 9 from the cache (rows 8 and 9 hidden). Row 9 of the second (token 7
    # after 5) was computed by no one: one decode step on context + (5,).
    context = tuple(range(8))
    first, second = SequenceQuery(context + (5, 6), 8), SequenceQuery(context + (5, 7, 3), 8)
    computed = [ComputedRows(8, ((-1.0, True), (-2.0, False))), ComputedRows(10, ((-3.0, True),))]
    repair = repair_hidden_rows([first, second], computed)
    assert repair.borrowed == {context + (5,): (-1.0, True)}
    assert [(query.context, query.token_ids) for query in repair.to_decode] == [(context + (5,), [7])]
    assert repair.num_decoded == 1
