"""The sweep on a real Ray cluster on 127.0.0.1, submitted with the real `ray job submit`.

One head per module (own --temp-dir and ports; stopped by killing exactly its processes, since
`ray stop` would kill every Ray on the machine). Checkpoints: a 3-rung SmolLM2 ladder. Tasks: the
two tiny ARC tasks in tests/data/sweep_tasks (4 docs each). Covered: a full sweep with a corrupt
checkpoint, equality with `lm_eval` run by hand, a worker killed mid-checkpoint, a driver killed and
rerun, and the YAML config through `e2lm-vllm sweep` on the same output.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TASKS_DIR = "tests/data/sweep_tasks"  # relative: resolved inside the job's uploaded working dir
TASKS = "sweep_arc_easy,sweep_arc_letter"
LIMIT = 4
CELL_KEY = ["model", "checkpoint", "step", "task", "metric", "filter"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    # The job's `python` is the first on the head's PATH: the venv's.
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _cluster_processes(temp_dir: str) -> list[psutil.Process]:
    """The processes of the cluster whose --temp-dir is ``temp_dir``, and their descendants."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            # Ray's daemons get the folder in options (--temp_dir=, --log_dir=, --session-dir=, ...).
            if any(arg.startswith("--") and temp_dir in arg for arg in proc.info["cmdline"] or []):
                found[proc.pid] = proc
                found.update({child.pid: child for child in proc.children(recursive=True)})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    mine = {os.getpid(), *(parent.pid for parent in psutil.Process().parents())}
    return [proc for pid, proc in found.items() if pid not in mine]


def _stop_cluster(temp_dir: str) -> None:
    procs = _cluster_processes(temp_dir)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with the jobs API; yields the dashboard address.

    Token auth with a token of its own: Ray turns auth on for `ray start` whenever ~/.ray/auth_token
    exists, while `ray job submit` only sends it with RAY_AUTH_MODE=token, so both are set explicitly.
    """
    saved = {key: os.environ.get(key) for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    temp_dir = tempfile.mkdtemp(prefix="e2lm-ray-", dir="/tmp")  # short: Ray's socket paths are length-limited
    port, dashboard_port = _free_port(), _free_port()
    command = [
        str(BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=2",
        "--disable-usage-stats", f"--temp-dir={temp_dir}",
        f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
    ]  # fmt: skip
    started = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"http://127.0.0.1:{dashboard_port}"
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> list[Path]:
    from e2lm_vllm.models.ladder import write_ladder

    return write_ladder("smollm2-135m", 3, tmp_path_factory.mktemp("ladder"))


@pytest.fixture(scope="module")
def corrupt_checkpoint(ladder, tmp_path_factory) -> Path:
    """The last rung's config and tokenizer with garbage for weights."""
    folder = tmp_path_factory.mktemp("corrupt") / "step_009000"
    shutil.copytree(ladder[-1], folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 100)
    config = json.loads((folder / "config.json").read_text())
    config["e2lm"]["step"] = 9000
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _sweep_args(checkpoints: list[Path], output: Path, *extra: str) -> list[str]:
    return [
        "python", "ray_jobs/sweep.py", "--checkpoints", *map(str, checkpoints), "--model-name", "smollm2-ladder",
        "--tasks", TASKS, "--include-path", TASKS_DIR, "--limit", str(LIMIT), "--output", str(output),
        "--lm", "hf", "--model-args", "dtype=float32", "--no-progress", *extra,
    ]  # fmt: skip


def _submit(address: str, entrypoint: list[str], *options: str, timeout: float = 400) -> subprocess.CompletedProcess:
    command = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", *options, "--", *entrypoint]
    return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def _wait_job(address: str, job_id: str, timeout: float = 400) -> str:
    client = _client(address)
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = str(client.get_job_status(job_id))
        if status.endswith(("SUCCEEDED", "FAILED", "STOPPED")):
            return status
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still running after {timeout} s")


def _runs(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "runs.jsonl").read_text().splitlines()]


def _metric_parts(output: Path) -> dict[Path, float]:
    return {path: path.stat().st_mtime for path in (output / "cells").rglob("*.metrics.parquet")}


