"""Where a sweep's units run: long-lived Ray actors, a Ray task per unit, or one worker in this process.

All three take a unit and give back a `UnitResult` or the unit's error; the driver (`runner`)
decides what runs where and retries.

Placement follows the engine. A worker is one engine of `tensor_parallel_size` GPUs, and vLLM
shards a model only across the GPUs of one node (its Ray executor refuses a placement group bundle
of more than one GPU and puts one GPU worker in each bundle). So each worker gets a placement group
of `tensor_parallel_size` one-GPU bundles, STRICT_PACK, pinned to a node (`WorkerSlot.bundles`);
the worker itself runs in bundle 0 with that node's share of the CPUs. With one GPU the worker
holds it and vLLM runs in the worker's process; with more, the worker holds none and vLLM's Ray
executor finds the group (`get_current_placement_group`, which child tasks inherit) and starts
one GPU worker per bundle. How many workers fit, and their CPUs, is counted per node
(`plan_slots`): a node with 3 GPUs fits one worker of 2 GPUs, not 1.5.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from typing import Any

from e2lm_vllm.cluster.ray_init import init_ray, worker_environment
from e2lm_vllm.cluster.worker_secrets import WorkerSecrets
from e2lm_vllm.settings import LONG_LIVED_WORKER_ENVIRONMENT
from e2lm_vllm.sweep.config import SweepConfig, SweepConfigError
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


# -- placement ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeCapacity:
    """One live Ray node and what it declares (Ray's logical resources, not what is free now)."""

    node_id: str
    hostname: str
    address: str
    gpus: int
    cpus: int

    def describe(self) -> str:
        return f"node {self.node_id[:8]} ({self.hostname}, {self.address}): {self.gpus} GPU, {self.cpus} CPU"


@dataclass(frozen=True)
class WorkerSlot:
    """One worker's share of one node: the GPUs of one engine and some CPUs."""

    node: NodeCapacity
    gpus: int  # tensor_parallel_size, or 0 on a cluster without GPUs
    cpus: int

    def bundles(self) -> list[dict[str, float]]:
        """Placement group bundles: one GPU each, as vLLM's Ray executor requires; the CPUs in the first."""
        if not self.gpus:
            return [{"CPU": self.cpus}]
        return [{"CPU": self.cpus, "GPU": 1}] + [{"GPU": 1} for _ in range(self.gpus - 1)]

    @property
    def worker_gpus(self) -> int:
        """GPUs the worker process holds: its one GPU; none for more, which vLLM's own Ray workers hold."""
        return 1 if self.gpus == 1 else 0


def cluster_nodes(ray: Any) -> list[NodeCapacity]:
    return [
        NodeCapacity(
            node_id=node["NodeID"],
            hostname=node.get("NodeManagerHostname", "?"),
            address=node.get("NodeManagerAddress", "?"),
            gpus=int(node["Resources"].get("GPU", 0)),
            cpus=int(node["Resources"].get("CPU", 0)),
        )
        for node in ray.nodes()
        if node.get("Alive")
    ]


def plan_slots(
    nodes: list[NodeCapacity], tensor_parallel_size: int, workers: int | None, cpus_per_worker: int | None
) -> list[WorkerSlot]:
    """Which node each worker runs on, with how many GPUs and CPUs.

    A node fits ``min(GPUs // tensor_parallel_size, CPUs // cpus_per_worker)`` workers (on a
    cluster without GPUs, CPUs only). The default is every worker that fits where there are GPUs,
    else one. Workers go one at a time to the node that would give each of its workers the most
    CPUs, so they spread over nodes before they share one; then each worker gets its node's CPUs
    divided by the workers on that node (unless `cpus_per_worker` says).
    """
    any_gpus = any(node.gpus for node in nodes)
    gpus = tensor_parallel_size if any_gpus else 0
    least_cpus = cpus_per_worker or 1
    fits = {node.node_id: min(node.gpus // gpus if gpus else node.cpus, node.cpus // least_cpus) for node in nodes}
    total = sum(fits.values())
    need = f"{gpus} GPU + {least_cpus} CPU" if gpus else f"{least_cpus} CPU"
    listing = "; ".join(node.describe() for node in nodes) or "no live nodes"
    if total == 0:
        raise SweepConfigError(
            f"engine.tensor_parallel_size={tensor_parallel_size}, cpus_per_worker={cpus_per_worker}: no Ray node fits "
            f"one worker ({need}, GPUs on one node); the cluster has {listing}"
        )
    wanted = workers or (total if gpus else 1)
    if wanted > total:
        raise SweepConfigError(
            f"workers: expected at most {total} (workers of {need} that fit, counted per node: {listing}), got {wanted}"
        )
    placed = dict.fromkeys(fits, 0)
    for _ in range(wanted):
        open_nodes = [node for node in nodes if placed[node.node_id] < fits[node.node_id]]
        best = max(open_nodes, key=lambda node: node.cpus / (placed[node.node_id] + 1))  # first of equals wins
        placed[best.node_id] += 1
    slots = []
    for node in nodes:
        for _ in range(placed[node.node_id]):
            slots.append(
                WorkerSlot(node=node, gpus=gpus, cpus=cpus_per_worker or max(1, node.cpus // placed[node.node_id]))
            )
    return slots


def where_am_i() -> str:
    """This process's host, address and Ray node: what a worker's errors and records name."""
    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            context = ray.get_runtime_context()
            return f"{host} ({ray.util.get_node_ip_address()}, Ray node {context.get_node_id()[:8]})"
    except Exception:  # noqa: BLE001 - a name for a message must never be the error
        pass
    return host


def placement_report() -> dict[str, Any]:
    """Where this worker runs and which GPUs its engine gets: its own, or (tensor parallel) those of
    processes started in its placement group's GPU bundles exactly as vLLM's Ray executor starts its
    workers (`num_cpus=0, num_gpus=1`, one per bundle)."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    def here() -> dict[str, Any]:
        return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": [str(i) for i in ray.get_gpu_ids()]}

    report = {**here(), "where": where_am_i(), "engine_gpus": []}
    group = ray.util.get_current_placement_group()
    if report["gpu_ids"] or group is None:
        report["engine_gpus"] = [here()] if report["gpu_ids"] else []
        return report
    probe = ray.remote(num_cpus=0, num_gpus=1)(here)
    indices = [index for index, bundle in enumerate(group.bundle_specs) if bundle.get("GPU")]
    strategies = [
        PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=i) for i in indices
    ]
    report["engine_gpus"] = ray.get([probe.options(scheduling_strategy=s).remote() for s in strategies])
    return report


# -- paths a worker must see ------------------------------------------------------------------------


class PathNotVisibleError(FileNotFoundError):
    """A checkpoint, tokenizer or task folder that the driver planned with but this worker's node cannot read."""


def check_paths_visible(unit: WorkUnit) -> None:
    """Fail with the node and the path before lm-eval or vLLM meet a missing local path.

    The driver plans on its own filesystem; a worker on another node reads the same absolute paths
    and, without this, fails deep in lm-eval (a task not found) or the HF hub client (a repo id
    that is not one).
    """
    paths = [("checkpoint", unit.checkpoint.path)]
    tokenizer = unit.settings.tokenizer
    if isinstance(tokenizer, str) and os.path.isabs(tokenizer):
        paths.append(("tokenizer", tokenizer))
    paths += [("task folder", folder) for folder in unit.include_paths]
    for what, path in paths:
        if path is None:
            continue
        try:
            os.listdir(path)
        except OSError as error:
            raise PathNotVisibleError(
                f"{what} {path} cannot be read on {where_am_i()}: {error.strerror or error}. Every node that runs "
                f"workers must see it at the same path (a shared filesystem), or name the checkpoint by HF repo"
            ) from None


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


class RayWorkers:
    """Long-lived Ray actors (`worker_lifetime: sweep`), or a Ray task per unit (`checkpoint`), one per `WorkerSlot`.

    Each slot has its placement group for the whole sweep; a slot's actor, or its tasks one after
    the other, run in it. The driver retries, not Ray, so that both kinds count attempts alike. An
    actor that died (killed, out of memory) is replaced by a new one in the same group at once; its
    unit goes back to the driver's queue. So does the unit of a worker that hangs past
    ``checkpoint_timeout_s`` (`abandon`: the actor, or the task's process, is killed).
    """

    def __init__(self, config: SweepConfig, address: str | None):
        self.ray = init_ray(address)
        self.secrets = WorkerSecrets.from_environ(os.environ)
        from ray.util.placement_group import placement_group
        from ray.util.placement_group import remove_placement_group as remove
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._remove_group = remove
        self.slots = plan_slots(
            cluster_nodes(self.ray), config.engine.tensor_parallel_size, config.workers, config.cpus_per_worker
        )
        self.count = len(self.slots)
        self.lifetime = config.worker_lifetime
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
        if self.lifetime == "sweep":
            self.actor = self.ray.remote(PlacedSweepWorker)
            self.actors: list[Any] = [self._start_actor(index) for index in range(self.count)]
        else:
            # max_calls=1: a fresh process per checkpoint, so memory is released between engines.
            self.task = self.ray.remote(max_calls=1, max_retries=0)(evaluate_placed_unit)

    def _start_actor(self, index: int) -> Any:
        return self.actor.options(max_restarts=0, max_task_retries=0, **self.options[index]).remote(self.secrets)

    def describe(self) -> str:
        kind = "long-lived" if self.lifetime == "sweep" else "per-checkpoint"
        per_node: dict[str, list[WorkerSlot]] = {}
        for slot in self.slots:
            per_node.setdefault(slot.node.node_id, []).append(slot)
        nodes = []
        for slots in per_node.values():
            slot = slots[0]
            gpus = f"{slot.gpus} GPU + " if slot.gpus else ""
            cpus = "/".join(str(s.cpus) for s in slots)
            nodes.append(
                f"node {slot.node.node_id[:8]} ({slot.node.hostname}, {slot.node.address}): {len(slots)} x ({gpus}{cpus} CPU)"
            )
        return f"{self.count} {kind} Ray workers; " + "; ".join(nodes)

    def placement(self, index: int) -> dict[str, Any]:
        """`placement_report` from inside slot `index`: its actor, or a task placed as the slot's tasks are."""
        if self.lifetime == "sweep":
            return self.ray.get(self.actors[index].placement.remote())
        return self.ray.get(self.ray.remote(max_retries=0)(placement_report).options(**self.options[index]).remote())

    def submit(self, index: int, unit: WorkUnit) -> Any:
        if self.lifetime == "sweep":
            return self.actors[index].evaluate.remote(unit)
        return self.task.options(name=f"sweep {unit.label}", **self.options[index]).remote(unit, self.secrets)

    def replace_if_dead(self, index: int, error: BaseException) -> None:
        if self.lifetime == "sweep" and isinstance(error, self.ray.exceptions.RayActorError):
            self.ray.kill(self.actors[index])
            self.actors[index] = self._start_actor(index)

    def abandon(self, index: int, ref: Any) -> None:
        """Stop a unit that hangs: kill its worker process; slot ``index`` gets a new actor (as a dead one's)."""
        if self.lifetime == "sweep":
            self.ray.kill(self.actors[index], no_restart=True)
            self.actors[index] = self._start_actor(index)
        else:
            self.ray.cancel(ref, force=True)  # force: the task's process is killed, not asked

    def wait(self, refs: list[Any], timeout: float | None = None) -> list[Any]:
        return self.ray.wait(refs, num_returns=1, timeout=timeout)[0]

    def get(self, ref: Any) -> UnitResult:
        return self.ray.get(ref)

    def shutdown(self) -> None:
        if self.lifetime == "sweep":
            for actor in self.actors:
                self.ray.kill(actor)
        for group in self.groups:
            self._remove_group(group)


class InProcessWorker:
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

    def wait(self, refs: list[int], timeout: float | None = None) -> list[int]:
        return refs[:1]

    def abandon(self, index: int, ref: int) -> None:
        """Never called: `checkpoint_timeout_s` is None here."""

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
