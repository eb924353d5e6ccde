"""`data_parallel_size=2` on real engines (two Ray actors on a local Ray, vLLM on the CPU) against one engine.

Model: the tiny random model of SmolLM2's architecture (tests/conftest.py): splitting work between
engines is a matter of mechanics, exact whatever the weights.

Four "few-shot" families of requests (each shares a long prefix) in chunks of 6 requests, so that
there are clean cuts for the two engines. The results must equal one engine's to 1e-6 (measured:
0.0), whatever order the requests come in, and both engines must have scored something.
"""

from __future__ import annotations

import random

import pytest

pytestmark = [pytest.mark.engine, pytest.mark.ray, pytest.mark.slow]

MAX_LENGTH = 256
CHUNK = 6  # requests per plan: small, so that four families make several chunks each
FAMILIES = (
    "The following are questions about astronomy, each followed by its answer.",
    "Read the recipe below and answer the question about cooking that follows it.",
    "Here is a passage from a history book about the Roman Empire and its provinces.",
    "Translate each English sentence into plain, simple English for a young reader.",
)
QUESTIONS = ("What is the largest planet?", "Why is the sky blue?", "Who wrote it?", "When did it end?")
CHOICES = (" Jupiter", " because of scattering", " an unknown author", " in the fifth century")


@pytest.fixture(scope="module")
def one_engine_lm(tiny_llama_path):
    from e2lm_vllm.lm import E2LMVLLM

    lm = E2LMVLLM(pretrained=str(tiny_llama_path), dtype="float32", max_model_len=MAX_LENGTH, backend="vllm")
    yield lm
    lm.shutdown()


@pytest.fixture(scope="module")
def requests_(one_engine_lm) -> list[tuple[None, list[int], list[int]]]:
    requests = []
    for family in FAMILIES:
        prefix = family + " " + family  # well past one 32-token cache block
        for question in QUESTIONS:
            context = [one_engine_lm.prefix_token_id, *one_engine_lm.tok_encode(f"{prefix}\nQuestion: {question}\nAnswer:")]
            for choice in CHOICES:
                requests.append((None, context, one_engine_lm.tok_encode(choice)))
    return requests


@pytest.fixture(scope="module")
def small_chunks():
    import e2lm_vllm.lm

    saved = e2lm_vllm.lm.PLAN_CHUNK_REQUESTS
    e2lm_vllm.lm.PLAN_CHUNK_REQUESTS = CHUNK
    yield
    e2lm_vllm.lm.PLAN_CHUNK_REQUESTS = saved


@pytest.fixture(scope="module")
def parallel_lm(tiny_llama_path, small_chunks):
    import ray

    from e2lm_vllm.lm import E2LMVLLM

    lm = E2LMVLLM(pretrained=str(tiny_llama_path), dtype="float32", max_model_len=MAX_LENGTH, data_parallel_size=2)
    yield lm
    lm.shutdown()
    ray.shutdown()


def test_two_engines_score_as_one(one_engine_lm, parallel_lm, requests_, small_chunks) -> None:
    from e2lm_vllm.engine.data_parallel import DataParallelEngine
    from e2lm_vllm.engine.protocol import ScoringEngine

    assert isinstance(parallel_lm.engine, DataParallelEngine) and len(parallel_lm.engine.actors) == 2
    assert isinstance(parallel_lm.engine, ScoringEngine) and parallel_lm.engine.dtype == one_engine_lm.engine.dtype == "float32"
    one = one_engine_lm._loglikelihood_tokens(requests_, disable_tqdm=True)
    two = parallel_lm._loglikelihood_tokens(requests_, disable_tqdm=True)
    assert len(one) == len(two) == 64
    for (logprob_one, greedy_one), (logprob_two, greedy_two) in zip(one, two):
        assert logprob_two == pytest.approx(logprob_one, abs=1e-6)
        assert greedy_two == greedy_one
    # Both engines worked: each one's own counters saw requests.
    per_engine = parallel_lm.engine.ray.get([engine.stats.remote() for engine in parallel_lm.engine.actors])
    assert all(stats["requests"] > 0 for stats in per_engine), per_engine
    assert parallel_lm.engine.stats.requests == sum(stats["requests"] for stats in per_engine)
    # vLLM's own counters, summed over the engines, saw at least the prompts the engines accounted.
    assert parallel_lm.engine.counter_totals()["vllm:prompt_tokens"] >= parallel_lm.engine.stats.prompt_tokens > 0

    shuffled = list(range(len(requests_)))
    random.Random(0).shuffle(shuffled)
    again = parallel_lm._loglikelihood_tokens([requests_[i] for i in shuffled], disable_tqdm=True)
    for position, index in enumerate(shuffled):
        assert again[position][0] == pytest.approx(two[index][0], abs=1e-6)


def test_two_engines_generate_as_one(one_engine_lm, parallel_lm) -> None:
    from lm_eval.api.instance import Instance

    contexts = ["The capital of France is", "Once upon a time,", "def add(a, b):", "1, 2, 3, 4,", "The sky is"]
    requests = [
        Instance("generate_until", {}, (context, {"until": ["\n"], "max_gen_toks": 8}), index)
        for index, context in enumerate(contexts)
    ]
    assert parallel_lm.generate_until(requests, disable_tqdm=True) == one_engine_lm.generate_until(requests, disable_tqdm=True)

