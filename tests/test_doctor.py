"""`e2lm-vllm doctor`: the verdict logic without an engine, and one real run on the embedded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e2lm_vllm.proof.doctor import (
    FAIL,
    PASS,
    SKIP,
    Benchmark,
    Check,
    DoctorReport,
    benchmark_check,
    bf16_decision,
    format_doctor,
    parity_check,
    parity_limit,
    time_rounds,
    verdict,
)
from e2lm_vllm.proof.parity import HFDistance, ParityReport, RequestTypeParity

REPO_ROOT = Path(__file__).resolve().parents[1]


def _parity(*, diff: float, allowed_share: float, ours_to_hf: float = 0.1, theirs_to_hf: float = 0.1) -> ParityReport:
    report = ParityReport(
        tasks=["sample_arc_easy"],
        tolerance=2.5e-5,
        max_abs_diff=diff,
        metrics_equal=True,
        within_tolerance=allowed_share <= 1.0,
        request_types=[RequestTypeParity("multiple_choice", 16, diff, diff / 2, allowed_share)],
        reference="vllm",
        dtype="float32",
    )
    report.hf = [HFDistance("multiple_choice", 16, ours_to_hf, ours_to_hf / 2, theirs_to_hf, theirs_to_hf / 2, 2.5e-5, 2.5e-5)]
    return report


def test_verdict_passes_only_without_failures_and_with_something_passed():
    assert verdict([Check("a", PASS, ""), Check("b", SKIP, "")]) == PASS
    assert verdict([Check("a", PASS, ""), Check("b", FAIL, "")]) == FAIL
    assert verdict([Check("a", SKIP, "")]) == FAIL  # nothing checked is not a clean bill of health
    assert verdict([]) == FAIL


def test_parity_rows_fail_on_the_reference_or_on_the_distance_to_hf():
    assert parity_check(_parity(diff=3e-6, allowed_share=0.12)).status == PASS
    assert parity_check(_parity(diff=3e-4, allowed_share=12.0)).status == FAIL
    farther = parity_check(_parity(diff=3e-6, allowed_share=0.12, ours_to_hf=0.3))
    assert farther.status == FAIL and "LARGER" in farther.detail
    row = parity_check(_parity(diff=3e-6, allowed_share=0.12))
    assert row.name == "parity float32" and row.data["ok"] is True and row.data["reference"] == "vllm"


def test_a_report_with_one_failed_check_fails_as_a_whole_and_prints_it():
    report = DoctorReport(
        {"device": "cpu"},
        [Check("platform", PASS, "cpu"), parity_check(_parity(diff=3e-4, allowed_share=12.0)), Check("benchmark", SKIP, "not run")],
    )
    assert not report.ok and report.to_json()["verdict"] == FAIL
    assert list(report.to_json())[:2] == ["verdict", "ok"]  # the answer before the details
    text = format_doctor(report)
    assert "parity float32    FAIL" in text
    assert text.splitlines()[0].split() == ["overall", "FAIL", "1", "passed,", "1", "failed,", "1", "skipped"]


AVX2_EPYC = frozenset({"sse4_2", "avx", "avx2", "fma"})  # the machine of issue 23: bf16 emulated
AVX512_BF16_XEON = AVX2_EPYC | {"avx512f", "avx512_bf16"}
AMX_XEON = AVX2_EPYC | {"avx512f", "amx_tile", "amx_bf16"}


def test_bf16_parity_runs_by_default_only_where_bf16_is_native():
    emulated = bf16_decision("cpu", AVX2_EPYC)
    assert not emulated.run and "emulated" in emulated.reason and "--dtypes float32,bfloat16" in emulated.reason
    assert not bf16_decision("cpu", AVX2_EPYC | {"avx512f"}).run  # AVX512 without its bf16 extension
    assert not bf16_decision("cpu", frozenset()).run  # no /proc/cpuinfo: assume the slow kind
    assert bf16_decision("cpu", AVX512_BF16_XEON).run
    assert bf16_decision("cpu", AMX_XEON).run
    assert bf16_decision("cuda", frozenset(), cuda_bf16=True).run
    assert not bf16_decision("cuda", AMX_XEON, cuda_bf16=False).run  # a GPU's answer, not the host CPU's


def test_parity_reads_fewer_documents_on_a_cpu_without_avx512():
    assert parity_limit("cpu", AVX2_EPYC) < parity_limit("cpu", AVX512_BF16_XEON) == parity_limit("cuda", AVX2_EPYC)


class _FakeLM:
    """Takes one second per request on a fake clock."""

    def __init__(self, clock: list[float]):
        self.clock, self.calls = clock, []

    def loglikelihood(self, requests, disable_tqdm=False):
        self.calls.append(len(requests))
        self.clock[0] += len(requests)
        return [(0.0, True)] * len(requests)


def test_rounds_run_while_the_next_one_fits_in_the_budget(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("e2lm_vllm.proof.doctor.time.perf_counter", lambda: clock[0])
    rounds = [["r"] * n for n in (4, 8, 16, 32)]
    lm = _FakeLM(clock)
    assert time_rounds(lm, rounds, seconds=20) == [4.0, 8.0]  # 4 + 8 + a predicted 16 > 20
    assert time_rounds(_FakeLM(clock), rounds, seconds=1) == [4.0]  # the first round always runs
    assert time_rounds(_FakeLM(clock), rounds, seconds=100, max_rounds=3) == [4.0, 8.0, 16.0]


def test_benchmark_compares_the_reference_on_the_rounds_both_ran():
    bench = Benchmark([["r"] * 4, ["r"] * 8], seconds=60)
    bench.times = {"e2lm_vllm": [1.0, 2.0], "vllm": [4.0]}
    summary = bench.summary()
    assert summary["e2lm_vllm"] == {"rounds": 2, "requests": 12, "seconds": 3.0, "requests_per_s": 4.0}
    assert summary["vllm"]["requests"] == 4 and summary["speedup_vs_vllm"] == 4.0
    check = benchmark_check(bench)
    assert check.status == PASS and "4.0x" in check.detail
    assert benchmark_check(None).status == SKIP
    assert benchmark_check(bench, "could not build").status == FAIL


@pytest.mark.engine
@pytest.mark.slow
def test_doctor_on_the_embedded_model_passes(smollm2_path):
    """The real command, tiny: one document per parity task, float32, the shortest benchmark."""
    environment = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    # e2lm_vllm's speed only: the reference's requests/s and the speed-up are pinned without an engine above
    command = [sys.executable, "-m", "e2lm_vllm.cli", "doctor", "--json", "--dtypes", "float32", "--limit", "1",
               "--bench-seconds", "1", "--no-bench-reference", "--pretrained", str(smollm2_path)]  # fmt: skip
    # `python -m` from the repo root imports this checkout's package
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=environment, timeout=1200)
    assert completed.stdout, completed.stderr[-3000:]
    report = json.loads(completed.stdout)
    assert next(iter(report)) == "verdict", list(report)
    assert "parity float32: PASS" in completed.stderr  # progress lines while it works
    names = [check["name"] for check in report["checks"]]
    assert names == ["platform", "parity float32", "benchmark"], report
    platform = report["platform"]
    for key in ("device", "device_name", "vllm", "vllm_build", "torch", "block_size", "bf16", "bf16_native", "cpu_flags"):
        assert key in platform, key
    assert {"avx2", "avx512f", "avx512_bf16", "amx_bf16"} <= set(platform["cpu_flags"])
    assert platform["block_size"] in (16, 32)
    parity = report["checks"][1]["data"]
    assert parity["reference"] == "vllm" and parity["dtype"] == "float32" and parity["hf"], parity
    assert {row["request_type"] for row in parity["request_types"]} == {
        "generate_until", "loglikelihood_rolling", "multiple_choice"
    }  # fmt: skip
    bench = report["checks"][2]["data"]
    assert bench["e2lm_vllm"]["requests"] > 0 and "vllm" not in bench
    for check in report["checks"]:
        print(f"{check['name']:<16}{check['status']:<6}{check['detail']}")
    assert report["verdict"] == PASS and report["ok"], json.dumps(report["checks"], indent=1)[:4000]
    assert completed.returncode == 0
