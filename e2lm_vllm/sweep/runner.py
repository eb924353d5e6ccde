"""The sweep driver: plan the cells, hand checkpoints to the workers, write results as they land.

Workers live as long as the sweep (one per GPU, or per CPU slot): the driver gives each the next
checkpoint of the family it already has loaded, so that it swaps weights instead of starting an
engine (`e2lm_vllm.sweep.worker`). A unit that fails is retried (`max_attempts`), one that hangs
past ``checkpoint_timeout_s`` has its worker killed and is retried as a dead worker's. What runs
the units is an `executors.Executor`; how results and failures lie on disk is `tables`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from e2lm_vllm.sweep.cells import Plan, build_plan
from e2lm_vllm.sweep.checkpoints import Completeness
from e2lm_vllm.sweep.config import SweepConfig, SweepConfigError, config_hash
from e2lm_vllm.sweep.executors import CheckpointTimeoutError, Executor, WorkerPool
from e2lm_vllm.sweep.inputs import FileDigests
from e2lm_vllm.sweep.lock import output_lock
from e2lm_vllm.sweep.tables import (
    FAILURE_PARTS,
    adopt_legacy_parts,
    append_run_record,
    consolidate,
    record_failure,
    remove_failure_parts,
    write_cell,
    write_failures,
)
from e2lm_vllm.sweep.types import Cell, UnitResult, WorkUnit
from e2lm_vllm.sweep.worker import failure_kind

if TYPE_CHECKING:
    from e2lm_vllm.sweep.watch import WatchOptions
    from e2lm_vllm.trackers.push import TrackerPush

log = logging.getLogger("e2lm_vllm.sweep")

# Failure kinds worth another attempt: an error may be transient, a hang a stuck worker; `non_finite`
# (NaN weights or scores) is the checkpoint's own result and would repeat.
RETRIED_KINDS = ("error", "timeout")


@dataclass
class SweepSummary:
    output: Path
    cells: int
    already_done: int
    evaluated: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by: str | None = None  # a watched run: "until-step", "stop-file" or "interrupt"

    @property
    def exit_code(self) -> int:
        if self.stopped_by == "interrupt":
            return 130  # the shell's code for Ctrl-C, also when the checkpoint in flight was finished first
        return 1 if self.failures else 0

    def describe(self) -> str:
        lines = [
            f"sweep: {self.cells} cells, {self.already_done} already done, {self.evaluated} evaluated, "
            f"{len(self.failures)} failed in {self.seconds:.0f} s -> {self.output}"
            + (f" (watch stopped: {self.stopped_by})" if self.stopped_by else "")
        ]
        for failure in self.failures:
            first_line = failure["error"].strip().splitlines()[-1] if failure["error"].strip() else "?"
            lines.append(f"  FAILED {failure['model']} step {failure['step']} {failure['task']} [{failure['kind']}]: {first_line}")
        return "\n".join(lines)


def in_ray_job() -> bool:
    """True inside a ``ray job submit`` entrypoint, whose working dir is a temporary copy."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ  # set by the job supervisor for the entrypoint


def _failure_error(error: BaseException) -> str:
    # Ray wraps the worker's exception; keep the original type and message, not Ray's wrapping.
    cause = getattr(error, "cause", None) or error
    text = f"{type(cause).__name__}: {cause}"
    return text if len(text) < 4000 else text[:2000] + "\n...\n" + text[-2000:]


def run_sweep(
    config: SweepConfig,
    force: bool = False,
    address: str | None = None,
    progress: bool = True,
    in_process: bool = False,
    watch: WatchOptions | None = None,
) -> SweepSummary:
    """Evaluate every missing cell of `config` and write the tables; on Ray, or in this process (`in_process`).

    With `watch`, go on following the checkpoint sources after that (`e2lm_vllm.sweep.watch`).
    """
    if in_ray_job() and not Path(config.output).is_absolute():
        raise SweepConfigError(
            f"output: expected an absolute path inside a Ray job (its working dir is a temporary copy), got {config.output!r}"
        )
    if config.log_to:  # a tracker package missing is said now, before any engine starts
        from e2lm_vllm.trackers.spec import TrackerSpecError, parse_specs, require_packages

        try:
            require_packages(parse_specs(config.log_to))
        except TrackerSpecError as error:
            raise SweepConfigError(str(error)) from None
    with output_lock(Path(config.output).absolute()):  # one running sweep per output folder
        return _run_sweep(config, force, address, progress, in_process, watch)