@pytest.fixture(scope="module")
def full_sweep(ray_head, ladder, corrupt_checkpoint, tmp_path_factory):
    """3 ladder rungs + 1 corrupt checkpoint x 2 tasks, submitted and awaited like a user would."""
    output = tmp_path_factory.mktemp("sweep-full")
    started = time.time()
    job = _submit(ray_head, _sweep_args([*ladder, corrupt_checkpoint], output, "--max-attempts", "2"))
    return output, job, time.time() - started


def test_sweep_completes_despite_a_corrupt_checkpoint(full_sweep, ladder, corrupt_checkpoint):
    output, job, seconds = full_sweep
    logs = job.stdout + job.stderr
    assert job.returncode != 0, "a failed checkpoint must fail the job"
    assert "FAILED smollm2-ladder step 9000" in logs, logs[-3000:]

    metrics = pd.read_parquet(output / "metrics.parquet")
    assert sorted(metrics.checkpoint.unique()) == sorted(str(p) for p in ladder)
    assert sorted(metrics.step.unique()) == [0, 1000, 2000]
    assert not metrics.duplicated(CELL_KEY).any()
    assert set(metrics.groupby(["checkpoint", "task"]).size().index.get_level_values("task")) == set(TASKS.split(","))
    assert set(metrics.metric) == {"acc", "acc_norm", "exact_match"}
    assert (metrics.n_samples == LIMIT).all() and metrics.tokens.notna().all()
    assert (metrics.backend == "hf").all() and metrics.lm_eval_version.notna().all()

    samples = pd.read_parquet(output / "samples.parquet")
    assert len(samples) == len(ladder) * 2 * LIMIT
    choice = samples[samples.task == "sweep_arc_easy"]
    assert choice.choice_logprobs.map(len).eq(4).all() and choice.choice_tokens.map(min).gt(0).all()
    assert (choice.prediction == choice.choice_logprobs.map(lambda lp: int(max(range(4), key=lp.__getitem__)))).all()
    assert (choice.correct == (choice.prediction == choice.target)).all()
    letters = samples[samples.task == "sweep_arc_letter"]
    assert letters.response.notna().all() and letters.target_text.isin(list("ABCD")).all()

    failures = pd.read_parquet(output / "failures.parquet")
    assert sorted(failures.task) == sorted(TASKS.split(","))
    assert (failures.checkpoint == str(corrupt_checkpoint)).all() and (failures.attempts == 2).all()
    assert failures.error.str.len().gt(0).all()
    cells_per_min = 2 * len(ladder) / (seconds / 60)
    print(f"full sweep: {seconds:.0f} s for {2 * len(ladder)} cells + 1 corrupt checkpoint ({cells_per_min:.1f} cells/min)")


def test_sweep_equals_lm_eval_run_by_hand(full_sweep, ladder, tmp_path):
    """The last rung's cells against `lm_eval --model hf` on the same tasks, docs and weights."""
    output, _, _ = full_sweep
    checkpoint = ladder[-1]
    command = [
        str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={checkpoint},dtype=float32",
        "--device", "cpu", "--tasks", TASKS, "--include_path", str(REPO / TASKS_DIR), "--limit", str(LIMIT),
        "--output_path", str(tmp_path), "--log_samples",
    ]  # fmt: skip
    run = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    results_file = next(tmp_path.rglob("results_*.json"))
    by_hand = json.loads(results_file.read_text())["results"]

    metrics = pd.read_parquet(output / "metrics.parquet")
    cells = metrics[metrics.checkpoint == str(checkpoint)]
    compared = 0
    for row in cells.itertuples():
        expected = by_hand[row.task][f"{row.metric},{row.filter}"]
        assert row.value == pytest.approx(expected, abs=1e-6), (row.task, row.metric)
        compared += 1
    assert compared == 3

    samples = pd.read_parquet(output / "samples.parquet")
    for sample_file in tmp_path.rglob("samples_sweep_arc_easy_*.jsonl"):
        for line in sample_file.read_text().splitlines():
            logged = json.loads(line)
            ours = samples[(samples.checkpoint == str(checkpoint)) & (samples.task == "sweep_arc_easy")]
            ours = ours[ours.doc_id == logged["doc_id"]].iloc[0]
            expected = [float(resp[0]) for resp in logged["filtered_resps"]]
            assert list(ours.choice_logprobs) == pytest.approx(expected, abs=1e-6)
            compared += 1
    assert compared == 3 + LIMIT


