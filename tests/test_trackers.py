"""`--log-to` / `e2lm-vllm log`: what a tracker holds, read back with the tracker's own reader.

Cells are written by the sweep's own `write_cell` and consolidated by its `consolidate`; the trackers
get them through the hooks the driver calls (`after_checkpoint` after each checkpoint, `after_round`
at the end of a sweep or watch round): here on a `TrackerWriter`, which pushes on the caller's thread,
and in the `run_sweep` tests through the sweep's `TrackerPush`, which queues them for a background
thread per target. TensorBoard is read by TensorBoard's `EventAccumulator`, W&B's offline runs from
their `.wandb` files (W&B's record protobufs in its LevelDB-style log, the file `wandb sync` uploads),
MLflow by `MlflowClient` on a local file store. All three are in the `test` extra: no test here skips.
No engine, except the one real in-process sweep at the end (`lm: hf`, 3 checkpoints, limit 2).
"""

from __future__ import annotations

import glob
import json
import re
import socket
import struct
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from e2lm_vllm.atomic import current_umask
from e2lm_vllm.results.schema import FAILURES_SCHEMA
from e2lm_vllm.results.store import write_table_atomic
from e2lm_vllm.sweep.cells import build_plan
from e2lm_vllm.sweep.config import SweepConfigError, validate_config
from e2lm_vllm.sweep.tables import consolidate, write_cell
from e2lm_vllm.sweep.types import CellResult, UnitResult
from e2lm_vllm.trackers.points import by_tokens
from e2lm_vllm.trackers.push import PushCount, TrackerWriter
from e2lm_vllm.trackers.spec import TrackerSpecError, parse_spec, parse_specs
from tests.sweeps import SWEEP_TASKS, flags_config

REPO = Path(__file__).resolve().parents[1]
STEPS = (1000, 2000, 3000)
TASKS = ("sweep_arc_easy", "sweep_arc_letter")  # real task YAMLs: the planner checks that tasks exist
A, B = TASKS
TOKENS_PER_STEP = 2048.0


@pytest.fixture(autouse=True)
def _wandb_offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)


# -- a sweep's output, written as the driver writes it ------------------------------------------------


def _config(tmp: Path, steps=STEPS, limit: float | None = None):
    for step in steps:
        (tmp / "run" / f"step_{step}").mkdir(parents=True, exist_ok=True)
    data = {
        "models": [{"name": "fam", "checkpoints": {"paths": [str(tmp / "run" / "step_*")]}, "tokens_per_step": TOKENS_PER_STEP}],
        "tasks": list(TASKS),
        "include_paths": [str(SWEEP_TASKS)],
        "output": str(tmp / "out"),
    }
    return validate_config({**data, **({"limit": limit} if limit else {})})


def _value(step: int, task: str, shift: float = 0.0) -> float:
    return step / 10000 + (0.01 if task == B else 0.0) + shift


def _expected(steps=STEPS, shift: float = 0.0) -> dict[str, dict[int, float]]:
    """metric name -> step -> value, for every metric of every cell."""
    names: dict[str, dict[int, float]] = {}
    for task in TASKS:
        for step in steps:
            names.setdefault(f"eval/{task}/acc", {})[step] = _value(step, task, shift)
            names.setdefault(f"eval/{task}/acc_stderr", {})[step] = 0.01
            names.setdefault(f"eval/{task}/exact_match/strict-match", {})[step] = _value(step, task, shift) / 2
    return names


def _write_checkpoint(cells, output: Path, shift: float = 0.0) -> None:
    for cell in cells:
        value = _value(cell.checkpoint.step, cell.task.name, shift)
        rows = [
            {"task": cell.task.name, "metric": "acc", "filter": "none", "value": value, "stderr": 0.01, "n_samples": 8},
            # a filtered metric, and an undefined stderr (lm-eval's "N/A"): not logged, never a 0
            {"task": cell.task.name, "metric": "exact_match", "filter": "strict-match", "value": value / 2, "stderr": float("nan")},
        ]
        result = CellResult(key=cell.key, metrics=rows)
        write_cell(cell, result, UnitResult("x", [result], 1.0, "vllm", {}, 1, "h"), output, engine_share=1.0)


