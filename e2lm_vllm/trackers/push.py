"""The sweep's hook into the trackers: after each checkpoint its cells, at the end of a round the scores.

``TrackerWriter`` does a push on the caller's thread: it reads what the output folder holds,
compares it with the ledger and logs only what a run lacks, so the sweep, a restarted sweep, a
watcher and ``e2lm-vllm log`` share one path. A tracker that fails (disk full, server down, bad
credentials) is a warning, and the cells it missed stay out of the ledger, so the next push (or
``e2lm-vllm log OUTPUT --log-to ...``) logs them.

``TrackerPush`` is what the sweep holds: its hooks only queue the push for a background thread per
target, each running a ``TrackerWriter``, because a tracker call can block for minutes (W&B's
online ``init``, an MLflow server that accepts and never answers) and neither the dispatch loop
nor the other targets must wait on it. At the end of the sweep ``close`` waits for the queues at
most ``E2LM_TRACKERS_FLUSH_S`` seconds (default 120), then warns naming what each target still
lacks; the results hold it, and ``e2lm-vllm log`` pushes it later.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from e2lm_vllm.trackers.base import RunIdentity, ScoresSnapshot, Tracker
from e2lm_vllm.trackers.ledger import Ledger
from e2lm_vllm.trackers.points import checkpoint_points, failure_notes
from e2lm_vllm.trackers.spec import TrackerSpec, TrackerSpecError, require_packages

log = logging.getLogger("e2lm_vllm.trackers")

FLUSH_TIMEOUT_ENV = "E2LM_TRACKERS_FLUSH_S"
FLUSH_TIMEOUT_S = 120.0  # at the end of a sweep: long enough for W&B's `finish` upload, short of holding a job


@dataclass(frozen=True)
class PushCount:
    """What one push logged: checkpoints and cells, failures, whether the scores were logged."""

    checkpoints: int = 0
    cells: int = 0
    failures: int = 0
    scores: bool = False

    def __add__(self, other: PushCount) -> PushCount:
        return PushCount(
            self.checkpoints + other.checkpoints, self.cells + other.cells, self.failures + other.failures, self.scores or other.scores
        )


def open_tracker(spec: TrackerSpec, identity: RunIdentity) -> Tracker:
    options = dict(spec.options)
    if spec.kind == "wandb":
        from e2lm_vllm.trackers.wandb_tracker import WandbTracker

        return WandbTracker(spec.target, options, identity)
    if spec.kind == "mlflow":
        from e2lm_vllm.trackers.mlflow_tracker import MlflowTracker

        return MlflowTracker(spec.target, options, identity)
    from e2lm_vllm.trackers.tensorboard_tracker import TensorBoardTracker

    return TensorBoardTracker(spec.target, identity)


def _read(paths: Iterable[Path]) -> pd.DataFrame:
    frames = [pd.read_parquet(path) for path in paths if path.is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _failures(output: Path) -> pd.DataFrame:
    path = output / "failures.parquet"
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame()


class TrackerWriter:
    """The trackers of one output folder, pushed on the caller's thread; runs opened on first use and kept until ``close``."""

    def __init__(self, specs: list[TrackerSpec], output: Path):
        require_packages(specs)
        self.specs, self.output = specs, Path(output)
        self.ledger = Ledger.of(self.output)
        self.runs: dict[tuple[str, str], Tracker] = {}
        self.broken: set[str] = set()  # targets that failed in this process: warned once, retried next push

    # -- the hooks ---------------------------------------------------------------------------------

    def after_checkpoint(self, cells: Iterable[Any]) -> PushCount:
        """The cells of one checkpoint, just written (``Cell`` objects of the sweep's plan)."""
        return self._guard("trackers", "reading the checkpoint's cells", lambda: self._after_checkpoint(list(cells))) or PushCount()

    def after_round(self) -> PushCount:
        """The whole output (cells a crash kept from the trackers included), then the scores and plots."""
        return self._guard("trackers", "reading the output's tables", self._after_round) or PushCount()

    def _after_checkpoint(self, cells: list[Any]) -> PushCount:
        metrics = _read(cell.metrics_part(self.output) for cell in cells)
        failures = _failures(self.output)
        if not failures.empty:
            wanted = {(cell.checkpoint.id, cell.task.name) for cell in cells}
            failures = failures[[pair in wanted for pair in zip(failures["checkpoint"], failures["task"])]]
        return self.push(metrics, failures, scores=False)

    def _after_round(self) -> PushCount:
        path = self.output / "metrics.parquet"
        metrics = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
        return self.push(metrics, _failures(self.output), scores=True)

    def close(self) -> None:
        for (target, model), run in list(self.runs.items()):
            self._guard(target, f"closing the run of {model}", run.close)
        self.runs.clear()

    def unlogged(self) -> dict[str, PushCount]:
        """Per target (``spec.key``): the cells and failures in the output's tables its ledger lacks.

        Reads the tables and the ledger only (no tracker call): safe while a push is stuck in one.
        """
        path = self.output / "metrics.parquet"
        metrics = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
        failures = _failures(self.output)
        lacking = {}
        for spec in self.specs:
            count = PushCount()
            for model in sorted(set(metrics.get("model", pd.Series(dtype=str))) | set(failures.get("model", pd.Series(dtype=str)))):
                record = self.ledger.run(spec.key, model)
                points = checkpoint_points(metrics[metrics["model"] == model] if not metrics.empty else metrics, record["cells"])
                notes = failure_notes(failures[failures["model"] == model], set(record["failures"])) if not failures.empty else []
                count = count + PushCount(len(points), sum(len(point.cells) for point in points), len(notes))
            if count.cells or count.failures:
                lacking[spec.key] = count
        return lacking

    # -- the work ----------------------------------------------------------------------------------

    def push(self, metrics: pd.DataFrame, failures: pd.DataFrame, scores: bool) -> PushCount:
        models = sorted(set(metrics.get("model", pd.Series(dtype=str))) | set(failures.get("model", pd.Series(dtype=str))))
        snapshot = self._scores(metrics) if scores and not metrics.empty else None
        try:
            return self._push_all(metrics, failures, snapshot, models)
        finally:
            if snapshot is not None and snapshot.folder is not None:
                shutil.rmtree(snapshot.folder, ignore_errors=True)

    def _push_all(self, metrics: pd.DataFrame, failures: pd.DataFrame, snapshot: ScoresSnapshot | None, models: list[str]) -> PushCount:
        total = PushCount()  # the most any target took: every target gets the same cells
        for spec in self.specs:
            target = PushCount()
            for model in models:
                count = self._guard(
                    spec.key,
                    f"logging {model}",
                    lambda spec=spec, model=model: self._push_run(
                        spec, model, metrics[metrics["model"] == model] if not metrics.empty else metrics,
                        failures[failures["model"] == model] if not failures.empty else failures, snapshot, len(models),
                    ),
                )
                target = target + (count or PushCount())
            total = max(total, target, key=lambda c: (c.cells, c.failures, c.scores))
        return total

    def _run(self, spec: TrackerSpec, model: str, record: dict[str, Any], families: int) -> Tracker:
        run = self.runs.get((spec.key, model))
        if run is None:
            name = spec.option("name") or model
            if spec.option("name") and families > 1:
                name = f"{name}-{model}"
            run = open_tracker(spec, RunIdentity(model=model, name=name, run_id=record["run_id"], output=self.output))
            self.runs[(spec.key, model)] = run
            log.info("%s: %s run %s for %s", spec, "continuing" if record["run_id"] else "started", run.run_id, model)
            if record["run_id"] != run.run_id:  # kept at once: a crash before the first value still resumes this run
                record["run_id"] = run.run_id
                self.ledger.save_run(spec.key, model, record)
        return run

    def _push_run(
        self, spec: TrackerSpec, model: str, metrics: pd.DataFrame, failures: pd.DataFrame, snapshot: ScoresSnapshot | None, families: int
    ) -> PushCount:
        record = self.ledger.run(spec.key, model)
        points = checkpoint_points(metrics, record["cells"])
        notes = failure_notes(failures, set(record["failures"])) if not failures.empty else []
        new_scores = snapshot is not None and snapshot.digest != record["scores"]
        if not (points or notes or new_scores):
            return PushCount()  # nothing new: not even a run is opened
        run = self._run(spec, model, record, families)
        for point in points:
            run.log_checkpoint(point)
            record["cells"].update(dict(point.cells))
            self.ledger.save_run(spec.key, model, record)  # after each checkpoint: a crash re-logs at most one
        if notes:
            run.log_failures(notes)
            record["failures"] = sorted({*record["failures"], *(note.key for note in notes)})
            self.ledger.save_run(spec.key, model, record)
        if new_scores:
            run.log_scores(snapshot)
            record["scores"] = snapshot.digest
            self.ledger.save_run(spec.key, model, record)
        self.broken.discard(spec.key)
        return PushCount(len(points), sum(len(p.cells) for p in points), len(notes), new_scores)

    def _guard(self, target: str, what: str, action: Any) -> Any:
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - a tracker never stops nor loses an evaluation
            level = logging.DEBUG if target in self.broken else logging.WARNING
            log.log(
                level,
                "tracker %s: %s failed (%s: %s); the sweep goes on, the cells it missed are logged at the next push "
                "or by `e2lm-vllm log %s --log-to ...`",
                target, what, type(error).__name__, error, self.output,
            )  # fmt: skip
            self.broken.add(target)
            if isinstance(error, OSError):  # a run half-open on a full disk: reopened next time
                self.runs = {key: run for key, run in self.runs.items() if key[0] != target}
            return None

    def _scores(self, metrics: pd.DataFrame) -> ScoresSnapshot | None:
        """The `score` table and the report's plots of the output so far; None while it cannot be scored."""
        from e2lm_vllm.quality.api import ScoringConfig, prepare_table, score_results
        from e2lm_vllm.quality.cli import render_text
        from e2lm_vllm.quality.report import write_report
        from e2lm_vllm.quality.table import load_results

        try:
            results = load_results(self.output)
            config = ScoringConfig()
            report = score_results(results, config)
            table = prepare_table(results, config)
        except Exception as error:  # noqa: BLE001 - one checkpoint has no curve yet: no scores, no warning
            log.info("trackers: no scores yet (%s: %s)", type(error).__name__, error)
            return None
        scores = report.to_json_dict()
        digest = hashlib.sha256(json.dumps(scores, sort_keys=True, default=str).encode()).hexdigest()[:16]
        # The plots go to a folder of the trackers' own (the watcher's OUTPUT/report is its business);
        # every tracker copies them before the push returns, so they live only as long as needed.
        folder = Path(tempfile.mkdtemp(prefix=".trackers-report.", dir=self.output))
        try:
            write_report(report, table, folder, source=str(self.output))
        except Exception as error:  # noqa: BLE001 - plots are a bonus: the scores go without them
            log.warning("trackers: report plots failed (%s: %s)", type(error).__name__, error)
        return ScoresSnapshot(
            tasks=report.tasks_frame(),
            text=render_text(report),
            scores=scores,
            images=tuple(sorted(folder.glob("*.png"))),
            step=int(metrics["step"].max()),
            digest=digest,
            folder=folder,
        )


