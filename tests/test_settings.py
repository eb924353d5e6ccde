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


def test_model_args_are_read_as_lm_eval_reads_them():
    """One parser for `lm_eval --model_args`, `sweep --model-args`, doctor and parity: lm-eval's typing."""
    import pytest
    from lm_eval.utils import simple_parse_args_string

    from e2lm_vllm.settings import ModelArgsError, parse_model_args

    text = "pretrained=/m,max_model_len=512,enforce_eager=false,seed=-1,gpu_memory_utilization=1e-1,revision='0002000',tokenizer=None,dtype=float32"
    assert parse_model_args(text) == simple_parse_args_string(text)
    assert parse_model_args(text)["revision"] == "0002000" and parse_model_args(text)["gpu_memory_utilization"] == 0.1
    assert parse_model_args("") == parse_model_args(None) == {}
    with pytest.raises(ModelArgsError, match=r"expected key=value in model args, got 'dtype'"):
        parse_model_args("pretrained=/m,dtype")


def test_located_settings_are_the_model_args_of_that_checkpoint():
    """A sweep worker adds a checkpoint to settings validated on the driver, and gets what lm_eval would build."""
    from e2lm_vllm.settings import EngineSettings, ModelArgs

    flat = {"dtype": "float32", "max_model_len": 512, "check_weights": False}
    located = EngineSettings.from_kwargs(flat).located("org/m", subfolder="iter_1")
    assert located == ModelArgs.from_kwargs({**flat, "pretrained": "org/m", "subfolder": "iter_1"})
    assert located.overrides() == {**flat, "pretrained": "org/m", "subfolder": "iter_1"}
