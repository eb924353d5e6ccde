"""Sweep placement on a real two-node Ray cluster on this machine (`ray.cluster_utils.Cluster`).

Both nodes declare 2 GPUs: Ray's resources are logical, so the placement (which node, which GPU
ids each process is given) is real, while the engines run on the CPU. One cluster for the module:
starting it is the expensive part on 2 cores.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from e2lm_vllm.cluster.ray_init import passed_environment
from e2lm_vllm.sweep.cells import build_plan
from e2lm_vllm.sweep.config import SweepConfigError
from e2lm_vllm.sweep.executors import RayActorExecutor, RayTaskExecutor
from e2lm_vllm.sweep.placement import NodeCapacity, plan_slots
from tests.sweeps import SWEEP_TASKS, yaml_config

REPO = Path(__file__).resolve().parents[1]


def _node(name: str, gpus: int, cpus: int) -> NodeCapacity:
    return NodeCapacity(node_id=name * 8, hostname=f"host-{name}", address="10.0.0.1", gpus=gpus, cpus=cpus)


# -- the counting rule, on declared nodes (no Ray) -----------------------------------------------------


def test_workers_are_counted_per_node():
    """3 + 4 + 1 GPUs at TP=2 fit 1 + 2 + 0 workers, not the cluster's 8 // 2 = 4."""
    nodes = [_node("a", gpus=3, cpus=12), _node("b", gpus=4, cpus=16), _node("c", gpus=1, cpus=64)]
    slots = plan_slots(nodes, tensor_parallel_size=2, workers=None, cpus_per_worker=None)
    assert [slot.node.hostname for slot in slots] == ["host-a", "host-b", "host-b"]
    # CPUs per worker are its node's CPUs / workers on that node, not the cluster's 92 // 3 = 30.
    assert [slot.cpus for slot in slots] == [12, 8, 8]
    assert slots[0].bundles() == [{"CPU": 12, "GPU": 1}, {"GPU": 1}] and slots[0].worker_gpus == 0


def test_fewer_workers_spread_over_nodes_first():
    nodes = [_node("a", gpus=2, cpus=8), _node("b", gpus=2, cpus=8)]
    slots = plan_slots(nodes, tensor_parallel_size=1, workers=2, cpus_per_worker=None)
    assert [(slot.node.hostname, slot.cpus, slot.worker_gpus) for slot in slots] == [("host-a", 8, 1), ("host-b", 8, 1)]


def test_nothing_fits_names_every_node():
    nodes = [_node("a", gpus=1, cpus=8), _node("b", gpus=0, cpus=32)]
    with pytest.raises(SweepConfigError) as error:
        plan_slots(nodes, tensor_parallel_size=2, workers=None, cpus_per_worker=None)
    message = str(error.value)
    assert "no Ray node fits one worker (2 GPU + 1 CPU, GPUs on one node)" in message
    assert "node aaaaaaaa (host-a, 10.0.0.1): 1 GPU, 8 CPU; node bbbbbbbb (host-b, 10.0.0.1): 0 GPU, 32 CPU" in message
    with pytest.raises(SweepConfigError, match=r"workers: expected at most 2 \(workers of 1 GPU \+ 1 CPU"):
        plan_slots(nodes[:1] + [_node("c", gpus=1, cpus=8)], tensor_parallel_size=1, workers=3, cpus_per_worker=None)


def test_host_specific_variables_stay_on_the_driver():
    driver = {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": "/shared/hf",
        "VLLM_CPU_KVCACHE_SPACE": "4",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_HOST_IP": "10.1.2.3",
        "VLLM_PORT": "51000",
        "VLLM_LOOPBACK_IP": "127.0.0.1",
        "VLLM_DP_MASTER_IP": "10.1.2.3",
        "VLLM_DP_RANK": "0",
        "VLLM_RAY_BUNDLE_INDICES": "0,1",
        "VLLM_NIXL_SIDE_CHANNEL_HOST": "10.1.2.3",
        "VLLM_CPU_OMP_THREADS_BIND": "0-15",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "PATH": "/usr/bin",
    }
    assert passed_environment(driver) == {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": "/shared/hf",
        "VLLM_CPU_KVCACHE_SPACE": "4",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }


# -- a real two-node cluster -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on 127.0.0.1, each declaring 2 GPUs and 2 CPUs; this process is connected as driver."""
    import ray
    from ray.cluster_utils import Cluster

    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 2, "include_dashboard": False})
    try:
        head.add_node(num_cpus=2, num_gpus=2)
        head.wait_for_nodes()
        ray.init(address=head.address)
        yield head
    finally:
        ray.shutdown()
        head.shutdown()


def _config(tmp_path: Path, checkpoints: list[Path], **overrides) -> object:
    return yaml_config(checkpoints, tmp_path / "sweep", name="smollm2-ladder", lm="e2lm_vllm", **overrides)


def _node_ids() -> set[str]:
    import ray

    return {node["NodeID"] for node in ray.nodes() if node["Alive"]}


@pytest.mark.ray
def test_tensor_parallel_workers_land_whole_on_one_node(cluster, tiny_ladder_dirs, tmp_path):
    """TP=2 on 2 nodes x 2 GPUs: two long-lived workers, one per node, each engine's 2 GPUs on its worker's node."""
    workers = RayActorExecutor(_config(tmp_path, tiny_ladder_dirs[:1], tensor_parallel_size=2), cluster.address)
    try:
        assert workers.count == 2
        reports = [workers.placement(index) for index in range(workers.count)]
    finally:
        workers.shutdown()
    assert {report["node_id"] for report in reports} == set(_node_ids()), reports
    for slot, report in zip(workers.slots, reports):
        assert report["node_id"] == slot.node.node_id  # where plan_slots counted it
        assert report["gpu_ids"] == []  # vLLM's own Ray workers hold the GPUs, one per bundle
        engine_nodes = {gpu["node_id"] for gpu in report["engine_gpus"]}
        engine_ids = sorted(gpu_id for gpu in report["engine_gpus"] for gpu_id in gpu["gpu_ids"])
        assert engine_nodes == {report["node_id"]} and engine_ids == ["0", "1"], report