def test_rerun_of_a_config_file_computes_nothing(full_sweep, ladder, tmp_path):
    """`e2lm-vllm sweep CONFIG` on the finished output: every cell is found done, nothing recomputed."""
    output, _, _ = full_sweep
    config = {
        "models": [{"name": "smollm2-ladder", "checkpoints": [{"paths": [str(p) for p in ladder]}]}],
        "tasks": TASKS.split(","),
        "include_paths": [str(REPO / TASKS_DIR)],
        "limit": LIMIT,
        "engine": {"lm": "hf", "extra": {"dtype": "float32"}},
        "output": str(output),
    }
    config_file = tmp_path / "sweep.yaml"
    config_file.write_text(yaml.safe_dump(config))
    before = _metric_parts(output)
    run = subprocess.run(
        [sys.executable, "-m", "e2lm_vllm.cli", "sweep", str(config_file), "--no-progress"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    start = _runs(output)[-2]
    assert (start["event"], start["cells"], start["already_done"], start["to_evaluate"]) == ("start", 6, 6, 0)
    assert _metric_parts(output) == before
    assert len(pd.read_parquet(output / "metrics.parquet")) == 3 * len(ladder)
    assert len(pd.read_parquet(output / "failures.parquet")) == 0


def test_worker_killed_mid_checkpoint_is_retried(ray_head, ladder, tmp_path):
    output = tmp_path / "sweep"
    job_id = f"e2lm-kill-worker-{os.getpid()}-{int(time.time())}"
    submitted = _submit(ray_head, _sweep_args(ladder[1:2], output), "--no-wait", "--submission-id", job_id)
    assert submitted.returncode == 0, submitted.stderr
    client = _client(ray_head)
    killed = None
    deadline = time.time() + 240
    while killed is None and time.time() < deadline:
        match = re.search(r"worker pid=(\d+) loading", client.get_job_logs(job_id))
        if match:
            killed = int(match.group(1))
            assert psutil.pid_exists(killed), "the worker finished before it could be killed"
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.3)
    assert killed is not None, client.get_job_logs(job_id)[-3000:]
    status = _wait_job(ray_head, job_id)
    logs = client.get_job_logs(job_id)
    assert status.endswith("SUCCEEDED"), logs[-3000:]
    retried = {int(pid) for pid in re.findall(r"worker pid=(\d+) loading", logs)} - {killed}
    assert retried, "Ray did not retry the checkpoint in a new worker"

    metrics = pd.read_parquet(output / "metrics.parquet")
    assert not metrics.duplicated(CELL_KEY).any()
    assert len(metrics) == 3 and set(metrics.task) == set(TASKS.split(","))
    assert len(pd.read_parquet(output / "samples.parquet")) == 2 * LIMIT
    assert len(pd.read_parquet(output / "failures.parquet")) == 0


def test_driver_killed_then_rerun_computes_only_missing_cells(ray_head, ladder, tmp_path):
    output = tmp_path / "sweep"
    job_id = f"e2lm-kill-driver-{os.getpid()}-{int(time.time())}"
    submitted = _submit(ray_head, _sweep_args(ladder, output), "--no-wait", "--submission-id", job_id)
    assert submitted.returncode == 0, submitted.stderr
    deadline = time.time() + 240
    while not (output / "cells").exists() or not _metric_parts(output):
        assert time.time() < deadline, _client(ray_head).get_job_logs(job_id)[-3000:]
        time.sleep(0.3)
    stop = subprocess.run(
        [str(BIN / "ray"), "job", "stop", "--address", ray_head, job_id], env=_env(), capture_output=True, text=True
    )
    assert stop.returncode == 0, stop.stderr
    assert _wait_job(ray_head, job_id).endswith("STOPPED")
    time.sleep(1)  # a cell being written when the driver died is atomic: there or not
    before = _metric_parts(output)
    assert 0 < len(before) < 6, "the driver was not killed mid-sweep"
    assert not (output / "metrics.parquet").exists(), "consolidation ran although the driver was killed"

    rerun = _submit(ray_head, _sweep_args(ladder, output))
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    start, finish = _runs(output)[-2:]
    assert start["event"] == "start" and start["already_done"] == len(before)
    assert start["to_evaluate"] == 6 - len(before) == finish["evaluated"]
    after = _metric_parts(output)
    assert {path: after[path] for path in before} == before, "a finished cell was recomputed"
    metrics = pd.read_parquet(output / "metrics.parquet")
    assert len(metrics) == 3 * len(ladder) and not metrics.duplicated(CELL_KEY).any()
