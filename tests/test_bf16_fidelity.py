"""bfloat16 fidelity: `e2lm_vllm` in bf16 equals lm-eval's own `vllm` model in bf16.

Pinned on a small held-out set of the bundled samples (subjects and tasks that neither the doctor's
parity run nor the other engine tests read), through `e2lm_vllm.proof.parity.run_parity`: two engines,
one after the other (ours, then lm-eval's `vllm` with the same settings and prefix caching off),
no HF. The criterion is `TOLERANCES["bfloat16"]` per request, and a mean |Δ| well below it
(measured on this set: max 0.151 nats, mean 0.0148 with bfloat16 emulated; max 0.366, mean 0.096
with native avx512_bf16, where lm-eval's `vllm` differs from itself by 0.14 on average across batch
shapes; see `e2lm_vllm.proof.parity`).
"""

from __future__ import annotations

import json
import os

import pytest

from e2lm_vllm.proof.parity import TOLERANCES

pytestmark = [pytest.mark.engine, pytest.mark.slow]

HELD_OUT_TASKS = {  # task -> shots
    "sample_mmlu_letter_nutrition": 5,  # letters: one decode step per question after a primed 5-shot block
    "sample_mmlu_cloze_world_religions": 5,  # answer texts after a shared 5-shot block and question
    "sample_arc_challenge": 0,
    "sample_piqa": 0,  # long solutions: many rows per continuation
}
LIMIT = 3
MEAN_BOUND = 0.15  # nats: lm-eval's own `vllm` in native bf16 at max_num_seqs 1 vs 64 differs by 0.14 on average


def test_bf16_equals_lm_evals_vllm_within_the_bf16_tolerance(smollm2_path, monkeypatch):
    from e2lm_vllm.proof.parity import run_parity
    from e2lm_vllm.taskdata import include_path_for

    if "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ:  # an engine in this process starts faster
        monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    report = run_parity(
        {"pretrained": str(smollm2_path), "dtype": "bfloat16", "max_model_len": 2048},
        list(HELD_OUT_TASKS),
        include_path=include_path_for("samples"),
        limit=LIMIT,
        num_fewshot=HELD_OUT_TASKS,
        with_hf=False,
    )
    summary = json.dumps(report.to_json()["request_types"])
    assert report.dtype == "bfloat16" and report.reference == "vllm"
    assert report.tolerance == TOLERANCES["bfloat16"]
    assert sorted(report.tasks) == sorted(HELD_OUT_TASKS)
    (scored,) = report.request_types
    assert scored.n >= LIMIT * (4 + 4 + 3 + 2), summary  # every choice of every document
    assert report.max_abs_diff <= TOLERANCES["bfloat16"], summary
    # on average well below the per-request bound: within the reference's own distance to itself
    # at another batch shape (0.14 measured with native bf16; 0.0148 and 0.096 measured here)
    assert scored.mean_abs_diff <= MEAN_BOUND, summary
    assert scored.is_greedy_agreement >= 0.9, summary  # measured 40 of 42
    assert report.within_tolerance and report.ok and not report.metrics_checked, summary
    print(f"bf16 held-out set: max |Δ| {report.max_abs_diff:.3g} nats, mean {scored.mean_abs_diff:.3g}, n {scored.n}")
