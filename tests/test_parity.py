"""The parity verdict (`e2lm_vllm.parity.compare`): tolerance per request, scaled with length."""

from __future__ import annotations

from e2lm_vllm.parity import TOKENS_PER_TOLERANCE, compare


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