@pytest.mark.ray
def test_four_gpus_at_tp1_run_four_workers(cluster, tiny_ladder_dirs, tmp_path, monkeypatch):
    """TP=1: 4 per-checkpoint workers, 2 per node, each given its own GPU and half its node's CPUs."""
    monkeypatch.setenv("VLLM_HOST_IP", "10.9.9.9")  # the driver's: must not travel to another node
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    workers = RayTaskExecutor(_config(tmp_path, tiny_ladder_dirs[:1], worker_lifetime="checkpoint"), cluster.address)
    try:
        assert workers.count == 4
        reports = [workers.placement(index) for index in range(workers.count)]
    finally:
        workers.shutdown()
    given = sorted((report["node_id"], *report["gpu_ids"]) for report in reports)
    assert given == sorted((node, gpu) for node in _node_ids() for gpu in ("0", "1")), reports
    assert [slot.cpus for slot in workers.slots] == [1, 1, 1, 1]
    for options in workers.options:
        env = options["runtime_env"]["env_vars"]
        assert "VLLM_HOST_IP" not in env and env["HF_HUB_OFFLINE"] == "1" and env["OMP_NUM_THREADS"] == "1"
    assert "4 per-checkpoint Ray workers; node " in workers.describe()


@pytest.mark.ray
def test_unreadable_paths_name_the_node_and_the_path(cluster, tiny_ladder_dirs, tmp_path):
    """A checkpoint or task folder the worker's node cannot read fails once, clearly, before lm-eval or vLLM."""
    from e2lm_vllm.sweep.runner import _failure_error

    config = _config(tmp_path, tiny_ladder_dirs[:1], worker_lifetime="checkpoint", workers=2)
    unit = build_plan(config, tmp_path / "sweep").units[0]
    missing = str(tmp_path / "not-on-this-node" / "step_000000")
    cases = {
        "checkpoint": dataclasses.replace(
            unit,
            checkpoint=dataclasses.replace(unit.checkpoint, path=missing),
        ),
        "task folder": dataclasses.replace(unit, include_paths=[str(SWEEP_TASKS), missing]),
    }
    workers = RayTaskExecutor(config, cluster.address)
    try:
        second = workers.slots[1].node.node_id
        for what, bad_unit in cases.items():
            with pytest.raises(Exception) as error:
                workers.get(workers.submit(1, bad_unit))
            recorded = _failure_error(error.value)  # what the driver writes to failures.parquet
            assert recorded.startswith(f"PathNotVisibleError: {what} {missing} cannot be read on "), recorded
            assert f"Ray node {second[:8]})" in recorded and "No such file or directory" in recorded, recorded
            assert "Traceback" not in recorded and "lm_eval" not in recorded
    finally:
        workers.shutdown()


@pytest.mark.ray
@pytest.mark.engine
@pytest.mark.slow
def test_a_worker_on_the_second_node_evaluates_and_every_cell_is_written_once(cluster, tiny_ladder_dirs, tmp_path):
    """2 rungs x 1 task through `run_sweep` on the cluster: one per-checkpoint worker per node, real vLLM on the CPU."""
    from e2lm_vllm.sweep.runner import run_sweep

    config = _config(tmp_path, tiny_ladder_dirs[:2], worker_lifetime="checkpoint", workers=2)
    summary = run_sweep(config, address=cluster.address, progress=False)
    assert summary.exit_code == 0 and summary.evaluated == 2, summary.describe()
    output = tmp_path / "sweep"
    metrics = pd.read_parquet(output / "metrics.parquet")
    assert sorted(metrics.checkpoint.unique()) == sorted(str(p) for p in tiny_ladder_dirs[:2])
    assert not metrics.duplicated(["checkpoint", "task", "metric", "filter"]).any()
    assert (metrics.backend == "vllm").all() and (metrics.n_samples == 2).all()
    assert len(pd.read_parquet(output / "samples.parquet")) == 2 * 2
    assert len(list((output / "cells").rglob("*.metrics.parquet"))) == 2
    units = [json.loads(line) for line in (output / "runs.jsonl").read_text().splitlines()]
    hosts = [record["host"] for record in units if record["event"] == "unit"]
    nodes = {node_id[:8] for node_id in _node_ids()}
    ran_on = {host.rsplit("Ray node ", 1)[1].rstrip(")") for host in hosts}
    assert ran_on == nodes, hosts  # one checkpoint on each node: the second node evaluated one


def test_the_tp2_example_validates_and_places():
    """ray_jobs/examples/tp2.yaml: 2 GPUs per engine; its extra engine arg is one vLLM accepts."""
    from e2lm_vllm.sweep.config import load_sweep_config

    config = load_sweep_config(REPO / "ray_jobs" / "examples" / "tp2.yaml")
    assert config.engine.tensor_parallel_size == 2
    args = config.family_settings(config.models[0])
    assert args.tensor_parallel_size == 2 and args.engine_kwargs == {"distributed_executor_backend": "ray"}
    slots = plan_slots([_node("a", gpus=8, cpus=64), _node("b", gpus=3, cpus=16)], 2, config.workers, None)
    assert [(slot.node.hostname, slot.cpus) for slot in slots] == [("host-a", 16)] * 4 + [("host-b", 16)]
