"""What a sweep on a real local Ray cluster keeps to itself, and what it does with a worker that hangs.

One Ray for the module, started in this process with a --temp-dir of its own (so every file Ray
writes can be read back) and without any HF token in its environment: a worker can only have the
token the way the sweep hands it over. Model: lm-eval's HF model on a ladder rung (a fresh HF load is
seconds); task: one tiny ARC task, 2 docs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from e2lm_vllm.cluster.worker_secrets import SECRET_ENV_NAMES
from tests.sweeps import yaml_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SECRETS = {"HF_TOKEN": "hf_some-secret-value-4f1c", "HUGGING_FACE_HUB_TOKEN": "hf_older-secret-name-9d2e"}


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray (2 CPUs) whose files all live under a folder of its own; yields that folder."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="e2lm-rr-", dir="/tmp")  # short: Ray's socket paths are length-limited
    with pytest.MonkeyPatch.context() as patch:
        for name in SECRET_ENV_NAMES:
            patch.delenv(name, raising=False)  # Ray's processes inherit this environment: no token in it
        patch.setenv("TOKENIZERS_PARALLELISM", "false")
        ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp_dir)
        try:
            yield Path(temp_dir)
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def _config(tmp_path: Path, checkpoints: list[Path], **overrides):
    return yaml_config(checkpoints, tmp_path / "sweep", name="ladder", lm="hf", **{"workers": 1, **overrides})


def _files_holding(roots: list[Path], needle: bytes) -> list[str]:
    found = []
    for root in roots:
        for folder, _, names in os.walk(root):  # symlinks not followed: each file once
            for name in names:
                path = Path(folder) / name
                try:
                    if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                        found.append(str(path))
                except OSError:
                    continue
    return found


def test_the_hf_token_reaches_the_workers_and_no_file(ray_local, tiny_ladder_dirs, tmp_path, monkeypatch):
    import ray

    from e2lm_vllm.sweep.executors import RayActorExecutor
    from e2lm_vllm.sweep.runner import run_sweep

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    config = _config(tmp_path, tiny_ladder_dirs[:1])
    summary = run_sweep(config, progress=False)
    assert summary.exit_code == 0 and summary.evaluated == 1, summary.describe()

    # A worker started as the sweep starts its workers has both, in its own process's environment.
    workers = RayActorExecutor(config, None)
    try:
        runtime_env = workers.options[0]["runtime_env"]["env_vars"]
        seen = ray.get(workers.actors[0].__ray_call__.remote(lambda worker: {n: os.environ.get(n) for n in SECRETS}))
    finally:
        workers.shutdown()

    time.sleep(2)  # Ray's log monitor flushes its files every second or so
    leaks = {name: _files_holding([ray_local, tmp_path], value.encode()) for name, value in SECRETS.items()}
    assert leaks == {name: [] for name in SECRETS}, "secrets written to disk"
    assert seen == SECRETS
    assert not set(SECRET_ENV_NAMES) & set(runtime_env)


def _hanging_checkpoint(rung: Path, folder: Path) -> Path:
    """A rung's config and tokenizer, with weights that never arrive: a FIFO nobody writes, so the
    worker's weight check (`check_weights`) blocks in open() for good, as on a hung network mount."""
    folder.mkdir(parents=True)
    for file in rung.iterdir():
        if file.name != "model.safetensors":
            shutil.copy(file, folder / file.name)
    os.mkfifo(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["e2lm"]["step"] = int(folder.name.rsplit("_", 1)[1])  # not the copied rung's step
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_hung_worker_is_killed_and_its_checkpoint_retried_then_failed_as_timeout(ray_local, tiny_ladder_dirs, tmp_path):
    from e2lm_vllm.sweep.runner import run_sweep

    hang = _hanging_checkpoint(tiny_ladder_dirs[-1], tmp_path / "run" / "step_005000")
    timeout = 25.0  # a worker's start (imports) and its load must fit, so the hang is in the checkpoint
    config = _config(
        tmp_path,
        [hang],
        checkpoint_timeout_s=timeout,
        max_attempts=2,
        engine={"lm": "hf", "dtype": "float32", "max_model_len": 512, "extra": {"check_weights": True}},
    )
    started = time.monotonic()
    summary = run_sweep(config, progress=False)
    elapsed = time.monotonic() - started
    assert summary.exit_code == 1, summary.describe()
    assert 2 * timeout <= elapsed < 2 * timeout + 40, elapsed  # two attempts, each cut at the timeout

    failures = pd.read_parquet(tmp_path / "sweep" / "failures.parquet")
    assert failures[["checkpoint", "kind", "attempts"]].values.tolist() == [[str(hang), "timeout", 2]]
    assert failures.error[0] == (  # docs/bad_inputs.md row `checkpoint-timeout`
        "CheckpointTimeoutError: no result for ladder@5000 within checkpoint_timeout_s=25 s; its worker was killed "
        "(if the checkpoint only needs longer, raise checkpoint_timeout_s or --checkpoint-timeout-s)"
    )

    # Each attempt reached the checkpoint in a worker of its own, and both were killed.
    time.sleep(2)
    logs = "".join(p.read_text(errors="replace") for p in ray_local.rglob("worker-*") if p.is_file())
    pids = {int(pid) for pid in re.findall(rf"worker pid=(\d+) loading \S+ \({re.escape(str(hang))}\)", logs)}
    assert len(pids) == 2, pids
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
