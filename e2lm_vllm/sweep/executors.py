"""What runs a sweep's units: long-lived Ray actors, a Ray task per unit, or one worker in this process.

Each is an `Executor`: it takes a unit for one of its `count` workers and gives back a `UnitResult`
or the unit's error; the driver (`runner`) decides which unit goes to which worker, and retries,
so that every executor counts attempts alike. Where the Ray workers run is `placement`'s.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Protocol

from e2lm_vllm.cluster.ray_init import init_ray, worker_environment
from e2lm_vllm.cluster.worker_secrets import WorkerSecrets
from e2lm_vllm.settings import LONG_LIVED_WORKER_ENVIRONMENT
from e2lm_vllm.sweep.config import SweepConfig
from e2lm_vllm.sweep.placement import (
    check_paths_visible,
    cluster_nodes,
    describe_slots,
    placement_report,
    plan_slots,
    where_am_i,
)
from e2lm_vllm.sweep.types import UnitResult, WorkUnit
from e2lm_vllm.sweep.worker import RaySweepWorker, SweepWorker, evaluate_unit

# -- a worker that hangs ---------------------------------------------------------------------------


class CheckpointTimeoutError(TimeoutError):
    """A worker gave no result for a checkpoint within ``checkpoint_timeout_s``; it was killed."""

    kind = "timeout"  # `failure_kind`: retried like a dead worker's checkpoint, recorded as `timeout`


# Generous defaults, per checkpoint (start of a new worker, load or swap, every task): a hang costs
# this much device time, a false alarm a whole checkpoint. A 70B model on 8 GPUs loads in 10-20 min
# from network storage and runs a full task set in about an hour: 4 h is twice the worst of that.
# On CPU (small models, but a full MMLU of a 1B model takes hours on 16 cores): 24 h.
GPU_CHECKPOINT_TIMEOUT_S = 4 * 3600.0
CPU_CHECKPOINT_TIMEOUT_S = 24 * 3600.0


def checkpoint_timeout(config: SweepConfig, gpus: bool) -> float:
    """The config's ``checkpoint_timeout_s``, else the default for a cluster with or without GPUs."""
    if config.checkpoint_timeout_s is not None:
        return config.checkpoint_timeout_s
    return GPU_CHECKPOINT_TIMEOUT_S if gpus else CPU_CHECKPOINT_TIMEOUT_S


# -- the interface the driver uses -----------------------------------------------------------------


class Executor(Protocol):
    """``count`` workers, numbered from 0; a unit is submitted to one and its result fetched by the ref submit gave."""

    count: int
    checkpoint_timeout_s: float | None  # None: nothing can time a unit out (it runs inside `submit`)

    def describe(self) -> str:
        """The workers and where they run, for the log."""
        ...

    def submit(self, index: int, unit: WorkUnit) -> Any:
        """Start `unit` on worker `index` (idle); returns the ref that `wait` and `get` take."""
        ...

    def wait(self, refs: list[Any], timeout: float | None = None) -> list[Any]:
        """The refs of units that have finished (at least one, unless `timeout` seconds pass first)."""
        ...

    def get(self, ref: Any) -> UnitResult:
        """A finished unit's result, or its error raised."""
        ...

    def abandon(self, index: int, ref: Any) -> None:
        """Stop a unit that hangs: kill its worker's process; worker `index` is ready for another unit."""
        ...

    def replace_if_dead(self, index: int, error: BaseException) -> None:
        """After a unit's `error`: if worker `index` died of it, a new worker takes its place."""
        ...

    def shutdown(self) -> None: ...


# -- on Ray: what runs in a worker's process ------------------------------------------------------


