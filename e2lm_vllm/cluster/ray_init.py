"""Ray start-up and the environment of Ray workers: what the sweep's workers and the data-parallel
engines both need (`e2lm_vllm.sweep.executors`, `e2lm_vllm.engine.data_parallel`), so neither imports the other.

A worker inherits the driver's offline switches, caches, vLLM and HF settings, never what describes
the driver's host; Ray is started fresh and local unless an address (or `RAY_ADDRESS`) names a cluster.
"""

from __future__ import annotations

import os
import re
from typing import Any

from e2lm_vllm.cluster.worker_secrets import SECRET_ENV_NAMES
from e2lm_vllm.settings import LONG_LIVED_WORKER_ENVIRONMENT

# Environment a worker inherits from the driver: offline switches, caches, vLLM and HF settings.
PASSED_ENV_PREFIXES = ("HF_", "VLLM_", "TRANSFORMERS_", "HUGGINGFACE_")
# ...but not what describes the driver's host: its addresses and ports (vLLM's VLLM_HOST_IP, side
# channels, data-parallel master), ranks, bundle indices of the driver's own placement group, core
# bindings, shared-memory names. A worker on another node given the driver's VLLM_HOST_IP would bind
# or advertise an address that is not its own. Names from vLLM's envs.py (0.32); the suffix rule
# catches later ones of the same kind. Device lists (CUDA_VISIBLE_DEVICES, ...) never match the
# prefixes: Ray sets them per worker from the GPUs it was given.
HOST_SPECIFIC_ENV = re.compile(r"^VLLM_\w*_(IP|IPS|HOST|PORT)$")
HOST_SPECIFIC_ENV_NAMES = frozenset(
    {
        "VLLM_HOST_IP",
        "VLLM_PORT",
        "VLLM_LOOPBACK_IP",
        "VLLM_RPC_BASE_PATH",
        "VLLM_DP_RANK",
        "VLLM_DP_RANK_LOCAL",
        "VLLM_DP_SIZE",
        "VLLM_DP_MASTER_IP",
        "VLLM_DP_MASTER_PORT",
        "VLLM_RAY_BUNDLE_INDICES",
        "VLLM_RAY_DP_PLACEMENT_NODE_IPS",
        "VLLM_CPU_OMP_THREADS_BIND",
        "VLLM_CPU_NUM_OF_RESERVED_CPU",
        "VLLM_GPU_NIC_PCIE_MAPPING",
        "VLLM_OBJECT_STORAGE_SHM_BUFFER_NAME",
    }
)


def passed_environment(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The driver's variables a worker on any node should see (`PASSED_ENV_PREFIXES`, less host-specific
    ones, and less the HF token: Ray logs a runtime env, so the token travels as `WorkerSecrets`)."""
    return {
        key: value
        for key, value in environ.items()
        if key.startswith(PASSED_ENV_PREFIXES)
        and key not in HOST_SPECIFIC_ENV_NAMES
        and key not in SECRET_ENV_NAMES
        and not HOST_SPECIFIC_ENV.match(key)
    }


def worker_environment(cpus: int, lifetime: str) -> dict[str, str]:
    env = passed_environment(os.environ)
    # Ray pins workers to one thread unless told otherwise; a CPU engine needs all its cores.
    env.update({"OMP_NUM_THREADS": str(cpus), "MKL_NUM_THREADS": str(cpus), "TOKENIZERS_PARALLELISM": "false"})
    if lifetime == "sweep":
        env.update(LONG_LIVED_WORKER_ENVIRONMENT)
    return env


def init_ray(address: str | None) -> Any:
    import ray

    if not ray.is_initialized():
        if address or os.environ.get("RAY_ADDRESS"):
            _connect(ray, address)  # `--address`, inside `ray job submit`, or a user-chosen cluster
        else:
            # A fresh local Ray for `e2lm-vllm sweep`, never someone else's cluster on this machine.
            ray.init(address="local", include_dashboard=False)
    return ray


def _connect(ray: Any, address: str | None) -> None:
    """`ray.init` on an existing cluster; a failure that a missing token can explain names the fix."""
    from ray.exceptions import AuthenticationError

    from e2lm_vllm.cluster.auth import RayAuthError, connect_error_message

    try:
        ray.init(address=address) if address else ray.init()
    except (ConnectionError, AuthenticationError) as error:
        message = connect_error_message(address or os.environ["RAY_ADDRESS"])
        if message is None:
            raise
        raise RayAuthError(message) from error
