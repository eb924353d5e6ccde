"""Where a sweep's workers run: which node, how many GPUs and CPUs each (`plan_slots`), and from
inside a worker, where it landed (`where_am_i`, `placement_report`) and whether it sees the paths
the driver planned with (`check_paths_visible`). What runs there is `e2lm_vllm.sweep.executors`.

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

import os
import socket
from dataclasses import dataclass
from typing import Any

from e2lm_vllm.sweep.config import SweepConfigError
from e2lm_vllm.sweep.types import WorkUnit


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


def describe_slots(slots: list[WorkerSlot]) -> str:
    """Per node: how many workers, each of how many GPUs and CPUs."""
    per_node: dict[str, list[WorkerSlot]] = {}
    for slot in slots:
        per_node.setdefault(slot.node.node_id, []).append(slot)
    nodes = []
    for on_node in per_node.values():
        slot = on_node[0]
        gpus = f"{slot.gpus} GPU + " if slot.gpus else ""
        cpus = "/".join(str(s.cpus) for s in on_node)
        nodes.append(
            f"node {slot.node.node_id[:8]} ({slot.node.hostname}, {slot.node.address}): {len(on_node)} x ({gpus}{cpus} CPU)"
        )
    return "; ".join(nodes)


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