class PlacedSweepWorker(RaySweepWorker):
    """The Ray actor of `worker_lifetime: sweep`: checks paths, and names its node in its results."""

    def __init__(self, secrets: WorkerSecrets | None = None) -> None:
        if secrets is not None:
            secrets.apply()  # before RaySweepWorker imports lm-eval and vLLM
        super().__init__()

    def evaluate(self, unit: WorkUnit) -> UnitResult:
        check_paths_visible(unit)
        return dataclasses.replace(super().evaluate(unit), host=where_am_i())

    def placement(self) -> dict[str, Any]:
        return placement_report()


def evaluate_placed_unit(unit: WorkUnit, secrets: WorkerSecrets | None = None) -> UnitResult:
    """The Ray task of `worker_lifetime: checkpoint`: paths checked before any import of lm-eval or vLLM."""
    if secrets is not None:
        secrets.apply()
    check_paths_visible(unit)
    return dataclasses.replace(evaluate_unit(unit), host=where_am_i())


# -- on Ray: the driver's side ----------------------------------------------------------------------


class RayExecutor:
    """What both Ray executors share: one worker per `WorkerSlot`, each in its own placement group for the
    whole sweep, started with the slot's CPUs, GPUs and environment (`options`); results by Ray refs.

    Ray retries nothing (the driver does).
    """

    lifetime: ClassVar[str]  # the config's `worker_lifetime` this executor runs
    kind: ClassVar[str]  # its workers, for `describe`
    count: int
    checkpoint_timeout_s: float | None

    def __init__(self, config: SweepConfig, address: str | None):
        self.ray = init_ray(address)
        self.secrets = WorkerSecrets.from_environ(os.environ)
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.slots = plan_slots(
            cluster_nodes(self.ray), config.engine.tensor_parallel_size, config.workers, config.cpus_per_worker
        )
        self.count = len(self.slots)
        self.checkpoint_timeout_s = checkpoint_timeout(config, gpus=any(slot.gpus for slot in self.slots))
        # The node id label pins a group to the node `plan_slots` counted it on (Ray 2.x default label).
        self.groups = [
            placement_group(
                slot.bundles(),
                strategy="STRICT_PACK",
                bundle_label_selector=[{"ray.io/node-id": slot.node.node_id}] * len(slot.bundles()),
            )
            for slot in self.slots
        ]
        self.options = [
            {
                "num_cpus": slot.cpus,
                "num_gpus": slot.worker_gpus,
                "runtime_env": {"env_vars": worker_environment(slot.cpus, self.lifetime)},
                # Capture: vLLM's GPU workers (tensor parallel) are this worker's children in the same group.
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    placement_group=group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
                ),
            }
            for slot, group in zip(self.slots, self.groups)
        ]

    def describe(self) -> str:
        return f"{self.count} {self.kind} Ray workers; {describe_slots(self.slots)}"

    def wait(self, refs: list[Any], timeout: float | None = None) -> list[Any]:
        return self.ray.wait(refs, num_returns=1, timeout=timeout)[0]

    def get(self, ref: Any) -> UnitResult:
        return self.ray.get(ref)

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for group in self.groups:
            remove_placement_group(group)