@dataclass(frozen=True)
class InFlight:
    """A unit submitted to worker `worker` at `submitted` (``time.time()``), not yet back."""

    worker: int
    unit: WorkUnit
    submitted: float


class _Progress:
    """The cells done of `total`: a progress bar (unless disabled) and a log line with the ETA."""

    def __init__(self, total: int, show_bar: bool):
        self.total, self.done, self.started = total, 0, time.time()
        self.bar = tqdm(total=total, unit="cell", desc="sweep", disable=not show_bar, mininterval=2.0, file=sys.stderr)

    def advance(self, cells: int, failed: int) -> None:
        self.done += cells
        self.bar.update(cells)
        self.bar.set_postfix(failed=failed)
        elapsed = time.time() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        log.info("progress: %d/%d cells, %d failed, %.0f s elapsed, ETA %.0f s", self.done, self.total, failed, elapsed, eta)

    def close(self) -> None:
        self.bar.close()


@dataclass
class SweepSession:
    """One run of the driver: its config, output, workers, and what it has done so far.

    A plain sweep plans and evaluates once; a watched one (`e2lm_vllm.sweep.watch`) does so again
    at every poll with the same workers, so they keep their engines between checkpoints.
    """

    config: SweepConfig
    output: Path
    pool: WorkerPool
    summary: SweepSummary
    progress: bool
    failures: list[dict[str, Any]] = field(default_factory=list)
    # Set to finish the unit in flight and start no other (a watched run's stop file, first Ctrl-C).
    stop: threading.Event = field(default_factory=threading.Event)
    digests: FileDigests = field(default_factory=FileDigests)  # a watcher re-reads the same checkpoints
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    failures_written: int = -1  # len(failures) when failures.parquet was last written (-1: never)
    trackers: TrackerPush | None = None  # `log_to`: W&B, TensorBoard, MLflow (e2lm_vllm.trackers)

    @property
    def failure_parts(self) -> Path:
        return self.output / FAILURE_PARTS / self.run_id

    def plan(self, force: bool = False, completeness: Completeness | None = None) -> Plan:
        """The cells as the checkpoint sources are now; cells that failed in this run are not planned again."""
        plan = prepare_plan(self.config, self.output, force, completeness, self.digests)
        failed = {(f["model"], f["checkpoint"], f["task"], f["config_hash"]) for f in self.failures}

        def retry(cell: Cell) -> bool:
            return (cell.checkpoint.model, cell.checkpoint.id, cell.task.name, cell.cell_hash) not in failed

        plan.missing = [cell for cell in plan.missing if retry(cell)]
        units = []
        for unit in plan.units:
            unit.cells = [cell for cell in unit.cells if retry(cell)]
            if unit.cells:
                units.append(unit)
        plan.units = units
        return plan

    def evaluate(self, plan: Plan, after_unit: Callable[[WorkUnit], None] | None = None) -> None:
        """Run the plan's units on the pool's workers, each unit's results written as it lands, then
        `after_unit`; once `stop` is set, finish the units in flight and return."""
        if not plan.units:
            return
        workers = self.pool.get()
        log.info("%s; %d checkpoints to evaluate", workers.describe(), len(plan.units))
        pending: list[WorkUnit] = list(plan.units)
        idle: list[int] = list(range(workers.count))
        in_flight: dict[Any, InFlight] = {}
        attempts: dict[str, int] = {}
        progress = _Progress(len(plan.missing), self.progress)
        try:
            while (pending and not self.stop.is_set()) or in_flight:
                while pending and idle and not self.stop.is_set():
                    index = idle.pop(0)
                    unit = _next_unit(pending, self.pool.loaded.get(index))  # loaded: kept across a watched run's rounds
                    attempts[unit.label] = attempts.get(unit.label, 0) + 1
                    in_flight[workers.submit(index, unit)] = InFlight(index, unit, time.time())
                for ref, hung in _next_finished(workers, in_flight):
                    flight = in_flight.pop(ref)
                    idle.append(flight.worker)
                    retry = self._settle(workers, ref, flight, hung, attempts[flight.unit.label])
                    if retry:
                        pending.insert(0, flight.unit)
                        continue
                    progress.advance(len(flight.unit.cells), len(self.failures))
                    if self.trackers is not None:  # the checkpoint's cells and failures, as soon as they are written
                        self.trackers.after_checkpoint(flight.unit.cells)
                    if after_unit is not None:
                        after_unit(flight.unit)
            if pending:
                log.info("stopping: %d checkpoints left for a later run", len(pending))
        finally:
            progress.close()

    def _settle(self, workers: Executor, ref: Any, flight: InFlight, hung: CheckpointTimeoutError | None, attempt: int) -> bool:
        """Write a finished unit's cells, or record its cells' failure; True for a failure worth another attempt."""
        unit = flight.unit
        try:
            if hung is not None:
                raise hung
            result = workers.get(ref)
        except Exception as error:  # noqa: BLE001 - every failure of a checkpoint is recorded, the sweep goes on
            self.pool.loaded[flight.worker] = None
            workers.replace_if_dead(flight.worker, error)
            message = _failure_error(error)
            kind = failure_kind(error)
            if kind in RETRIED_KINDS and attempt < self.config.max_attempts:
                log.warning("%s: attempt %d failed, retrying: %s", unit.label, attempt, message.splitlines()[0])
                return True
            for cell in unit.cells:
                record_failure(self.failures, cell, message, attempt, self.failure_parts, kind)
            log.error("%s: failed after %d attempts: %s", unit.label, attempt, message.splitlines()[0])
        else:
            self.pool.loaded[flight.worker] = unit.engine_key
            self._write_unit(unit, result, wall=time.time() - flight.submitted)
        return False

    def _write_unit(self, unit: WorkUnit, result: UnitResult, wall: float) -> None:
        """Write a finished unit's cells, and its timing record in ``runs.jsonl``."""
        writing_started = time.perf_counter()
        by_key = {cell.key: cell for cell in unit.cells}
        engine_share = result.engine_seconds / max(1, len(result.cells))
        for cell_result in result.cells:
            cell = by_key[cell_result.key]
            if cell_result.error is not None:
                record_failure(self.failures, cell, cell_result.error, 1, self.failure_parts, cell_result.error_kind or "error")
            else:
                write_cell(cell, cell_result, result, self.output, engine_share)
                self.summary.evaluated += 1
        writing = time.perf_counter() - writing_started
        append_run_record(
            self.output,
            {
                "event": "unit",
                "unit": unit.label,
                "checkpoint": unit.checkpoint.id,
                "host": result.host,
                "pid": result.pid,
                "engine": result.engine,
                "wall_seconds": round(wall, 4),
                "timings": {**result.timings, "writing": round(writing, 4)},
                "swap_check": result.swap_check,
                "rss_bytes": result.rss_bytes,
            },
        )
        log.info(
            "%s: %d/%d tasks ok on %s pid %d (engine %s in %.1f s, eval %.1f s)",
            unit.label,
            sum(c.error is None for c in result.cells),
            len(result.cells),
            result.host,
            result.pid,
            result.engine,
            result.engine_seconds,
            sum(c.eval_seconds for c in result.cells),
        )

    def end_round(self) -> None:
        """After a sweep or a watch round: anything the trackers still lack, then the scores and plots."""
        if self.trackers is not None:
            self.trackers.after_round()

    def write_tables(self, plan: Plan) -> None:
        consolidate(plan, self.output)
        if self.failures_written != len(self.failures):  # a watched run calls this after every unit
            write_failures(self.failures, self.output)
            self.failures_written = len(self.failures)

    def finish(self) -> None:
        """After the last ``write_tables``: failures.parquet holds this run's failures; the parts go,
        those of killed runs too (this run retried their cells)."""
        remove_failure_parts(self.output)


