"""The sweep on a real Ray cluster on 127.0.0.1, submitted with the real `ray job submit`.

One head per module (own --temp-dir and ports; stopped by killing exactly its processes, since
`ray stop` would kill every Ray on the machine). Checkpoints: the 3-rung tiny ladder (SmolLM2's
architecture, random weights). Tasks: the two tiny ARC tasks in tests/data/sweep_tasks (4 docs
each). Covered: a full sweep with a corrupt checkpoint, equality with `lm_eval` run by hand, a worker
killed mid-checkpoint, a driver killed and rerun, and the YAML config through `e2lm-vllm sweep` on
the same output.
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
from types import SimpleNamespace

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
def ladder(tiny_ladder_dirs) -> list[Path]:
    """The shared 3-rung tiny ladder of tests/conftest.py (SmolLM2's architecture, random weights; steps 0, 1000, 2000)."""
    return tiny_ladder_dirs


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


def _sweep_args(checkpoints: list[Path], output: Path, *extra: str, lm: str = "hf") -> list[str]:
    # The fault tests run lm-eval's HF model: the sweep machinery is the same for any lm, and a
    # fresh HF load is seconds where a vLLM engine start on 2 shared cores is a minute or more.
    return [
        "python", "ray_jobs/sweep.py", "--checkpoints", *map(str, checkpoints), "--model-name", "smollm2-ladder",
        "--tasks", TASKS, "--include-path", TASKS_DIR, "--limit", str(LIMIT), "--output", str(output),
        "--lm", lm, "--model-args", "dtype=float32", "--no-progress", *extra,
    ]  # fmt: skip


def _lm_eval_by_hand(lm: str, checkpoint: Path, output: Path) -> tuple[dict, list[dict]]:
    """`lm_eval` CLI on the same checkpoint, tasks and docs; returns results and the arc_easy samples."""
    command = [
        str(BIN / "lm_eval"), "--model", lm, "--model_args", f"pretrained={checkpoint},dtype=float32",
        "--tasks", TASKS, "--include_path", str(REPO / TASKS_DIR), "--limit", str(LIMIT),
        "--output_path", str(output), "--log_samples", *(["--device", "cpu"] if lm == "hf" else []),
    ]  # fmt: skip
    run = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=500)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(next(output.rglob("results_*.json")).read_text())["results"]
    samples_file = next(output.rglob("samples_sweep_arc_easy_*.jsonl"))
    return results, [json.loads(line) for line in samples_file.read_text().splitlines()]


def _assert_cells_equal(output: Path, checkpoint: Path, results: dict, samples_by_hand: list[dict]) -> None:
    metrics = pd.read_parquet(output / "metrics.parquet")
    cells = metrics[metrics.checkpoint == str(checkpoint)]
    assert len(cells) == 3  # acc, acc_norm, exact_match
    for row in cells.itertuples():
        assert row.value == pytest.approx(results[row.task][f"{row.metric},{row.filter}"], abs=1e-6), row
        assert row.stderr == pytest.approx(results[row.task][f"{row.metric}_stderr,{row.filter}"], abs=1e-6), row
    samples = pd.read_parquet(output / "samples.parquet")
    ours = samples[(samples.checkpoint == str(checkpoint)) & (samples.task == "sweep_arc_easy")].set_index("doc_id")
    assert len(samples_by_hand) == len(ours) == LIMIT
    for logged in samples_by_hand:
        expected = [float(response[0]) for response in logged["filtered_resps"]]
        assert list(ours.loc[logged["doc_id"], "choice_logprobs"]) == pytest.approx(expected, abs=1e-6)
        assert ours.loc[logged["doc_id"], "correct"] == bool(logged["acc"])


def _submit(address: str, entrypoint: list[str], *options: str, timeout: float = 400) -> subprocess.CompletedProcess:
    command = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", *options, "--", *entrypoint]
    return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


class _RayJobsCli:
    """The jobs API through the real `ray job` CLI, in a subprocess with the fixture's auth env.

    An in-process JobSubmissionClient would carry Ray's auth mode from whenever `ray` was first
    imported in this pytest process (vLLM imports it), not the token this module's head uses.
    """

    def __init__(self, address: str):
        self.address = address

    def _run(self, *args: str) -> str:
        command = [str(BIN / "ray"), "job", *args, "--address", self.address]
        completed = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
        assert completed.returncode == 0, completed.stdout + completed.stderr
        return completed.stdout + completed.stderr

    def get_job_status(self, job_id: str) -> str:
        output = self._run("status", job_id)
        pending = re.search(r"Status for job '[^']*': (\w+)", output)
        if pending:
            return pending.group(1)
        for phrase, status in (("' succeeded", "SUCCEEDED"), ("' was stopped", "STOPPED"), ("' failed", "FAILED")):
            if phrase in output:
                return status
        raise AssertionError(f"unreadable `ray job status` output: {output}")

    def get_job_logs(self, job_id: str) -> str:
        return self._run("logs", job_id)


def _wait_job(address: str, job_id: str, timeout: float = 400) -> str:
    client = _RayJobsCli(address)
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get_job_status(job_id)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still running after {timeout} s")