def _round(config, push: TrackerWriter, shift: float = 0.0) -> None:
    """One sweep (or watch) round: each checkpoint's cells written then pushed, then the tables and the round's push."""
    output = Path(config.output)
    plan = build_plan(config, output)
    for step in sorted({cell.checkpoint.step for cell in plan.missing}):
        cells = [cell for cell in plan.missing if cell.checkpoint.step == step]
        _write_checkpoint(cells, output, shift)
        push.after_checkpoint(cells)
    consolidate(plan, output)
    push.after_round()


# -- the trackers' own readers -----------------------------------------------------------------------


def _tensorboard(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], list[str], list[str]]:
    """(scalar tag -> [(step, value)] in file order, text tags, image tags), by TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    scalars = {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in tags["scalars"]}
    return scalars, sorted(tags["tensors"]), sorted(tags["images"])


def _wandb_records(path: str):
    """W&B's `Record` protobufs of one `.wandb` file: a LevelDB log (32 KiB blocks, 7-byte record headers)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position < len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:
            break
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # full, or last of several
            yield wandb_internal_pb2.Record.FromString(pending + chunk)
            pending = b""
        else:  # first or middle
            pending += chunk


def _items(items, into: dict) -> dict:
    """W&B's items as a dict: a media value (table, image) comes as one item per field, under `nested_key`."""
    for item in items:
        keys = [item.key] if item.key else list(item.nested_key)
        target = into
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = json.loads(item.value_json)
    return into


def _wandb(output: Path) -> tuple[set[str], list[dict], dict]:
    """(run ids, history rows, summary) of every offline run under OUTPUT/wandb."""
    ids, rows, summary = set(), [], {}
    for path in sorted(glob.glob(str(output / "wandb" / "offline-run-*" / "*.wandb"))):
        for record in _wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
            elif kind == "history":
                rows.append(_items(record.history.item, {}))
            elif kind == "summary":
                _items(record.summary.update, summary)
    return ids, rows, summary


def _wandb_points(rows: list[dict]) -> Counter:
    """(metric, train/step, value) -> how many times logged."""
    return Counter(
        (key, row["train/step"], round(value, 9))
        for row in rows
        for key, value in row.items()
        if key.startswith("eval/") and isinstance(value, float)
    )


def _assert_each_once(scalars: dict, rows: list[dict], expected: dict[str, dict[int, float]]) -> None:
    for name, by_step in expected.items():
        assert [(step, pytest.approx(value)) for step, value in sorted(by_step.items())] == sorted(scalars[name]), name
        tokens = sorted(scalars["eval_by_tokens/" + name.removeprefix("eval/")])
        assert [step for step, _ in tokens] == [int(step * TOKENS_PER_STEP) for step in sorted(by_step)], name
    assert not {tag for tag in scalars if tag.startswith("eval/")} - set(expected)  # nothing else (no NaN stderr)
    points = _wandb_points(rows)
    want = Counter((name, step, round(value, 9)) for name, by_step in expected.items() for step, value in by_step.items())
    assert points == want
    assert all(row.get("train/tokens") == row["train/step"] * TOKENS_PER_STEP for row in rows if f"eval/{A}/acc" in row)


