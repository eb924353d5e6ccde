"""The parity verdict (`e2lm_vllm.proof.parity.compare`): tolerance per request, scaled with length."""

from __future__ import annotations

from e2lm_vllm.proof.parity import TOKENS_PER_TOLERANCE, compare


def _results(logprobs: list[float], continuations: list[str]) -> dict:
    samples = [
        {
            "doc_id": 0,
            "arguments": [("Question: which?\nAnswer:", continuation) for continuation in continuations],
            "resps": [[(logprob, False)] for logprob in logprobs],
        }
    ]
    return {
        "samples": {"task": samples},
        "configs": {"task": {"output_type": "multiple_choice"}},
        "results": {"task": {"acc,none": 1.0}},
    }


def _words(text: str) -> list[str]:  # a whitespace tokenizer: one token per word
    return text.split()


def test_long_continuations_may_differ_by_float32_noise_that_grows_with_length():
    long_answer = " " + " ".join(["word"] * (3 * TOKENS_PER_TOLERANCE))
    reference = _results([-10.0, -40.0], [" yes", long_answer])
    ours = _results([-10.0 + 5e-5, -40.0 + 2.5e-4], [" yes", long_answer])
    report = compare(ours, reference, 1e-4, _words)
    assert report.ok
    assert abs(report.max_abs_diff - 2.5e-4) < 1e-9
    assert 0.8 < report.request_types[0].max_diff_over_allowed < 0.9  # 2.5e-4 of 3e-4 allowed


def test_a_short_continuation_off_by_more_than_the_tolerance_fails():
    reference = _results([-10.0, -12.0], [" yes", " no"])
    ours = _results([-10.0, -12.0 + 2e-4], [" yes", " no"])
    report = compare(ours, reference, 1e-4, _words)
    assert not report.ok and not report.within_tolerance
    assert report.metrics_equal


# -- the criterion of `e2lm-vllm parity`: the same engine without prefix reuse, then HF ----------

import math  # noqa: E402

import pytest  # noqa: E402

from e2lm_vllm.proof.parity import TOLERANCES, hf_distances, tolerance_for  # noqa: E402


def test_tolerance_by_dtype():
    assert tolerance_for("float32") == tolerance_for("torch.float32") == tolerance_for("float") == TOLERANCES["float32"]
    assert 4.0e-5 < TOLERANCES["float32"] <= 1e-4  # above the measured float32 noise
    assert tolerance_for("bfloat16") == tolerance_for("torch.float16") == TOLERANCES["bfloat16"]
    assert 0.366 < TOLERANCES["bfloat16"] <= 0.5  # above the measured bf16 maximum (SmolLM2, native avx512_bf16)
    with pytest.raises(ValueError):
        tolerance_for("int8")


def test_at_zero_tolerance_one_float32_ulp_fails():
    reference = _results([-10.0, -40.0], [" yes", " no"])
    assert compare(_results([-10.0, -40.0], [" yes", " no"]), reference, 0.0, _words).ok
    ulp = math.ulp(10.0) * 2**29  # one float32 ulp at 10: what a reduction-order change moves
    report = compare(_results([-10.0 + ulp, -40.0], [" yes", " no"]), reference, 0.0, _words)
    assert not report.ok and report.request_types[0].max_diff_over_allowed > 50  # allowed: float64 rounding only


def test_bf16_rounding_flips_pass_and_a_dropped_token_fails():
    reference = _results([-1.55, -12.0], [" yes", " no"])
    flipped = _results([-1.55 + 0.151, -12.0 - 1e-3], [" yes", " no"])  # the measured worst
    assert compare(flipped, reference, TOLERANCES["bfloat16"], _words).ok
    dropped = _results([-1.55, -12.0 + 1.0], [" yes", " no"])  # a planner that loses one token's row
    assert not compare(dropped, reference, TOLERANCES["bfloat16"], _words).ok


def test_sums_of_the_same_rows_in_another_order_count_as_equal():
    rows = [-0.1, -2.3, -7.7, -1e-3] * 5
    forward, backward = sum(rows), sum(reversed(rows))
    report = compare(_results([forward], [" a"]), _results([backward], [" a"]), 0.0, _words)
    assert report.ok


def test_distance_to_hf_may_not_exceed_the_references_by_more_than_the_tolerance():
    hf = _results([-10.0, -12.0], [" yes", " no"])
    reference = _results([-10.1, -12.1], [" yes", " no"])  # the engine is 0.1 nats from HF (bf16-like)
    close = _results([-10.1 + 1e-5, -12.1], [" yes", " no"])
    rows = hf_distances(close, reference, hf, 1e-4, _words)
    assert [row.ok for row in rows] == [True]
    assert abs(rows[0].max_abs_diff - 0.1) < 1e-4 and abs(rows[0].reference_max_abs_diff - 0.1) < 1e-9
    farther = _results([-10.2, -12.1], [" yes", " no"])
    rows = hf_distances(farther, reference, hf, 1e-4, _words)
    assert [row.ok for row in rows] == [False]
    report = compare(farther, reference, 1e-4, _words, reference="vllm")
    report.hf = rows
    assert not report.ok and not report.hf_ok and report.to_json()["hf"][0]["ok"] is False