def _runs(output: Path) -> list[dict]:
    """The start and finish records of `runs.jsonl` (it also holds one timing record per checkpoint)."""
    records = [json.loads(line) for line in (output / "runs.jsonl").read_text().splitlines()]
    return [record for record in records if record["event"] in ("start", "finish")]


def _metric_parts(output: Path) -> dict[Path, float]:
    return {path: path.stat().st_mtime for path in (output / "cells").rglob("*.metrics.parquet")}


@pytest.fixture(scope="module")
def full_sweep(ray_head, ladder, corrupt_checkpoint, tmp_path_factory):
    """3 ladder rungs + 1 corrupt checkpoint x 2 tasks, as a user would run it after a crash.

    The first submission's driver is killed (`ray job stop`) as soon as the first cell is on disk;
    the same command is then submitted again and awaited.
    """
    output = tmp_path_factory.mktemp("sweep-full")
    entrypoint = _sweep_args([*ladder, corrupt_checkpoint], output, "--max-attempts", "2")
    job_id = f"e2lm-kill-driver-{os.getpid()}-{int(time.time())}"
    submitted = _submit(ray_head, entrypoint, "--no-wait", "--submission-id", job_id)
    assert submitted.returncode == 0, submitted.stderr
    deadline = time.time() + 300
    while not (output / "cells").exists() or not _metric_parts(output):
        assert time.time() < deadline, _RayJobsCli(ray_head).get_job_logs(job_id)[-3000:]
        time.sleep(0.3)
    stop = subprocess.run(
        [str(BIN / "ray"), "job", "stop", "--address", ray_head, job_id], env=_env(), capture_output=True, text=True
    )
    assert stop.returncode == 0, stop.stderr
    stopped_status = _wait_job(ray_head, job_id)
    time.sleep(1)  # a cell written as the driver died is atomic: there or not
    before_rerun = _metric_parts(output)
    consolidated_after_kill = (output / "metrics.parquet").exists()
    rerun = _submit(ray_head, entrypoint)
    return SimpleNamespace(
        output=output,
        stopped_status=stopped_status,
        before_rerun=before_rerun,
        consolidated_after_kill=consolidated_after_kill,
        rerun=rerun,
    )


def test_driver_killed_then_rerun_computes_only_missing_cells(full_sweep, ladder):
    output, before = full_sweep.output, full_sweep.before_rerun
    assert full_sweep.stopped_status.endswith("STOPPED")
    assert 0 < len(before) < 2 * len(ladder), "the driver was not killed mid-sweep"
    assert not full_sweep.consolidated_after_kill, "the killed driver reached consolidation"
    start, finish = _runs(output)[-2:]
    assert (start["event"], start["cells"], start["already_done"]) == ("start", 8, len(before))
    assert start["to_evaluate"] == 8 - len(before)
    assert finish["evaluated"] == 2 * len(ladder) - len(before) and finish["failed"] == 2
    after = _metric_parts(output)
    assert {path: after[path] for path in before} == before, "a cell finished before the kill was recomputed"
    cells_per_min = finish["evaluated"] / (finish["seconds"] / 60)
    print(f"rerun: {finish['evaluated']} cells + 1 corrupt checkpoint in {finish['seconds']:.0f} s ({cells_per_min:.1f} cells/min)")


def test_sweep_completes_despite_a_corrupt_checkpoint(full_sweep, ladder, corrupt_checkpoint):
    output, job = full_sweep.output, full_sweep.rerun
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


def test_sweep_equals_lm_eval_run_by_hand(full_sweep, ladder, tmp_path):
    """The last rung's cells against `lm_eval --model hf` run by hand on the same tasks and docs."""
    results, samples = _lm_eval_by_hand("hf", ladder[-1], tmp_path)
    _assert_cells_equal(full_sweep.output, ladder[-1], results, samples)


@pytest.mark.engine
def test_e2lm_vllm_sweep_equals_lm_eval_run_by_hand(ray_head, ladder, tmp_path):
    """The product path: the vLLM model in a Ray worker, against `lm_eval --model e2lm_vllm` by hand."""
    checkpoint = ladder[-1]
    output = tmp_path / "sweep"
    job = _submit(ray_head, _sweep_args([checkpoint], output, lm="e2lm_vllm"), timeout=500)
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    metrics = pd.read_parquet(output / "metrics.parquet")
    assert (metrics.backend == "vllm").all() and metrics.vllm_version.notna().all()
    results, samples = _lm_eval_by_hand("e2lm_vllm", checkpoint, tmp_path / "by-hand")
    _assert_cells_equal(output, checkpoint, results, samples)
    finish = _runs(output)[-1]
    engine = metrics.groupby("task").engine_seconds.first().sum()
    print(f"e2lm_vllm: 1 checkpoint x 2 tasks in {finish['seconds']:.0f} s (engine start {engine:.0f} s)")


def test_rerun_of_a_config_file_computes_nothing(full_sweep, ladder, tmp_path):
    """`e2lm-vllm sweep CONFIG` on the finished output: every cell is found done, nothing recomputed."""
    output = full_sweep.output
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
    client = _RayJobsCli(ray_head)
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
