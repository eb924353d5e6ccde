"""Following a training run: `e2lm-vllm sweep --watch`, in this process on a real vLLM engine.

A background writer puts the 3 tiny ladder rungs into a watched folder one by one, as a trainer
would: rung 0 before the watcher starts; the watcher is stopped by a stop file once rung 0 is
evaluated and started again (a restart in the middle of the run); rung 1 is then written slowly, in
two pieces with a pause the watcher must sit through; rung 2 lands last and the watcher stops at it
(`until_step`). Each rung must be evaluated exactly once, the slow one only once whole and never
recorded as failed, and the report must list all three. Task: one tiny ARC task, 2 docs, 0-shot.

The completeness check itself is tested on synthetic safetensors files, without an engine.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from e2lm_vllm.sweep.checkpoints import incomplete_reason, safetensors_incomplete
from e2lm_vllm.sweep.watch import next_expected_step
from tests.sweeps import SWEEP_TASKS, flags_config

WEIGHTS = "model.safetensors"


# -- completeness, on synthetic files (no engine) ------------------------------------------------


def _synthetic_checkpoint(folder: Path, shards: int = 1) -> list[Path]:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    tensors = {f"layer{i}.weight": np.arange(i * 10, i * 10 + 37, dtype=np.float32) for i in range(4)}
    if shards == 1:
        save_file(tensors, str(folder / WEIGHTS))
        return [folder / WEIGHTS]
    names = sorted(tensors)
    files, weight_map = [], {}
    for shard in range(shards):
        file = folder / f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[shard::shards]}
        save_file(part, str(file))
        weight_map.update({name: file.name for name in part})
        files.append(file)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return files


def test_a_safetensors_file_is_complete_only_at_its_final_size(tmp_path):
    (weights,) = _synthetic_checkpoint(tmp_path / "step_1")
    whole = weights.read_bytes()
    assert incomplete_reason(tmp_path / "step_1") is None
    for length in (0, 5, 8, 50, len(whole) // 2, len(whole) - 1):
        weights.write_bytes(whole[:length])  # as a trainer leaves it mid-write
        assert incomplete_reason(tmp_path / "step_1") is not None, f"{length} of {len(whole)} bytes taken as complete"
    weights.write_bytes(whole[: len(whole) - 1])
    assert safetensors_incomplete(weights) == f"{WEIGHTS}: {len(whole) - 1} of {len(whole)} bytes"
    weights.write_bytes(whole)
    assert incomplete_reason(tmp_path / "step_1") is None


def test_a_sharded_checkpoint_waits_for_every_shard_and_its_config(tmp_path):
    folder = tmp_path / "iter_0002000"
    first, second = _synthetic_checkpoint(folder, shards=2)
    assert incomplete_reason(folder) is None
    second_bytes = second.read_bytes()
    second.unlink()
    assert incomplete_reason(folder) == f"{second.name}: not there yet"
    second.write_bytes(second_bytes[:-3])
    assert incomplete_reason(folder) == f"{second.name}: {len(second_bytes) - 3} of {len(second_bytes)} bytes"
    second.write_bytes(second_bytes)
    (folder / "config.json").write_text('{"model_type": ')  # half-written
    assert incomplete_reason(folder) == "config.json unreadable (JSONDecodeError)"
    (folder / "config.json").unlink()
    assert incomplete_reason(folder) == "no config.json yet"
    assert incomplete_reason(tmp_path / "absent") == "folder not there yet"
    # With a marker, the marker alone decides: the trainer says when it is done.
    assert incomplete_reason(folder, marker="COMPLETE") == "no COMPLETE marker yet"
    (folder / "COMPLETE").touch()
    assert incomplete_reason(folder, marker="COMPLETE") is None


def _raw_safetensors(path: Path, header: bytes, data: int = 0, length: int | None = None) -> None:
    """A file laid out as safetensors, with any header bytes (and header length) we like."""
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + b"\0" * data)


@pytest.mark.parametrize(
    ("header", "length", "reason"),
    [
        (b'{"w": {"dtype": "F32", "shape": [2]}}', None, "tensor 'w' has data_offsets None, expected [begin, end]"),
        (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 16]}}', None, "tensor 'w' has data_offsets [0, 8, 16]"),
        (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}', None, "tensor 'w' has data_offsets ['0', '8']"),
        (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}', None, "tensor 'w' has data_offsets [8, 0]"),
        (b'{"w": "F32"}', None, "tensor 'w' has data_offsets None"),
        (b"not json at all", None, "header is not JSON (JSONDecodeError"),
        (b"[1, 2]", None, "header is not a JSON object"),
        (b"{}", 2**40, f"header length {2**40} bytes is over 100000000: not a safetensors file"),
    ],
)
def test_a_malformed_safetensors_header_is_a_reason_never_an_exception(tmp_path, header, length, reason):
    _synthetic_checkpoint(tmp_path / "step_1")
    weights = tmp_path / "step_1" / WEIGHTS
    _raw_safetensors(weights, header, data=8, length=length)
    said = safetensors_incomplete(weights)
    assert said is not None and said.startswith(f"{WEIGHTS}: {reason}"), said
    from e2lm_vllm.sweep.checkpoints import folder_state

    state = folder_state(tmp_path / "step_1")
    assert state is not None and state.malformed and state.reason == said  # warned about, not "in progress"


def test_a_watcher_skips_folders_it_cannot_use_with_one_warning_each(tmp_path, caplog):
    """A glob over a training run also matches `latest`, a second layout of a step, a step the token
    schedule lacks, and a corrupt file: the watcher plans the good checkpoint and warns once per folder."""
    from e2lm_vllm.sweep.checkpoints import Completeness, resolve_checkpoints
    from e2lm_vllm.sweep.config import SweepConfigError, validate_config

    run = tmp_path / "run"
    for name in ("step_1000", "latest", "step1000-unsharded", "step_2000", "step_3000"):
        _synthetic_checkpoint(run / name)
    _raw_safetensors(run / "step_3000" / WEIGHTS, b'{"w": {"dtype": "F32"}}')
    source = {"paths": [str(run / "*")]}
    family = validate_config(
        {"models": [{"name": "m", "token_schedule": {"kind": "list", "tokens": {1000: 2e9, 3000: 6e9}}, "checkpoints": source}], "tasks": ["t"]}
    ).models[0]
    completeness = Completeness()
    with caplog.at_level(logging.WARNING, logger="e2lm_vllm.sweep"):
        assert [c.step for c in resolve_checkpoints(family, completeness)] == [1000]
        for _ in range(3):  # later polls look again, but say nothing new
            completeness = completeness.next_poll()
            assert [c.step for c in resolve_checkpoints(family, completeness)] == [1000]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4, warnings
    latest = run / "latest"  # the message of docs/bad_inputs.md row `watch-skipped-folder`
    assert (
        f"watch: skipping {latest}: model m: no training step for {latest} (expected `e2lm.step` in its config.json, "
        "a trailing number in the folder name, or `step:`) (looked at again at every poll; not warned again)"
    ) in warnings
    assert sorted(Path(folder).name for folder in completeness.skipped) == ["latest", "step1000-unsharded", "step_2000", "step_3000"]
    assert completeness.waiting == {}
    assert "token_schedule.tokens has no entry for step 2000" in completeness.skipped[str(run / "step_2000")]
    assert "no training step for" in completeness.skipped[str(run / "latest")]
    assert completeness.skipped[str(run / "step_3000")].startswith(f"{WEIGHTS}: tensor 'w' has data_offsets None")
    # A plain sweep (no watcher) still stops at the first unusable folder, before any work.
    with pytest.raises(SweepConfigError, match="no training step for"):
        resolve_checkpoints(family)


def test_the_next_expected_step_follows_the_spacing_seen():
    assert next_expected_step([]) == (None, None, False)
    assert next_expected_step([2000]) == (None, None, False)
    assert next_expected_step([0, 2000, 4000]) == (6000, 2000, True)
    assert next_expected_step([0, 1000, 4000]) == (7000, 3000, False)


def test_a_report_before_any_result_says_it_waits(tmp_path):
    """A watcher started before the first checkpoint lands still writes a report, saying why it has no scores."""
    from e2lm_vllm.results.schema import METRICS_SCHEMA
    from e2lm_vllm.results.store import write_table_atomic
    from e2lm_vllm.sweep.watch import WatchOptions, WatchState, write_report

    write_table_atomic(METRICS_SCHEMA.empty_table(), tmp_path / "metrics.parquet")
    state = WatchState(WatchOptions(), waiting={str(tmp_path / "step_000100"): "no config.json yet"})
    report = write_report(tmp_path, state).read_text()
    assert "Not scored yet: ScoringInputError" in report and "Waiting for more checkpoints" in report
    assert "watching: waiting for the next checkpoint; no checkpoint yet; 1 incomplete: step_000100 (no config.json yet)" in report
    assert "Not scored yet" in (tmp_path / "report" / "score.txt").read_text()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no staging left


def test_a_report_that_cannot_be_made_is_an_error_not_a_wait(tmp_path, caplog):
    """A corrupt metrics.parquet is no "not scored yet": it is logged as an error and the report says so."""
    from e2lm_vllm.sweep.watch import WatchOptions, WatchState, write_report

    (tmp_path / "metrics.parquet").write_bytes(b"PAR1 torn by a full disk")
    with caplog.at_level(logging.INFO, logger="e2lm_vllm.sweep"):
        report = write_report(tmp_path, WatchState(WatchOptions())).read_text()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("report: could not be made (ArrowInvalid"), errors
    assert not [r for r in caplog.records if "not scored yet" in r.getMessage()]
    assert "Report failed: ArrowInvalid" in report and "Not scored yet" not in report
    assert "Report failed" in (tmp_path / "report" / "score.txt").read_text()


def test_watch_flags_without_watch_are_refused(tmp_path, capsys):
    from e2lm_vllm.sweep import cli

    args = ["--checkpoints", str(tmp_path / "run" / "step_*"), "--tasks", "t", "--output", str(tmp_path / "out")]
    assert cli.main([*args, "--until-step", "5", "--stop-file", "STOP"]) == 2
    assert "e2lm-vllm sweep: --until-step, --stop-file: only with --watch" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_ctrl_c_stops_a_waiting_watcher_with_130_and_releases_the_lock(tmp_path):
    """The real CLI on a run with no checkpoint yet: it waits (no worker is started before there is work),
    and Ctrl-C ends it with 130, a finish record and no lock left behind."""
    output = tmp_path / "out"
    command = [
        str(Path(sys.executable).parent / "e2lm-vllm"), "sweep", "--checkpoints", str(tmp_path / "run" / "step_*"),
        "--tasks", "sweep_arc_easy", "--include-path", str(SWEEP_TASKS),
        "--output", str(output), "--watch", "--poll-seconds", "0.2", "--no-progress",
    ]  # fmt: skip
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (output / "watch.json").is_file() or watcher.poll() is not None, "the watcher to wait", 120)
        assert watcher.poll() is None, watcher.communicate()
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=60)
    finally:
        watcher.kill()
    assert watcher.returncode == 130, err
    assert "0 evaluated, 0 failed" in out and "(watch stopped: interrupt)" in out
    assert "watching: waiting for the next checkpoint; no checkpoint yet" in err
    assert "watch: stopped (interrupt)" in err
    finish = json.loads((output / "runs.jsonl").read_text().splitlines()[-1])
    assert (finish["event"], finish["stopped_by"], finish["evaluated"]) == ("finish", "interrupt", 0)
    assert not (output / "sweep.lock").exists()
    assert "Not scored yet" in (output / "report" / "report.md").read_text()


# -- the watcher on a real engine ----------------------------------------------------------------


def _put(file: Path, target: Path) -> None:
    """A rung's file at once: a hard link where possible (no 0.5 GB copy), else a copy."""
    try:
        os.link(file, target)
    except OSError:
        shutil.copyfile(file, target)


