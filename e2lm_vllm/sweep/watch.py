"""Follow a training run while it trains: `e2lm-vllm sweep ... --watch`.

After the checkpoints that exist, the driver keeps its workers (and their engines: a new
checkpoint of the family is a weight swap) and polls the checkpoint sources every
``poll_seconds``. A local folder is planned once it is complete (`checkpoints.incomplete_reason`:
whole safetensors files, or the user's marker file); until then it is only "waiting", never
evaluated nor recorded as failed. After each finished checkpoint, ``metrics.parquet``,
``samples.parquet``, ``failures.parquet`` and ``OUTPUT/report/`` (``report.md``, its plots,
``scores.json``, ``score.txt``) are replaced atomically, so an open ``report.md`` grows as the
run does. ``OUTPUT/watch.json`` says what the watcher waits for.

It stops when a checkpoint at or past ``until_step`` is evaluated, when ``stop_file`` appears
(it is removed, so the next watcher starts clean), or on Ctrl-C: the first finishes the
checkpoint in flight, a second abandons it (cells are written atomically, so nothing is
half-written; the output lock is released either way). A restarted watcher resumes: cells
already written are not evaluated again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e2lm_vllm.atomic import write_text_atomic
from e2lm_vllm.sweep.checkpoints import Completeness

if TYPE_CHECKING:
    from e2lm_vllm.sweep.cells import Plan
    from e2lm_vllm.sweep.session import Session
    from e2lm_vllm.sweep.types import WorkUnit

log = logging.getLogger("e2lm_vllm.sweep")

REPORT_FOLDER = "report"
STATUS_FILE = "watch.json"
# A watcher that sees nothing new says it is still waiting this often, so a quiet log is not a dead one.
QUIET_LOG_SECONDS = 300.0


@dataclass(frozen=True)
class WatchOptions:
    poll_seconds: float = 60.0
    until_step: int | None = None  # stop once a checkpoint at this step or later is evaluated
    stop_file: Path | None = None  # stop (after the checkpoint in flight) once this file exists
    marker: str | None = None  # a checkpoint folder is complete when it holds this file (default: weights whole)


def next_expected_step(steps: list[int]) -> tuple[int | None, int | None, bool]:
    """(next step, spacing, regular) from the steps seen: regular when every gap so far is the same."""
    ordered = sorted(set(steps))
    if len(ordered) < 2:
        return None, None, False
    gaps = [later - earlier for earlier, later in zip(ordered, ordered[1:])]
    return ordered[-1] + gaps[-1], gaps[-1], len(set(gaps)) == 1


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class WatchState:
    """What the watcher has seen: each checkpoint with the time it first saw it complete, and what it waits for."""

    options: WatchOptions
    seen: dict[str, tuple[int, float]] = field(default_factory=dict)  # checkpoint id -> (step, first seen)
    waiting: dict[str, str] = field(default_factory=dict)  # folder -> why it is not complete yet
    skipped: dict[str, str] = field(default_factory=dict)  # folder -> why it cannot be used as it is
    evaluated: list[dict[str, Any]] = field(default_factory=list)  # this run's checkpoints, in order
    logged: str = ""
    logged_at: float = 0.0

    def note(self, plan: Plan, completeness: Completeness | None) -> None:
        now = time.time()
        for cell in plan.cells:
            self.seen.setdefault(cell.checkpoint.id, (cell.checkpoint.step, now))
        if completeness is not None:
            self.waiting = dict(completeness.waiting)
            self.skipped = dict(completeness.skipped)

    def status(self) -> dict[str, Any]:
        steps = [step for step, _ in self.seen.values()]
        step, spacing, regular = next_expected_step(steps)
        last = max(self.seen.items(), key=lambda item: item[1], default=None)
        return {
            "next_step": step,
            "step_spacing": spacing,
            "spacing_regular": regular,
            "last_checkpoint": {"checkpoint": last[0], "step": last[1][0], "seen": _utc(last[1][1])} if last else None,
            "incomplete": self.waiting,
            "skipped": self.skipped,
            "checkpoints_seen": len(self.seen),
            "evaluated_this_run": self.evaluated,
        }

    def describe(self) -> str:
        """One line: what the watcher waits for, the last checkpoint and when it was seen, what is half-written."""
        status = self.status()
        if status["next_step"] is None:
            wanted = "the next checkpoint"
        elif status["spacing_regular"]:
            wanted = f"step {status['next_step']} (every {status['step_spacing']} steps)"
        else:
            wanted = f"step {status['next_step']}? (spacing irregular, last gap {status['step_spacing']})"
        last = status["last_checkpoint"]
        parts = [f"watching: waiting for {wanted}"]
        parts.append(f"last checkpoint step {last['step']} ({Path(last['checkpoint']).name}), seen {last['seen']}" if last else "no checkpoint yet")
        if self.waiting:
            parts.append(
                f"{len(self.waiting)} incomplete: "
                + "; ".join(f"{Path(folder).name} ({reason})" for folder, reason in sorted(self.waiting.items()))
            )
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped: " + ", ".join(sorted(Path(folder).name for folder in self.skipped)))
        return "; ".join(parts)

    def log_progress(self, output: Path) -> None:
        """Log and write ``watch.json`` when what is awaited changes, and every QUIET_LOG_SECONDS otherwise."""
        line = self.describe()
        now = time.time()
        if line != self.logged:
            status = {**self.status(), "options": {k: str(v) if isinstance(v, Path) else v for k, v in self.options.__dict__.items()}}
            write_text_atomic(output / STATUS_FILE, json.dumps(status, indent=1) + "\n")
        if line != self.logged or now - self.logged_at >= QUIET_LOG_SECONDS:
            log.info("%s", line)
            self.logged, self.logged_at = line, now
        else:
            log.debug("%s", line)

    def markdown(self) -> list[str]:
        """The section report.md ends with: every checkpoint scored, and what the watcher waits for."""
        lines = ["## Following the run", "", self.describe() + f" (report written {_utc(time.time())}).", ""]
        return lines


def write_report(output: Path, state: WatchState) -> Path:
    """``OUTPUT/report/``: the `score` table (``score.txt``), ``report.md`` and its plots, each replaced atomically.

    Built in a temporary folder and moved file by file, ``report.md`` last, so a reader never sees
    a half-written file nor a report naming a plot not there yet. With too few checkpoints to
    score (one checkpoint: no curve), ``report.md`` says so and lists what is there.
    """
    from e2lm_vllm.quality.cli import render_text
    from e2lm_vllm.quality.failures import failure_line
    from e2lm_vllm.quality.report import write_results_report
    from e2lm_vllm.quality.table import ScoringInputError

    final = output / REPORT_FOLDER
    final.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report.", dir=output))
    metrics = None
    try:
        try:
            # One read of each table and one scoring of each sample per rebuild (the cost of a long run's
            # rebuilds grows with its checkpoints only through the tables themselves).
            scored = write_results_report(output, staging)
            metrics = scored.results.metrics
            (staging / "score.txt").write_text(render_text(scored.report, failure_line(scored.failures)) + "\n")
        except ScoringInputError as error:  # too few results yet: expected early in a run
            log.info("report: not scored yet (%s: %s)", type(error).__name__, error)
            reason = f"Not scored yet: {type(error).__name__}: {error}. Waiting for more checkpoints."
            (staging / "score.txt").write_text(reason + "\n")
            (staging / "report.md").write_text("\n".join(["# Benchmark quality report", "", reason, ""]))
        except Exception as error:  # noqa: BLE001 - a bug or a corrupt table: said as an error, the watcher lives on
            log.error("report: could not be made (%s: %s)", type(error).__name__, error, exc_info=True)
            reason = f"Report failed: {type(error).__name__}: {error}. This is an error, not a wait: see the watcher's log."
            (staging / "score.txt").write_text(reason + "\n")
            (staging / "report.md").write_text("\n".join(["# Benchmark quality report", "", reason, ""]))
        try:
            evaluated = _evaluated_checkpoints(output, metrics)
        except Exception as error:  # noqa: BLE001 - the same error as above, already logged when it is
            evaluated = [f"- unreadable: {type(error).__name__}: {error}"]
        markdown = (staging / "report.md").read_text().rstrip("\n").split("\n")
        markdown += ["", *state.markdown(), "Checkpoints in the results:", "", *evaluated, ""]
        (staging / "report.md").write_text("\n".join(markdown))
        names = sorted(path.name for path in staging.iterdir() if path.name != "report.md") + ["report.md"]
        for name in names:
            os.replace(staging / name, final / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final / "report.md"


def _evaluated_checkpoints(output: Path, metrics: Any = None) -> list[str]:
    """``- model step N: checkpoint (tasks)`` for each checkpoint in ``metrics.parquet`` (or the table
    already read for the report), deleted checkpoints marked."""
    import pandas as pd

    path = output / "metrics.parquet"
    if metrics is None:
        if not path.is_file():
            return ["- none yet"]
        metrics = pd.read_parquet(path)
    if metrics.empty:
        return ["- none yet"]
    lines = []
    for (model, step, checkpoint), rows in metrics.groupby(["model", "step", "checkpoint"], sort=True):
        deleted = "checkpoint_deleted" in rows and bool(rows["checkpoint_deleted"].fillna(False).any())
        lines.append(
            f"- {model} step {step}: `{checkpoint}` ({', '.join(sorted(rows['task'].unique()))})"
            + (" (checkpoint deleted since; rows kept)" if deleted else "")
        )
    return lines


@contextmanager
def _interrupts(stop: threading.Event) -> Iterator[list[bool]]:
    """First Ctrl-C: set ``stop`` (the checkpoint in flight is finished); a second: KeyboardInterrupt (abandoned)."""
    interrupted: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield interrupted  # signals reach the main thread only: a watcher run from a thread stops by stop file
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)
        stop.set()
        log.warning("Ctrl-C: stopping after the checkpoint in flight; Ctrl-C again to abandon it")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _until_step_reached(session: Session, plan: Plan, until_step: int | None) -> bool:
    """A checkpoint at or past ``until_step`` has every cell written or failed in this run."""
    if until_step is None:
        return False
    failed = {(f["checkpoint"], f["task"]) for f in session.failures}
    by_checkpoint: dict[str, bool] = {}
    for cell in plan.cells:
        if cell.checkpoint.step >= until_step:
            finished = cell.metrics_part(session.output).is_file() or (cell.checkpoint.id, cell.task.name) in failed
            by_checkpoint[cell.checkpoint.id] = by_checkpoint.get(cell.checkpoint.id, True) and finished
    return any(by_checkpoint.values())


def _keep_earlier_cells(plan: Plan, earlier: Plan) -> Plan:
    """``plan`` plus the cells of ``earlier`` it lacks: a trainer that deletes old checkpoints (HF's
    ``save_total_limit``) must not take their rows out of ``metrics.parquet`` while the watcher runs."""
    keys = {cell.key for cell in plan.cells}
    plan.cells += [cell for cell in earlier.cells if cell.key not in keys]
    return plan


def follow(session: Session, plan: Plan, options: WatchOptions, completeness: Completeness | None) -> Plan:
    """Evaluate ``plan``, then poll for new complete checkpoints until told to stop; returns the last plan."""
    output = session.output
    state = WatchState(options)
    current = [plan]

    def stop_file_present() -> bool:
        return options.stop_file is not None and options.stop_file.exists()

    requested: list[str] = []  # why the round in flight was told to stop after its current unit

    def stop_reason(interrupted: list[bool]) -> str | None:
        if interrupted:
            return "interrupt"
        if requested:
            return requested[0]
        if stop_file_present():
            return "stop-file"
        if _until_step_reached(session, current[0], options.until_step):
            return "until-step"
        return None

    def after_unit(unit: WorkUnit) -> None:
        state.evaluated.append({"checkpoint": unit.checkpoint.id, "step": unit.checkpoint.step, "finished": _utc(time.time())})
        session.write_tables(current[0])
        write_report(output, state)
        reason = stop_reason(interrupted)
        if reason is not None:
            requested.append(reason)
            session.stop.set()  # the round's other units wait for the next watcher

    with _interrupts(session.stop) as interrupted:
        state.note(plan, completeness)
        session.evaluate(plan, after_unit)
        session.write_tables(plan)
        write_report(output, state)
        session.end_round()
        while (reason := stop_reason(interrupted)) is None:
            state.log_progress(output)
            deadline = time.monotonic() + options.poll_seconds
            # Sleep in short slices: a stop file or Ctrl-C is obeyed within a second, not a poll.
            while time.monotonic() < deadline and not session.stop.is_set() and not stop_file_present():
                session.stop.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            if session.stop.is_set() or stop_file_present():
                continue  # stop_reason says why
            completeness = completeness.next_poll() if completeness is not None else Completeness(options.marker)
            current[0] = _keep_earlier_cells(session.plan(completeness=completeness), current[0])
            state.note(current[0], completeness)
            if current[0].units:
                log.info("watch: %d new checkpoints complete: %s", len(current[0].units), ", ".join(u.label for u in current[0].units))
                session.evaluate(current[0], after_unit)
                session.write_tables(current[0])
                write_report(output, state)
                session.end_round()
    state.log_progress(output)  # watch.json as the watcher leaves it
    session.summary.stopped_by = reason
    log.info("watch: stopped (%s); %s", reason, state.describe())
    if reason == "stop-file" and options.stop_file is not None:
        options.stop_file.unlink(missing_ok=True)  # obeyed: the next watcher starts clean
    return current[0]