def prepare_plan(
    config: SweepConfig, output: Path, force: bool, completeness: Completeness | None, digests: FileDigests
) -> Plan:
    """`build_plan`, then adopt the parts of an output folder written before fingerprints, and say which
    cells are recomputed because what they read has changed."""
    plan = build_plan(config, output, force=force, completeness=completeness, digests=digests)
    adopt_legacy_parts(plan, output)
    for line in plan.describe_recompute():
        log.warning("%s", line)
    return plan


def _run_sweep(
    config: SweepConfig, force: bool, address: str | None, progress: bool, in_process: bool, watch: WatchOptions | None
) -> SweepSummary:
    started = time.time()
    output = Path(config.output).absolute()
    output.mkdir(parents=True, exist_ok=True)
    completeness = Completeness(watch.marker) if watch is not None else None
    digests = FileDigests()
    plan = prepare_plan(config, output, force, completeness, digests)
    digest = config_hash(config)
    (output / "sweep.json").write_text(
        json.dumps({"config_hash": digest, "config": config.model_dump(mode="json")}, indent=2) + "\n"
    )
    run_id = uuid.uuid4().hex[:12]
    summary = SweepSummary(output=output, cells=len(plan.cells), already_done=len(plan.done))
    append_run_record(
        output,
        {
            "run_id": run_id,
            "event": "start",
            "time": datetime.now(timezone.utc).isoformat(),
            "config_hash": digest,
            "cells": len(plan.cells),
            "already_done": len(plan.done),
            "to_evaluate": len(plan.missing),
            "recompute": plan.describe_recompute(),
            "force": force,
            "watch": watch is not None,
        },
    )
    log.info(
        "sweep %s: %d checkpoints x %d tasks = %d cells; %d done, %d to evaluate",
        digest,
        len({c.checkpoint.id for c in plan.cells}),
        len(config.tasks),
        len(plan.cells),
        len(plan.done),
        len(plan.missing),
    )
    session = SweepSession(config, output, WorkerPool(config, address, in_process), summary, progress, digests=digests, run_id=run_id)
    if config.log_to:
        from e2lm_vllm.trackers.push import TrackerPush
        from e2lm_vllm.trackers.spec import parse_specs

        session.trackers = TrackerPush(parse_specs(config.log_to), output)
    try:
        if watch is None:
            session.evaluate(plan)
            session.write_tables(plan)
            session.end_round()
        else:
            from e2lm_vllm.sweep.watch import follow

            plan = follow(session, plan, watch, completeness)
        session.finish()
    finally:
        session.pool.shutdown()
        if session.trackers is not None:
            session.trackers.close()
    summary.cells = len(plan.cells)
    summary.failures = session.failures
    summary.seconds = time.time() - started
    append_run_record(
        output,
        {
            "run_id": run_id,
            "event": "finish",
            "time": datetime.now(timezone.utc).isoformat(),
            "evaluated": summary.evaluated,
            "failed": len(session.failures),
            "seconds": round(summary.seconds, 3),
            **({"stopped_by": summary.stopped_by} if summary.stopped_by else {}),
        },
    )
    return summary


