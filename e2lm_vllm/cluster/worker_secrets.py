"""Secrets a sweep worker needs (the Hugging Face token), handed over without Ray writing them down.

A worker's ``runtime_env`` is no place for a token: Ray stores it with the job and the actor and
writes it to its logs on every node (the runtime env agent, the raylet), where anyone who reads
the cluster's log folder finds it. So the workers' environment (`cluster.ray_init.worker_environment`:
the sweep's workers and the data-parallel engines) leaves these variables out, and the driver passes
them as an argument of the worker's constructor (or of the task, one per checkpoint), which Ray keeps
in memory and does not log; the worker sets them in its own ``os.environ`` before anything imports
the HF libraries, which then read them as usual.

Not the HF token file (``~/.cache/huggingface/token``, which HF reads by itself): a cluster's other
nodes do not have the driver's file, and a driver given ``HF_TOKEN`` may have no file at all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

# The variables the HF libraries read a token from (huggingface_hub: HF_TOKEN, then the older name).
SECRET_ENV_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


@dataclass(frozen=True)
class WorkerSecrets:
    """The driver's secret variables, for a worker to set in its own process (``apply``)."""

    env: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerSecrets:
        return cls({name: environ[name] for name in SECRET_ENV_NAMES if environ.get(name)})

    def apply(self) -> None:
        """Set the secrets in this (worker) process, before lm-eval, vLLM or HF are imported."""
        os.environ.update(self.env)

    def __repr__(self) -> str:  # what an error message or a debug log may print: names only
        return f"WorkerSecrets({', '.join(f'{name}=***' for name in self.env)})"
