"""How `data_parallel_size` splits the planner's work: pure functions, no engine.

The engine test (results equal to one engine) is in tests/test_data_parallel_engine.py.
"""

from __future__ import annotations

from e2lm_vllm.engine.data_parallel import clean_cuts, first_blocks, shard_plans, split_evenly
from e2lm_vllm.engine.planner import plan_scoring
from e2lm_vllm.engine.types import ScoreRequest

BLOCK = 4


def _plan(prefix: tuple[int, ...], questions: range):
    """A few-shot style chunk: every request starts with `prefix`, then its question and 2 choices."""
    requests = [
        ScoreRequest(prefix + (100 + question, 101 + question), (choice,))
        for question in questions
        for choice in (7, 8)
    ]
    return plan_scoring(requests, max_length=64, block_size=BLOCK)


def test_cuts_fall_only_between_chunks_that_share_no_first_block() -> None:
    shared_a = (1, 2, 3, 4, 5, 6)
    shared_b = (9, 9, 9, 9, 9, 9)
    plans = [_plan(shared_a, range(0, 3)), _plan(shared_a, range(3, 6)), _plan(shared_b, range(0, 3)), _plan(shared_b, range(3, 6))]
    assert first_blocks(plans[0], BLOCK) == {shared_a[:BLOCK]}
    # Between 0|1 and 2|3 a prefix would be computed twice and read from the cache once less.
    assert clean_cuts(plans, BLOCK) == [2]
    assert shard_plans(plans, 2, BLOCK) == [range(0, 2), range(2, 4)]


def test_without_a_clean_cut_one_engine_runs_everything() -> None:
    shared = (1, 2, 3, 4, 5, 6)
    plans = [_plan(shared, range(0, 3)), _plan(shared, range(3, 6)), _plan(shared, range(6, 9))]
    assert clean_cuts(plans, BLOCK) == []
    assert shard_plans(plans, 3, BLOCK) == [range(0, 3), range(3, 3), range(3, 3)]


def test_shards_balance_work_and_cover_every_plan_once() -> None:
    # Eight families of different sizes; short prefixes of other families never share a block.
    plans = [_plan((family,) * 6, range(0, 1 + family % 3)) for family in range(1, 9)]
    assert clean_cuts(plans, BLOCK) == list(range(1, 8))
    shards = shard_plans(plans, 3, BLOCK)
    assert [index for shard in shards for index in shard] == list(range(8))
    work = [sum(plans[i].trie_tokens for i in shard) for shard in shards]
    assert max(work) <= 1.5 * sum(work) / 3, work


def test_prompts_shorter_than_a_block_never_prevent_a_cut() -> None:
    plans = [plan_scoring([ScoreRequest((1, 2), (3,))], max_length=64, block_size=BLOCK)] * 2
    assert first_blocks(plans[0], BLOCK) == set()
    assert clean_cuts(plans, BLOCK) == [1]


def test_generation_prompts_split_evenly() -> None:
    assert split_evenly(list(range(7)), 3) == [range(0, 3), range(3, 5), range(5, 7)]
    assert split_evenly([1], 3) == [range(0, 1), range(1, 1), range(1, 1)]
