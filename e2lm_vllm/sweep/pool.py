"""Where a sweep's units run: long-lived Ray actors, a Ray task per unit, or one worker in this process.

All three take a unit and give back a `UnitResult` or the unit's error; the driver (`runner`)
decides what runs where and retries.
"""

from __future__ import annotations

import os
from typing import Any

from e2lm_vllm.config import LONG_LIVED_WORKER_ENVIRONMENT
from e2lm_vllm.sweep.config import SweepConfig, SweepConfigError
from e2lm_vllm.sweep.plan import WorkUnit
from e2lm_vllm.sweep.worker import RaySweepWorker, SweepWorker, UnitResult, evaluate_unit

# Environment a worker inherits from the driver: offline switches, caches, vLLM and HF settings.
PASSED_ENV_PREFIXES = ("HF_", "VLLM_", "TRANSFORMERS_", "HUGGINGFACE_")


def init_ray(address: str | None) -> Any:
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        elif os.environ.get("RAY_ADDRESS"):
            ray.init()  # inside `ray job submit`, or a user-chosen cluster
        else:
            # A fresh local Ray for `e2lm-vllm sweep`, never someone else's cluster on this machine.
            ray.init(address="local", include_dashboard=False)
    return ray


def worker_options(config: SweepConfig, ray: Any) -> tuple[int, dict[str, Any]]:
    """How many workers, and the Ray options of each: GPUs for one engine, its share of the CPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    gpus_per_worker = config.engine.tensor_parallel_size if gpus else 0
    if gpus_per_worker > gpus:
        raise SweepConfigError(
            f"engine.tensor_parallel_size: expected at most the cluster's {gpus} GPUs, got {gpus_per_worker}"
        )
    workers = config.workers or (gpus // gpus_per_worker if gpus else 1)
    cpus_per_worker = config.cpus_per_worker or max(1, cpus // workers)
    if cpus_per_worker > cpus:
        raise SweepConfigError(f"cpus_per_worker: expected at most the cluster's {cpus} CPUs, got {cpus_per_worker}")
    env = {key: value for key, value in os.environ.items() if key.startswith(PASSED_ENV_PREFIXES)}
    # Ray pins workers to one thread unless told otherwise; a CPU engine needs all its cores.
    env.update(
        {
            "OMP_NUM_THREADS": str(cpus_per_worker),
            "MKL_NUM_THREADS": str(cpus_per_worker),
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    if config.worker_lifetime == "sweep":
        env.update(LONG_LIVED_WORKER_ENVIRONMENT)
    options = {"num_cpus": cpus_per_worker, "num_gpus": gpus_per_worker, "runtime_env": {"env_vars": env}}
    return workers, options


class RayWorkers:
    """Long-lived Ray actors (`worker_lifetime: sweep`), or a Ray task per unit (`checkpoint`).

    The driver retries, not Ray, so that both kinds count attempts alike. An actor that died (killed,
    out of memory) is replaced by a new one at once; its unit goes back to the driver's queue.
    """

    def __init__(self, config: SweepConfig, address: str | None):
        self.ray = init_ray(address)
        self.count, options = worker_options(config, self.ray)
        self.options = options
        self.lifetime = config.worker_lifetime
        if self.lifetime == "sweep":
            self.actor = self.ray.remote(RaySweepWorker).options(max_restarts=0, max_task_retries=0, **options)
            self.actors: list[Any] = [self.actor.remote() for _ in range(self.count)]
        else:
            # max_calls=1: a fresh process per checkpoint, so memory is released between engines.
            self.task = self.ray.remote(max_calls=1, max_retries=0)(evaluate_unit)

    def describe(self) -> str:
        gpus = f" + {self.options['num_gpus']} GPU" if self.options["num_gpus"] else ""
        kind = "long-lived" if self.lifetime == "sweep" else "per-checkpoint"
        return f"{self.count} {kind} Ray workers x {self.options['num_cpus']} CPUs{gpus}"

    def submit(self, index: int, unit: WorkUnit) -> Any:
        if self.lifetime == "sweep":
            return self.actors[index].evaluate.remote(unit)
        return self.task.options(name=f"sweep {unit.label}", **self.options).remote(unit)

    def replace_if_dead(self, index: int, error: BaseException) -> None:
        if self.lifetime == "sweep" and isinstance(error, self.ray.exceptions.RayActorError):
            self.ray.kill(self.actors[index])
            self.actors[index] = self.actor.remote()

    def wait(self, refs: list[Any]) -> list[Any]:
        return self.ray.wait(refs, num_returns=1)[0]

    def get(self, ref: Any) -> UnitResult:
        return self.ray.get(ref)

    def shutdown(self) -> None:
        if self.lifetime == "sweep":
            for actor in self.actors:
                self.ray.kill(actor)


class InProcessWorker:
    """One `SweepWorker` in the driver's process, no Ray: for a single machine's small jobs (the curriculum ladder)."""

    count = 1

    def __init__(self) -> None:
        for name, value in LONG_LIVED_WORKER_ENVIRONMENT.items():
            os.environ.setdefault(name, value)  # before vLLM starts its first engine in this process
        self.worker = SweepWorker()
        self.done: dict[int, tuple[UnitResult | None, BaseException | None]] = {}

    def describe(self) -> str:
        return "1 worker in this process"

    def submit(self, index: int, unit: WorkUnit) -> int:
        token = len(self.done)
        try:
            self.done[token] = (self.worker.evaluate(unit), None)
        except Exception as error:  # noqa: BLE001 - handed to the driver loop like a Ray task's error
            self.done[token] = (None, error)
        return token

    def wait(self, refs: list[int]) -> list[int]:
        return refs[:1]

    def replace_if_dead(self, index: int, error: BaseException) -> None:
        """Nothing to replace: an error in this process is the unit's, the worker lives on."""

    def get(self, ref: int) -> UnitResult:
        result, error = self.done.pop(ref)
        if error is not None:
            raise error
        assert result is not None
        return result

    def shutdown(self) -> None:
        self.worker.shutdown()