def _mlflow(store: Path) -> tuple[str, dict[str, list[tuple[int, float]]]]:
    """(run id, metric -> [(step, value)] of its whole history) of the one run in the `ladder` experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store.as_uri())
    runs = client.search_runs([client.get_experiment_by_name("ladder").experiment_id])
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    return run_id, {name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name)) for name in runs[0].data.metrics}


def _assert_mlflow_each_once(store: Path, expected: dict[str, dict[int, float]], tokens: bool = True) -> str:
    run_id, history = _mlflow(store)
    for name, by_step in expected.items():
        assert [(step, round(value, 6)) for step, value in history[name]] == [(step, round(value, 6)) for step, value in sorted(by_step.items())], name
        if tokens:
            assert [step for step, _ in history[by_tokens(name)]] == [int(step * TOKENS_PER_STEP) for step in sorted(by_step)], name
    assert not {name for name in history if name.startswith("eval/")} - set(expected)  # nothing else (no NaN stderr)
    return run_id


def _targets(tmp: Path) -> list[str]:
    return [f"tensorboard:{tmp / 'tb'}", "wandb:project=e2lm-test", f"mlflow:{tmp / 'mlruns'},experiment=ladder"]


# -- the tests -----------------------------------------------------------------------------------------


def test_a_three_checkpoint_sweep_logs_every_metric_of_every_cell_once_at_its_step(tmp_path):
    config = _config(tmp_path)
    output = Path(config.output)
    push = TrackerWriter(parse_specs(_targets(tmp_path)), output)
    _round(config, push)
    push.close()

    scalars, texts, images = _tensorboard(tmp_path / "tb" / "fam")
    ids, rows, summary = _wandb(output)
    _assert_each_once(scalars, rows, _expected())
    mlflow_run = _assert_mlflow_each_once(tmp_path / "mlruns", _expected())
    assert len(ids) == 1
    # The end of the round: the `score` table and the report's plots.
    assert "quality/score/text_summary" in texts and any(tag.startswith("report/curves-") for tag in images)
    assert any(tag.startswith("quality/") for tag in scalars) or "quality/score" in str(texts)
    assert any(key.startswith("report/") for row in rows for key in row) and any(key == "quality/scores" for row in rows for key in row)
    assert any(key.startswith(f"quality/{A}/") for key in summary)
    ledger = json.loads((output / "trackers.json").read_text())
    mlflow_key = f"mlflow:{(tmp_path / 'mlruns').as_uri()},experiment=ladder"
    assert set(ledger["runs"]) == {f"tensorboard:{tmp_path / 'tb'}", "wandb:/e2lm-test", mlflow_key}
    assert ledger["runs"]["wandb:/e2lm-test"]["fam"]["run_id"] == ids.pop()
    assert ledger["runs"][mlflow_key]["fam"]["run_id"] == mlflow_run
    # No credential in it: the mode of the results beside it (the umask's), not mkstemp's 0600.
    assert (output / "trackers.json").stat().st_mode & 0o777 == (output / "metrics.parquet").stat().st_mode & 0o777 == 0o666 & ~current_umask()

    # A rerun that computes nothing logs nothing: no run opened, no event file, no W&B run.
    files = sorted(glob.glob(str(tmp_path / "tb" / "fam" / "*"))), sorted(glob.glob(str(output / "wandb" / "offline-run-*")))
    again = TrackerWriter(parse_specs(_targets(tmp_path)), output)
    _round(config, again)
    count = again.after_round()
    again.close()
    assert (count.cells, count.failures, count.scores) == (0, 0, False)
    assert _assert_mlflow_each_once(tmp_path / "mlruns", _expected()) == mlflow_run
    assert (sorted(glob.glob(str(tmp_path / "tb" / "fam" / "*"))), sorted(glob.glob(str(output / "wandb" / "offline-run-*")))) == files


def test_a_watcher_stopped_and_restarted_between_checkpoints_continues_the_same_runs(tmp_path):
    """The watcher's rounds simulated by the runner's hooks: round 1 sees steps 1000 and 2000; the
    process stops (runs closed); a new process sees step 3000 too and must log only that one."""
    first = TrackerWriter(parse_specs(_targets(tmp_path)), tmp_path / "out")
    _round(_config(tmp_path, STEPS[:2]), first)
    first.close()
    second = TrackerWriter(parse_specs(_targets(tmp_path)), tmp_path / "out")  # the restarted watcher
    config = _config(tmp_path, STEPS)
    _round(config, second)
    second.close()

    scalars, _, _ = _tensorboard(tmp_path / "tb" / "fam")
    ids, rows, _ = _wandb(Path(config.output))
    _assert_each_once(scalars, rows, _expected())
    _assert_mlflow_each_once(tmp_path / "mlruns", _expected())  # one MLflow run, continued
    assert len(ids) == 1  # one W&B run, resumed (two offline files with its id, `wandb sync` joins them)
    assert len(glob.glob(str(tmp_path / "out" / "wandb" / "offline-run-*"))) == 2


class _ScriptedWorker:
    """The in-process worker's interface, scoring by a formula instead of a model (no engine): the
    driver, the watcher and their tracker hooks run for real around it. Fails cell b at step 2000 once."""

    count = 1
    checkpoint_timeout_s = None  # as the in-process worker: a unit runs inside submit()
    failed_once: set = set()

    def __init__(self) -> None:
        self.done: dict = {}

    def describe(self) -> str:
        return "1 scripted worker"

    def submit(self, index, unit):
        cells = []
        for cell in unit.cells:
            step, task = cell.checkpoint.step, cell.task.name
            if (step, task) == (2000, B) and "b2000" not in self.failed_once:
                self.failed_once.add("b2000")
                cells.append(CellResult(key=cell.key, error="RuntimeError: scripted failure", error_kind="error"))
                continue
            value = _value(step, task)
            rows = [
                {"task": task, "metric": "acc", "filter": "none", "value": value, "stderr": 0.01},
                {"task": task, "metric": "exact_match", "filter": "strict-match", "value": value / 2, "stderr": float("nan")},
            ]
            cells.append(CellResult(key=cell.key, metrics=rows))
        self.done[len(self.done)] = UnitResult(unit.label, cells, 0.0, "scripted", {}, 1, "h")
        return len(self.done) - 1

    def wait(self, refs):
        return refs[:1]

    def get(self, ref):
        return self.done.pop(ref)

    def replace_if_dead(self, index, error) -> None:
        pass

    def shutdown(self) -> None:
        pass


def test_the_real_watcher_stopped_and_restarted_between_checkpoints(tmp_path, monkeypatch):
    """`run_sweep(watch=...)` twice on one output, the driver's and the watcher's own hooks, a scripted
    worker in place of the engine: steps 1000 and 2000 (b fails at 2000), stop at --until-step 2000;
    step 3000 lands; a new watcher retries b@2000 and evaluates step 3000, stops at --until-step 3000."""
    from e2lm_vllm.sweep import executors, runner
    from e2lm_vllm.sweep.watch import WatchOptions

    monkeypatch.setattr(executors, "InProcessExecutor", _ScriptedWorker)
    _ScriptedWorker.failed_once = set()
    for step in STEPS:
        (tmp_path / "run" / f"step_{step}").mkdir(parents=True)
    config = _config(tmp_path)
    config.log_to = _targets(tmp_path)
    for step in STEPS[:2]:
        (tmp_path / "run" / f"step_{step}" / "COMPLETE").touch()
    first = runner.run_sweep(config, progress=False, in_process=True, watch=WatchOptions(poll_seconds=0.1, until_step=2000, marker="COMPLETE"))
    assert (first.stopped_by, first.evaluated, len(first.failures)) == ("until-step", 3, 1)
    (tmp_path / "run" / "step_3000" / "COMPLETE").touch()
    second = runner.run_sweep(config, progress=False, in_process=True, watch=WatchOptions(poll_seconds=0.1, until_step=3000, marker="COMPLETE"))
    assert (second.stopped_by, second.evaluated, len(second.failures)) == ("until-step", 3, 0)

    scalars, texts, _ = _tensorboard(tmp_path / "tb" / "fam")
    ids, rows, _ = _wandb(Path(config.output))
    _assert_each_once(scalars, rows, _expected())
    _assert_mlflow_each_once(tmp_path / "mlruns", _expected())
    assert len(ids) == 1 and len(glob.glob(str(tmp_path / "out" / "wandb" / "offline-run-*"))) == 2
    assert f"failures/{B}/text_summary" in texts
    assert [row["train/step"] for row in rows if "failures" in row] == [2000]


def test_recomputed_cells_are_logged_again_at_their_step_and_failures_as_text(tmp_path):
    _round(_config(tmp_path), push := TrackerWriter(parse_specs(_targets(tmp_path)), tmp_path / "out"))
    # The task's inputs change (another limit: another config hash): every cell recomputed, logged again.
    changed = _config(tmp_path, limit=4)
    _round(changed, push, shift=0.5)
    # One checkpoint of a new task fails: text at its step, no value.
    output = Path(changed.output)
    failure = {"model": "fam", "checkpoint": str(tmp_path / "run" / "step_2000"), "step": 2000, "task": "c", "error": "RuntimeError: boom", "kind": "error", "attempts": 3, "config_hash": "h"}
    write_table_atomic(pa.Table.from_pylist([failure], schema=FAILURES_SCHEMA), output / "failures.parquet", FAILURES_SCHEMA)
    assert push.after_round().failures == 1 and push.after_round().failures == 0
    push.close()

    scalars, texts, _ = _tensorboard(tmp_path / "tb" / "fam")
    ids, rows, _ = _wandb(output)
    for name, by_step in _expected().items():
        newer = _expected(shift=0.5)[name]
        both = sorted([*by_step.items(), *newer.items()])
        assert sorted((s, round(v, 6)) for s, v in scalars[name]) == [(s, round(v, 6)) for s, v in both]
        assert scalars[name][-1] == (3000, pytest.approx(newer[3000]))  # the newer point last
    assert _wandb_points(rows) == Counter(
        (n, s, round(v, 9)) for shift in (0.0, 0.5) for n, by_step in _expected(shift=shift).items() for s, v in by_step.items()
    )
    assert "failures/c/text_summary" in texts and not any(tag.startswith("eval/c/") for tag in scalars)
    _, history = _mlflow(tmp_path / "mlruns")  # MLflow keeps both values at each step
    for name, by_step in _expected().items():
        both = sorted([*by_step.items(), *_expected(shift=0.5)[name].items()])
        assert [(s, round(v, 6)) for s, v in history[name]] == [(s, round(v, 6)) for s, v in both], name
    tables = [row["failures"] for row in rows if "failures" in row]
    assert len(tables) == 1 and tables[0]["_type"] == "table-file" and [row["train/step"] for row in rows if "failures" in row] == [2000]
    table = json.loads(next((output / "wandb").glob(f"offline-run-*/files/{tables[0]['path']}")).read_text())
    assert table["data"][0][3] == "c" and "RuntimeError: boom" in table["data"][0][5]


def test_e2lm_vllm_log_pushes_an_existing_output_with_the_same_ledger(tmp_path, capsys):
    from e2lm_vllm.cli import main

    config = _config(tmp_path)
    _round(config, TrackerWriter([], Path(config.output)))  # a sweep without trackers
    target = f"tensorboard:{tmp_path / 'tb'}"
    assert main(["log", config.output, "--log-to", target]) == 0
    assert capsys.readouterr().out.startswith("logged 6 cells of 3 checkpoints, 0 failures, the scores and plots to tensorboard:")
    assert main(["log", config.output, "--log-to", target]) == 0
    assert capsys.readouterr().out.startswith("logged 0 cells of 0 checkpoints, 0 failures to")
    scalars, _, _ = _tensorboard(tmp_path / "tb" / "fam")
    assert all(sorted(scalars[name]) == [(s, pytest.approx(v)) for s, v in sorted(by_step.items())] for name, by_step in _expected().items())


def test_a_tracker_that_fails_mid_sweep_is_a_warning_and_catches_up_later(tmp_path, caplog):
    """TensorBoard's folder cannot be made (a file is in the way, as a full or read-only disk): every
    cell is still written, the push warns; once fixed, the next push logs every cell once."""
    blocker = tmp_path / "tb"
    blocker.write_text("not a folder")
    config = _config(tmp_path)
    push = TrackerWriter(parse_specs([f"tensorboard:{blocker}"]), Path(config.output))
    _round(config, push)
    assert len(pd.read_parquet(Path(config.output) / "metrics.parquet")) == 3 * 2 * 2  # the evaluation lost nothing
    assert "tracker tensorboard:" in caplog.text and "the sweep goes on" in caplog.text
    blocker.unlink()
    assert push.after_round().cells == 6
    push.close()
    scalars, _, _ = _tensorboard(blocker / "fam")
    assert all(sorted(scalars[name]) == [(s, pytest.approx(v)) for s, v in sorted(by_step.items())] for name, by_step in _expected().items())


def test_a_tracker_that_hangs_holds_neither_the_sweep_nor_the_other_trackers(tmp_path, monkeypatch, caplog):
    """An MLflow server that accepts connections and never answers (a local port listening, never
    accepting; each MLflow call hangs its whole 90 s timeout) beside TensorBoard, in a real `run_sweep`
    (scripted worker, no engine): every cell is written, TensorBoard gets every metric, and the sweep
    returns within the flush timeout (20 s) plus its own work, far short of one hung call; the warning
    names what MLflow lacks and the command that logs it."""
    from e2lm_vllm.sweep import executors, runner

    monkeypatch.setattr(executors, "InProcessExecutor", _ScriptedWorker)
    _ScriptedWorker.failed_once = {"b2000"}  # no scripted failure here
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "90")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("E2LM_TRACKERS_FLUSH_S", "20")
    config = _config(tmp_path)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        hung = f"mlflow:http://127.0.0.1:{silent.getsockname()[1]}"
        config.log_to = [hung, f"tensorboard:{tmp_path / 'tb'}"]
        started = time.monotonic()
        summary = runner.run_sweep(config, progress=False, in_process=True)
        elapsed = time.monotonic() - started
    assert summary.evaluated == 6 and not summary.failures
    assert len(pd.read_parquet(Path(config.output) / "metrics.parquet")) == 3 * 2 * 2  # the evaluation lost nothing
    assert elapsed < 20 + 30, elapsed  # the flush timeout and the sweep's own work; one hung call is 90 s
    scalars, _, _ = _tensorboard(tmp_path / "tb" / "fam")
    assert all(sorted(scalars[name]) == [(s, pytest.approx(v)) for s, v in sorted(by_step.items())] for name, by_step in _expected().items())
    busy = rf"tracker {re.escape(hung)},experiment=e2lm-vllm still busy after 2\d s \(E2LM_TRACKERS_FLUSH_S=20\); "
    assert re.search(busy + "not logged: 6 cells of 3 checkpoints, 0 failures", caplog.text), caplog.text
    assert f"`e2lm-vllm log {config.output} --log-to {hung},experiment=e2lm-vllm` logs them" in caplog.text
    assert "tracker tensorboard:" not in caplog.text  # the one that was not held is not named


def test_mlflow_local_file_store_holds_every_metric_once(tmp_path):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    first = TrackerWriter(parse_specs([f"mlflow:{store},experiment=ladder"]), tmp_path / "out")
    _round(_config(tmp_path, STEPS[:2]), first)
    first.close()
    second = TrackerWriter(parse_specs([f"mlflow:{store},experiment=ladder"]), tmp_path / "out")
    _round(_config(tmp_path), second)
    second.close()
    client = MlflowClient(tracking_uri=store.as_uri())
    runs = client.search_runs([client.get_experiment_by_name("ladder").experiment_id])
    assert len(runs) == 1
    for name, by_step in _expected().items():
        history = client.get_metric_history(runs[0].info.run_id, name)
        assert sorted((m.step, m.value) for m in history) == [(s, pytest.approx(v)) for s, v in sorted(by_step.items())], name
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")}
    assert any(path.endswith(".png") for path in artifacts)


# -- bad targets, before any engine ----------------------------------------------------------------------


def _doc_message(case: str) -> str:
    from test_bad_inputs import _doc_rows

    test, message = _doc_rows()[case]
    assert test.startswith("test_trackers.py::")
    return message


def test_bad_log_to_targets_say_what_to_write(tmp_path):
    with pytest.raises(TrackerSpecError) as error:
        parse_spec("neptune:x")
    assert str(error.value) == _doc_message("log-to-unknown")
    with pytest.raises(TrackerSpecError) as error:
        parse_spec("wandb:entity=me")
    assert str(error.value) == _doc_message("log-to-wandb-project")
    with pytest.raises(SweepConfigError, match=r"\n  log_to: Value error, --log-to 'neptune:x': unknown tracker"):
        validate_config({"models": [{"name": "m", "checkpoints": {"paths": ["x"]}}], "tasks": ["a"], "log_to": ["neptune:x"]})


def test_a_missing_tracker_package_is_one_line_naming_the_extra_before_any_engine(tmp_path, monkeypatch, capsys):
    from e2lm_vllm.sweep.cli import main

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: `import wandb` raises ImportError
    (tmp_path / "run" / "step_1").mkdir(parents=True)
    code = main([
        "--checkpoints", str(tmp_path / "run" / "step_*"), "--tasks", A, "--include-path", str(SWEEP_TASKS), "--output", str(tmp_path / "out"),
        "--log-to", "wandb:project=p", "--no-progress",
    ])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "e2lm-vllm sweep: " + _doc_message("log-to-missing-package")
    assert not (tmp_path / "out").exists()  # refused before the output, the lock, Ray or an engine


def test_online_wandb_without_credentials_is_refused_before_any_engine(tmp_path, monkeypatch):
    from e2lm_vllm.trackers.spec import require_packages

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    with pytest.raises(TrackerSpecError) as error:
        require_packages([parse_spec("wandb:project=p")])
    assert str(error.value) == _doc_message("log-to-wandb-no-credentials")
    monkeypatch.setenv("WANDB_MODE", "offline")
    require_packages([parse_spec("wandb:project=p")])
    import wandb

    wandb.teardown()  # the login check set up W&B's process-wide settings while online: later tests start clean


def test_a_flush_timeout_that_is_not_seconds_is_refused(tmp_path, monkeypatch):
    from e2lm_vllm.trackers.push import TrackerPush

    monkeypatch.setenv("E2LM_TRACKERS_FLUSH_S", "2min")
    with pytest.raises(TrackerSpecError, match=r"^E2LM_TRACKERS_FLUSH_S='2min': expected the seconds to wait for the trackers, a number >= 0$"):
        TrackerPush([], tmp_path)
    monkeypatch.setenv("E2LM_TRACKERS_FLUSH_S", "7.5")
    assert TrackerPush([], tmp_path).flush_timeout_s == 7.5


def test_an_mlflow_uris_password_stays_out_of_the_ledger_and_the_logs():
    spec = parse_spec("mlflow:https://bob:s3cret@mlflow.example:5000,experiment=x")
    assert spec.target == "https://bob:s3cret@mlflow.example:5000"  # what MLflow connects with
    assert spec.key == "mlflow:https://bob@mlflow.example:5000,experiment=x" and str(spec) == spec.key
    assert parse_spec("mlflow:http://mlflow.example:5000").key == "mlflow:http://mlflow.example:5000,experiment=e2lm-vllm"


def test_log_to_is_not_part_of_the_config_hash(tmp_path):
    from e2lm_vllm.sweep.config import config_hash

    data = {"models": [{"name": "m", "checkpoints": {"paths": [str(tmp_path / "step_1")]}}], "tasks": [A], "include_paths": [str(SWEEP_TASKS)]}
    (tmp_path / "step_1").mkdir()
    plain, logged = validate_config(data), validate_config({**data, "log_to": [f"tensorboard:{tmp_path}"]})
    assert config_hash(plain) == config_hash(logged)
    assert [cell.key for cell in build_plan(plain, tmp_path / "o").cells] == [cell.key for cell in build_plan(logged, tmp_path / "o").cells]


# -- one real sweep ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_in_process_sweep_logs_each_checkpoint_once_and_a_rerun_nothing(tmp_path, tiny_ladder_dirs):
    """`run_sweep` on 3 real checkpoints (lm-eval's HF model, 2 ARC-Easy docs): the driver's own hooks."""
    from e2lm_vllm.sweep.runner import run_sweep

    config = flags_config(tiny_ladder_dirs, tmp_path / "out", model_name="ladder", limit=2, lm="hf", num_fewshot=0)
    config.log_to = _targets(tmp_path)
    summary = run_sweep(config, progress=False, in_process=True)
    assert summary.evaluated == 3 and not summary.failures
    metrics = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    expected: dict[str, dict[int, float]] = {}
    for row in metrics.itertuples():
        expected.setdefault(f"eval/sweep_arc_easy/{row.metric}", {})[row.step] = row.value
        if row.stderr == row.stderr:
            expected.setdefault(f"eval/sweep_arc_easy/{row.metric}_stderr", {})[row.step] = row.stderr
    assert sorted(expected["eval/sweep_arc_easy/acc"]) == [0, 1000, 2000]

    scalars, _, _ = _tensorboard(tmp_path / "tb" / "ladder")
    ids, rows, _ = _wandb(tmp_path / "out")
    for name, by_step in expected.items():
        assert sorted((s, round(v, 6)) for s, v in scalars[name]) == [(s, round(v, 6)) for s, v in sorted(by_step.items())], name
    points = Counter((key, row["train/step"]) for row in rows for key in row if key.startswith("eval/"))
    assert points == Counter((name, step) for name, by_step in expected.items() for step in by_step)
    assert len(ids) == 1
    mlflow_run = _assert_mlflow_each_once(tmp_path / "mlruns", expected, tokens=False)

    again = run_sweep(config, progress=False, in_process=True)  # everything done: no engine, nothing logged
    assert again.evaluated == 0
    assert _tensorboard(tmp_path / "tb" / "ladder")[0] == scalars
    assert _assert_mlflow_each_once(tmp_path / "mlruns", expected, tokens=False) == mlflow_run
    assert len(glob.glob(str(tmp_path / "out" / "wandb" / "offline-run-*"))) == 1


def test_lm_evals_own_wandb_logger_takes_the_results_of_our_model(tmp_path, monkeypatch):
    """`lm_eval --model e2lm_vllm --wandb_args ...` runs lm-eval's `WandbLogger` on the results dict, as for
    `--model vllm`: here on the results a real `--model e2lm_vllm` run wrote (tests/data/lm_eval_e2lm_vllm).
    (Its samples go through `log_eval_samples` in memory; the samples file on disk has another shape.)"""
    import wandb
    from lm_eval.loggers import WandbLogger

    # lm-eval's logger attaches to a run already open in the process (`wandb.run`); `lm_eval` never has one.
    if wandb.run is not None:
        wandb.run.finish()
    results = json.loads((REPO / "tests" / "data" / "lm_eval_e2lm_vllm" / "results.json").read_text())
    assert results["config"]["model"] == "e2lm_vllm"
    monkeypatch.chdir(tmp_path)
    logger = WandbLogger(init_args={"project": "e2lm-lmeval", "dir": str(tmp_path), "mode": "offline"})
    logger.post_init(results)
    logger.log_eval_result()
    logger.run.finish()

    # The run's file may still be flushing after finish() on a loaded machine (seen once as a KeyError
    # below): read it until both metrics are there, 20 s at most.
    deadline = time.monotonic() + 20
    while True:
        try:
            _, rows, _ = _wandb(tmp_path)
        except (struct.error, ValueError):  # a record cut mid-write
            rows = []
        logged = {key: value for row in rows for key, value in row.items() if key.startswith("sweep_arc_easy/")}
        if {"sweep_arc_easy/acc", "sweep_arc_easy/acc_norm"} <= set(logged) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for metric in ("acc", "acc_norm"):
        assert logged[f"sweep_arc_easy/{metric}"] == results["results"]["sweep_arc_easy"][f"{metric},none"]
        assert logged[f"sweep_arc_easy/{metric}_stderr"] == results["results"]["sweep_arc_easy"][f"{metric}_stderr,none"]
    tables = [row["evaluation/eval_results"] for row in rows if "evaluation/eval_results" in row]
    assert len(tables) == 1 and tables[0]["_type"] == "table-file"
    table = json.loads(next(tmp_path.glob(f"wandb/offline-run-*/files/{tables[0]['path']}")).read_text())
    assert {row[table["columns"].index("Metric")] for row in table["data"]} >= {"acc", "acc_norm"}


def test_a_cell_whose_inputs_changed_under_the_same_config_is_logged_again():
    """Same config hash, but the task file or the checkpoint was rewritten (main's fingerprints): log again."""
    from e2lm_vllm.trackers.points import checkpoint_points

    row = {"model": "m", "checkpoint": "c", "step": 1, "tokens": None, "task": "t", "metric": "acc", "filter": "none", "value": 0.5,
           "stderr": None, "config_hash": "h", "task_fingerprint": "t1", "checkpoint_fingerprint": "c1"}  # fmt: skip
    first = checkpoint_points(pd.DataFrame([row]), {})
    logged = dict(first[0].cells)
    assert checkpoint_points(pd.DataFrame([row]), logged) == []
    for column in ("task_fingerprint", "checkpoint_fingerprint", "config_hash"):
        again = checkpoint_points(pd.DataFrame([{**row, column: "new"}]), logged)
        assert [point.values for point in again] == [{"eval/t/acc": 0.5}], column


def test_an_unreadable_table_is_a_warning_not_an_error_of_the_sweep(tmp_path, caplog):
    (tmp_path / "metrics.parquet").write_bytes(b"not parquet")
    push = TrackerWriter(parse_specs([f"tensorboard:{tmp_path / 'tb'}"]), tmp_path)
    assert push.after_round() == PushCount()
    assert "reading the output's tables failed" in caplog.text and "the sweep goes on" in caplog.text
    push.close()