def _next_unit(pending: list[WorkUnit], engine_key: str | None) -> WorkUnit:
    """The next unit of the family a worker already has loaded (a weight swap), else the next in order."""
    for index, unit in enumerate(pending):
        if unit.engine_key == engine_key:
            return pending.pop(index)
    return pending.pop(0)


def _next_finished(workers: Executor, in_flight: dict[Any, InFlight]) -> list[tuple[Any, CheckpointTimeoutError | None]]:
    """Units that finished, as ``(ref, None)``; else, once a unit passes ``checkpoint_timeout_s``,
    ``(ref, CheckpointTimeoutError)`` with its worker killed and replaced (`abandon`), so that the
    driver retries it as a dead worker's."""
    timeout = workers.checkpoint_timeout_s
    if timeout is None:
        return [(ref, None) for ref in workers.wait(list(in_flight))]
    while True:
        first_deadline = min(flight.submitted + timeout for flight in in_flight.values())
        done = workers.wait(list(in_flight), timeout=max(0.0, first_deadline - time.time()))
        if done:
            return [(ref, None) for ref in done]
        now = time.time()
        hung = [(ref, flight) for ref, flight in in_flight.items() if now >= flight.submitted + timeout]
        for ref, flight in hung:
            log.warning(
                "%s: no result after %.0f s (checkpoint_timeout_s=%g): killing its worker",
                flight.unit.label,
                now - flight.submitted,
                timeout,
            )
            workers.abandon(flight.worker, ref)
        if hung:
            return [(ref, _timeout_error(flight.unit.label, timeout)) for ref, flight in hung]


def _timeout_error(label: str, timeout: float) -> CheckpointTimeoutError:
    return CheckpointTimeoutError(
        f"no result for {label} within checkpoint_timeout_s={timeout:g} s; its worker was killed "
        "(if the checkpoint only needs longer, raise checkpoint_timeout_s or --checkpoint-timeout-s)"
    )
