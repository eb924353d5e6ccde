"""The executors the driver runs a sweep's units on: each implements the whole `Executor` interface, and
each `worker_lifetime` the config accepts has its Ray executor. Fast: no Ray, no engine started (the
executors at work: tests/test_sweep_ray.py, test_sweep_robust_ray.py, test_sweep_multinode.py)."""

from __future__ import annotations

import inspect
import typing

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
