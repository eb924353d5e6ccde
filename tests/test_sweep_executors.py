"""The executors the driver runs a sweep's units on: each implements the whole `Executor` interface, and
each `worker_lifetime` the config accepts has its Ray executor. Fast: no Ray, no engine started (the
executors at work: tests/test_sweep_ray.py, test_sweep_robust_ray.py, test_sweep_multinode.py)."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest

from e2lm_vllm.sweep.config import SweepConfig
from e2lm_vllm.sweep.executors import RAY_EXECUTORS, Executor, InProcessExecutor, RayActorExecutor, RayTaskExecutor


def _parameters(function: typing.Callable) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


INTERFACE_METHODS = {name: value for name, value in vars(Executor).items() if inspect.isfunction(value) and not name.startswith("_")}


@pytest.mark.parametrize("executor", [RayActorExecutor, RayTaskExecutor, InProcessExecutor], ids=lambda kind: kind.__name__)
def test_each_executor_has_every_member_of_the_interface_with_its_parameters(executor):
    assert set(INTERFACE_METHODS) == {"describe", "submit", "wait", "get", "abandon", "replace_if_dead", "shutdown"}
    for name, method in INTERFACE_METHODS.items():
        assert name in dir(executor), f"{executor.__name__} lacks {name}"
        assert _parameters(getattr(executor, name)) == _parameters(method), f"{executor.__name__}.{name}"
    declared = {name for kind in executor.__mro__ for name in getattr(kind, "__annotations__", {})} | set(dir(executor))
    assert {"count", "checkpoint_timeout_s"} <= declared


def test_every_worker_lifetime_has_its_ray_executor():
    lifetimes = typing.get_args(SweepConfig.model_fields["worker_lifetime"].annotation)
    assert set(RAY_EXECUTORS) == set(lifetimes) == {"sweep", "checkpoint"}
    assert (RAY_EXECUTORS["sweep"], RAY_EXECUTORS["checkpoint"]) == (RayActorExecutor, RayTaskExecutor)


class _FailingExecutor:
    """An `Executor` whose every unit raises: the driver's retries, without Ray or an engine (those: tests/test_sweep_ray.py)."""

    count = 1
    checkpoint_timeout_s = None

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def describe(self) -> str:
        return "1 failing worker"

    def submit(self, index, unit):
        self.submitted.append(unit.label)
        return len(self.submitted)

    def wait(self, refs, timeout=None):
        return refs[:1]

    def get(self, ref):
        raise RuntimeError(f"attempt {ref} failed")

    def abandon(self, index, ref) -> None:
        pass

    def replace_if_dead(self, index, error) -> None:
        pass

    def shutdown(self) -> None:
        pass


def test_the_driver_retries_a_failing_unit_max_attempts_times_then_records_each_cell_once(tmp_path, monkeypatch):
    from e2lm_vllm.sweep import executors
    from e2lm_vllm.sweep.cells import build_plan
    from e2lm_vllm.sweep.config import config_from_flags
    from e2lm_vllm.sweep.runner import SweepSession, SweepSummary

    monkeypatch.setattr(executors, "InProcessExecutor", _FailingExecutor)
    (tmp_path / "run" / "step_1").mkdir(parents=True)
    tasks = str(Path(__file__).resolve().parent / "data" / "sweep_tasks")
    config = config_from_flags(checkpoints=[str(tmp_path / "run" / "step_1")], tasks="sweep_arc_easy, sweep_arc_letter", include_path=[tasks], output=str(tmp_path / "out"))
    config.max_attempts = 3
    plan = build_plan(config, tmp_path / "out")
    session = SweepSession(config, tmp_path / "out", executors.WorkerPool(config, None, in_process=True), SweepSummary(tmp_path / "out", len(plan.cells), 0), False)
    session.evaluate(plan)
    assert session.pool.get().submitted == [plan.units[0].label] * 3
    assert [(f["task"], f["attempts"], f["kind"], f["error"]) for f in session.failures] == [
        (task, 3, "error", "RuntimeError: attempt 3 failed") for task in ("sweep_arc_easy", "sweep_arc_letter")
    ]
