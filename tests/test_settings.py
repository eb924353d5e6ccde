"""Engine defaults that do not need an engine: the environment vLLM reads at start."""

from __future__ import annotations

from e2lm_vllm.settings import SMALL_CPU_MACHINE_CORES, engine_environment


def test_small_cpu_machines_give_the_engine_every_core():
    environment = engine_environment(on_cpu=True, cpu_count=2)
    assert environment["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"


def test_large_cpu_machines_and_gpus_keep_vllms_scheduler_core():
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in engine_environment(on_cpu=True, cpu_count=SMALL_CPU_MACHINE_CORES + 1)
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in engine_environment(on_cpu=False, cpu_count=2)


def test_vllm_logs_go_to_stderr_so_stdout_stays_parseable():
    for on_cpu in (True, False):
        assert engine_environment(on_cpu=on_cpu, cpu_count=2)["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"