def flush_timeout() -> float:
    """``E2LM_TRACKERS_FLUSH_S``: how long the end of a sweep waits for the trackers' queues (default 120 s)."""
    text = os.environ.get(FLUSH_TIMEOUT_ENV, "").strip()
    try:
        seconds = float(text) if text else FLUSH_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # NaN too
        raise TrackerSpecError(f"{FLUSH_TIMEOUT_ENV}={text!r}: expected the seconds to wait for the trackers, a number >= 0")
    return seconds


class _Lane:
    """One target's queue and the background thread that pushes it through its own ``TrackerWriter``.

    Queued pushes are folded: a round's push reads the whole output, so the checkpoints queued
    before it need no push of their own (a slow tracker catches up in one push, not one per checkpoint).
    """

    def __init__(self, writer: TrackerWriter):
        self.writer = writer
        self.jobs: queue.SimpleQueue[tuple[str, list[Any]]] = queue.SimpleQueue()
        self.closed = threading.Event()  # the sweep stopped waiting: a push in flight finishes, no other starts
        self.thread = threading.Thread(target=self._work, name=f"e2lm-vllm-trackers {writer.specs[0].kind}", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while not self.closed.is_set():
            jobs = [self.jobs.get()]
            while True:
                try:
                    jobs.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            last_round = max((index for index, (kind, _) in enumerate(jobs) if kind == "round"), default=-1)
            for index, (kind, cells) in enumerate(jobs):
                if self.closed.is_set():
                    return
                try:
                    if kind == "checkpoint" and index > last_round:
                        self.writer.after_checkpoint(cells)
                    elif kind == "round" and index == last_round:
                        self.writer.after_round()
                    elif kind == "close":
                        self.writer.close()
                        return
                except Exception as error:  # noqa: BLE001 - the writer warns itself; the thread must outlive a bug
                    log.warning("trackers: a push failed (%s: %s)", type(error).__name__, error, exc_info=True)


class TrackerPush:
    """The sweep's hooks: they only queue the push, one background thread per target does it.

    So no tracker call holds the sweep, and a target that hangs (an MLflow server that never answers)
    holds no other target. ``close`` waits for the queues at most ``flush_timeout_s``
    (``E2LM_TRACKERS_FLUSH_S``), then warns naming what each target lacks.
    """

    def __init__(self, specs: list[TrackerSpec], output: Path, flush_timeout_s: float | None = None):
        self.flush_timeout_s = flush_timeout() if flush_timeout_s is None else flush_timeout_s
        require_packages(specs)  # every target's package and credentials, before any thread starts
        self.lanes = [_Lane(TrackerWriter([spec], output)) for spec in specs]
        self.specs, self.output = specs, Path(output)

    def after_checkpoint(self, cells: Iterable[Any]) -> None:
        """Queue the push of one checkpoint's cells, just written (``Cell`` objects of the sweep's plan)."""
        cells = list(cells)
        for lane in self.lanes:
            lane.jobs.put(("checkpoint", cells))

    def after_round(self) -> None:
        """Queue the push of the whole output (what earlier pushes missed), then of the scores and plots."""
        for lane in self.lanes:
            lane.jobs.put(("round", []))

    def close(self) -> None:
        """Wait at most ``flush_timeout_s`` for the queued pushes and the runs' closing; then warn naming what is not logged."""
        open_lanes = [lane for lane in self.lanes if not lane.closed.is_set()]
        started = time.monotonic()
        for lane in open_lanes:
            lane.jobs.put(("close", []))
        for lane in open_lanes:
            lane.thread.join(max(0.0, started + self.flush_timeout_s - time.monotonic()))
            lane.closed.set()
        waited = time.monotonic() - started
        for lane in open_lanes:
            stuck = lane.thread.is_alive()  # a daemon thread: it ends with the process, or after the call in flight
            if stuck or lane.writer.broken:
                self._warn_unlogged(lane.writer, f"still busy after {waited:.0f} s ({FLUSH_TIMEOUT_ENV}={self.flush_timeout_s:g})" if stuck else "failed")

    def _warn_unlogged(self, writer: TrackerWriter, why: str) -> None:
        spec = writer.specs[0]
        try:
            count = writer.unlogged().get(spec.key)
        except Exception as error:  # noqa: BLE001 - the warning must not become the sweep's error
            log.warning("tracker %s %s; what it lacks could not be read (%s: %s)", spec, why, type(error).__name__, error)
            return
        if count is None:  # every cell there; at most the scores of the last round are missing
            log.warning("tracker %s %s; it holds every cell, `e2lm-vllm log %s --log-to %s` logs the scores", spec, why, self.output, spec)
            return
        log.warning(
            "tracker %s %s; not logged: %d cells of %d checkpoints, %d failures; the results hold them and "
            "`e2lm-vllm log %s --log-to %s` logs them",
            spec, why, count.cells, count.checkpoints, count.failures, self.output, spec,
        )  # fmt: skip