class RayActorExecutor(RayExecutor):
    """`worker_lifetime: sweep`: a long-lived `PlacedSweepWorker` actor per slot, which keeps its engine
    between checkpoints. An actor that died (killed, out of memory) or hung is replaced by a new one in
    the same group at once; its unit goes back to the driver's queue."""

    lifetime = "sweep"
    kind = "long-lived"

    def __init__(self, config: SweepConfig, address: str | None):
        super().__init__(config, address)
        self.actor = self.ray.remote(PlacedSweepWorker)
        self.actors: list[Any] = [self._start_actor(index) for index in range(self.count)]

    def _start_actor(self, index: int) -> Any:
        return self.actor.options(max_restarts=0, max_task_retries=0, **self.options[index]).remote(self.secrets)

    def placement(self, index: int) -> dict[str, Any]:
        """`placement_report` from inside slot `index`'s actor."""
        return self.ray.get(self.actors[index].placement.remote())

    def submit(self, index: int, unit: WorkUnit) -> Any:
        return self.actors[index].evaluate.remote(unit)

    def replace_if_dead(self, index: int, error: BaseException) -> None:
        if isinstance(error, self.ray.exceptions.RayActorError):
            self.ray.kill(self.actors[index])
            self.actors[index] = self._start_actor(index)

    def abandon(self, index: int, ref: Any) -> None:
        self.ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = self._start_actor(index)

    def shutdown(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        super().shutdown()


class RayTaskExecutor(RayExecutor):
    """`worker_lifetime: checkpoint`: a Ray task per unit (`evaluate_placed_unit`) in its slot's group, each
    in a fresh process (``max_calls=1``), so memory is released between engines."""

    lifetime = "checkpoint"
    kind = "per-checkpoint"

    def __init__(self, config: SweepConfig, address: str | None):
        super().__init__(config, address)
        self.task = self.ray.remote(max_calls=1, max_retries=0)(evaluate_placed_unit)

    def placement(self, index: int) -> dict[str, Any]:
        """`placement_report` from a task placed as slot `index`'s tasks are."""
        return self.ray.get(self.ray.remote(max_retries=0)(placement_report).options(**self.options[index]).remote())

    def submit(self, index: int, unit: WorkUnit) -> Any:
        return self.task.options(name=f"sweep {unit.label}", **self.options[index]).remote(unit, self.secrets)

    def replace_if_dead(self, index: int, error: BaseException) -> None:
        """Nothing to replace: the next unit gets a new process anyway."""

    def abandon(self, index: int, ref: Any) -> None:
        self.ray.cancel(ref, force=True)  # force: the task's process is killed, not asked


# -- in this process --------------------------------------------------------------------------------


class InProcessExecutor:
    """One `SweepWorker` in the driver's process, no Ray: for a single machine's small jobs (the curriculum ladder)."""

    count = 1
    checkpoint_timeout_s = None  # a unit runs inside submit(): nothing can time it out

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
            check_paths_visible(unit)
            self.done[token] = (self.worker.evaluate(unit), None)
        except Exception as error:  # noqa: BLE001 - handed to the driver loop like a Ray task's error
            self.done[token] = (None, error)
        return token

    def wait(self, refs: list[Any], timeout: float | None = None) -> list[Any]:
        return refs[:1]

    def get(self, ref: Any) -> UnitResult:
        result, error = self.done.pop(ref)
        if error is not None:
            raise error
        assert result is not None
        return result

    def abandon(self, index: int, ref: Any) -> None:
        """Never called: `checkpoint_timeout_s` is None here."""

    def replace_if_dead(self, index: int, error: BaseException) -> None:
        """Nothing to replace: an error in this process is the unit's, the worker lives on."""

    def shutdown(self) -> None:
        self.worker.shutdown()


RAY_EXECUTORS: dict[str, type[RayExecutor]] = {kind.lifetime: kind for kind in (RayActorExecutor, RayTaskExecutor)}


def start_executor(config: SweepConfig, address: str | None, in_process: bool) -> Executor:
    """The executor of `config.worker_lifetime` on the Ray cluster at `address`, or the one in this process."""
    if in_process:
        return InProcessExecutor()
    return RAY_EXECUTORS[config.worker_lifetime](config, address)


class WorkerPool:
    """The sweep's executor, started on first use and kept for every round of a watched run, and the
    engine each of its workers has loaded (so the driver gives it the next checkpoint of that family)."""

    def __init__(self, config: SweepConfig, address: str | None, in_process: bool):
        self.config, self.address, self.in_process = config, address, in_process
        self.workers: Executor | None = None
        self.loaded: dict[int, str | None] = {}  # worker index -> engine key of its last unit

    def get(self) -> Executor:
        if self.workers is None:
            self.workers = start_executor(self.config, self.address, self.in_process)
        return self.workers

    def shutdown(self) -> None:
        if self.workers is not None:
            self.workers.shutdown()
            self.workers = None
            self.loaded.clear()