def _land(rung: Path, folder: Path) -> None:
    """A checkpoint landing whole: the weights last, as `save_pretrained` writes them after config.json."""
    folder.mkdir()
    for file in sorted(rung.iterdir(), key=lambda path: path.name == WEIGHTS):
        _put(file, folder / file.name)


def _metrics_parts(output: Path, step: int) -> list[Path]:
    return list(output.glob(f"cells/*/step{step:010d}_*/*.metrics.parquet"))


def _wait_for(condition, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.1)


def _in_background(job, stop: Path) -> tuple[threading.Thread, list[BaseException]]:
    """Run the writer `job` beside the watcher; if it fails, the stop file ends the watcher (no hang)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            job()
        except BaseException as error:  # noqa: BLE001 - re-raised by the test after the join
            errors.append(error)
            stop.touch()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _incomplete(output: Path) -> dict[str, str]:
    try:
        return json.loads((output / "watch.json").read_text())["incomplete"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return {}


@pytest.mark.engine
@pytest.mark.slow
def test_the_watcher_follows_a_run_being_written(tiny_ladder_dirs, tmp_path, engine_in_this_process):
    from e2lm_vllm.sweep.runner import run_sweep
    from e2lm_vllm.sweep.watch import WatchOptions

    run_dir, output, stop = tmp_path / "run", tmp_path / "out", tmp_path / "STOP"
    run_dir.mkdir()
    config = flags_config([run_dir / "step_*"], output, model_name="ladder", limit=2, lm="e2lm_vllm", num_fewshot=0)
    names = [rung.name for rung in tiny_ladder_dirs]  # step_000000, step_001000, step_002000

    # Run 1: rung 0 is there; a stop file once it is evaluated stops the watcher mid-run.
    _land(tiny_ladder_dirs[0], run_dir / names[0])

    def stop_after_rung_0() -> None:
        _wait_for(lambda: _metrics_parts(output, 0), "rung 0's cell")
        stop.touch()

    writer, errors = _in_background(stop_after_rung_0, stop)
    first = run_sweep(config, progress=False, in_process=True, watch=WatchOptions(poll_seconds=0.5, stop_file=stop))
    writer.join()
    assert not errors, errors
    assert (first.stopped_by, first.evaluated, first.exit_code) == ("stop-file", 1, 0)
    assert not stop.exists(), "an obeyed stop file is removed"
    report = (output / "report" / "report.md").read_text()
    assert "1 distinct steps" in report and f"- ladder step 0: `{run_dir / names[0]}`" in report
    assert not (output / "sweep.lock").exists()

    # Run 2, a restarted watcher: rung 1 written slowly in two pieces, then rung 2 at once.
    seen: dict[str, object] = {}

    def write_the_rest() -> None:
        folder = run_dir / names[1]
        folder.mkdir()
        for file in tiny_ladder_dirs[1].iterdir():
            if file.name != WEIGHTS:
                _put(file, folder / file.name)
        whole = (tiny_ladder_dirs[1] / WEIGHTS).read_bytes()
        with open(folder / WEIGHTS, "wb") as handle:
            handle.write(whole[: len(whole) // 2])
            handle.flush()
            # The watcher must have polled the half-written rung and called it incomplete, not evaluated it.
            # Its poll of the half (not of the empty file just opened: "0 bytes, header not written yet").
            _wait_for(
                lambda: f"of {len(whole)} bytes" in _incomplete(output).get(str(folder), ""), "the watcher to see the half-written rung", 60
            )
            seen["reason"] = _incomplete(output)[str(folder)]
            seen["parts_while_partial"] = len(_metrics_parts(output, 1000))
            time.sleep(1.5)  # three more polls of a half-written file
            handle.write(whole[len(whole) // 2 :])
        seen["complete_at"] = time.time()
        _wait_for(lambda: _metrics_parts(output, 1000), "rung 1's cell")
        # The trainer rotates checkpoints: rung 0 goes; its rows must stay in the tables.
        shutil.rmtree(run_dir / names[0])
        _land(tiny_ladder_dirs[2], run_dir / names[2])

    writer, errors = _in_background(write_the_rest, stop)
    watch = WatchOptions(poll_seconds=0.5, until_step=2000, stop_file=stop)
    second = run_sweep(config, progress=False, in_process=True, watch=watch)
    writer.join()
    assert not errors, errors
    assert (second.stopped_by, second.evaluated, second.already_done, second.exit_code) == ("until-step", 2, 1, 0)
    # Rung 0, deleted while the watcher ran, stays in its plan (watch._keep_earlier_cells): counted in the summary.
    assert second.cells == 3

    half = (tiny_ladder_dirs[1] / WEIGHTS).stat().st_size // 2
    assert seen["reason"] == f"{WEIGHTS}: {half} of {2 * half} bytes"
    assert seen["parts_while_partial"] == 0
    (part_1000,) = _metrics_parts(output, 1000)
    assert part_1000.stat().st_mtime > seen["complete_at"], "rung 1 was evaluated before it was whole"

    # Every rung evaluated exactly once over the two watchers, nothing failed, nothing repeated.
    records = [json.loads(line) for line in (output / "runs.jsonl").read_text().splitlines()]
    units = [record for record in records if record["event"] == "unit"]
    assert [Path(unit["checkpoint"]).name for unit in units] == names
    assert [r["already_done"] for r in records if r["event"] == "start"] == [0, 1]
    assert pd.read_parquet(output / "failures.parquet").empty
    metrics = pd.read_parquet(output / "metrics.parquet")
    assert sorted(metrics.step.unique()) == [0, 1000, 2000]
    assert metrics.groupby("step").checkpoint_deleted.all().to_dict() == {0: True, 1000: False, 2000: False}
    assert not metrics.duplicated(["checkpoint", "task", "metric", "filter"]).any()
    # One pool across the second watcher's rounds: rung 2, found at a later poll, is a weight swap.
    assert [unit["engine"] for unit in units[1:]] == ["checked", "swapped"]

    report = (output / "report" / "report.md").read_text()
    for step, name in zip((0, 1000, 2000), names):
        assert f"- ladder step {step}: `{run_dir / name}`" in report
    assert "3 distinct steps" in report and "Not scored yet" not in report
    assert (output / "report" / "summary.png").is_file()
    assert "sweep_arc_easy" in (output / "report" / "score.txt").read_text()
