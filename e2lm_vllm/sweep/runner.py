"""The sweep driver: plan the cells, hand checkpoints to Ray workers, write results as they land.

Workers live as long as the sweep (one per GPU, or per CPU slot): the driver gives each the next
checkpoint of the family it already has loaded, so that it swaps weights instead of starting an
engine (`e2lm_vllm.sweep.worker`).

Each finished cell is written at once as its own Parquet parts under ``OUTPUT/cells/`` (atomic),
so a killed driver loses only the checkpoints in flight and a rerun computes only the missing
cells. At the end the parts are consolidated into ``metrics.parquet`` and ``samples.parquet``;
failed cells go to ``failures.parquet`` and make the exit status non-zero. Each failure is written
at once as a one-row part under ``OUTPUT/failures/RUN_ID/`` (so a killed driver leaves the failures
seen so far, at a cost per failure that does not grow with the run); a run that finishes writes
``failures.parquet`` from them and removes the parts, those of killed runs included (it retried their cells).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from e2lm_vllm.results.schema import FAILURES_SCHEMA, METRICS_SCHEMA, SAMPLES_SCHEMA
from e2lm_vllm.results.store import conform, write_table_atomic
from e2lm_vllm.sweep.cells import INPUTS_METADATA_KEY, Plan, build_plan, read_part_inputs
from e2lm_vllm.sweep.checkpoints import Completeness
from e2lm_vllm.sweep.config import SweepConfig, SweepConfigError, config_hash
from e2lm_vllm.sweep.inputs import FileDigests
from e2lm_vllm.sweep.lock import output_lock
from e2lm_vllm.sweep.pool import CheckpointTimeoutError, InProcessWorker, RayWorkers
from e2lm_vllm.sweep.types import Cell, CellResult, UnitResult, WorkUnit
from e2lm_vllm.sweep.worker import failure_kind

if TYPE_CHECKING:
    from e2lm_vllm.sweep.watch import WatchOptions
    from e2lm_vllm.trackers.push import TrackerPush

log = logging.getLogger("e2lm_vllm.sweep")

# Failure kinds worth another attempt: an error may be transient, a hang a stuck worker; `non_finite`
# (NaN weights or scores) is the checkpoint's own result and would repeat.
RETRIED_KINDS = ("error", "timeout")
FAILURE_PARTS = "failures"  # OUTPUT/failures/RUN_ID/NNNNNN.parquet: one row each, until the run finishes


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


def _cell_columns(cell: Cell) -> dict[str, Any]:
    ckpt = cell.checkpoint
    return {"model": ckpt.model, "checkpoint": ckpt.id, "step": ckpt.step, "tokens": ckpt.tokens}


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)


def _inputs_metadata(cell: Cell) -> dict[bytes, bytes]:
    return {INPUTS_METADATA_KEY: json.dumps(cell.inputs, sort_keys=True).encode()}


def write_cell(cell: Cell, result: CellResult, unit_result: UnitResult, output: Path, engine_share: float) -> None:
    """Samples first, metrics last: the metrics part is the cell's 'done' marker, its footer the inputs it read."""
    identity = _cell_columns(cell)
    samples = [{**identity, **row} for row in result.samples]
    write_table_atomic(_table(samples, SAMPLES_SCHEMA), cell.samples_part(output), SAMPLES_SCHEMA)
    extra = {
        "eval_seconds": result.eval_seconds,
        "engine_seconds": engine_share,
        "backend": unit_result.backend,
        "config_hash": cell.cell_hash,
        **unit_result.versions,
        **cell.inputs,
    }
    metrics = [{**identity, **extra, **row} for row in result.metrics]
    write_table_atomic(_table(metrics, METRICS_SCHEMA), cell.metrics_part(output), METRICS_SCHEMA, _inputs_metadata(cell))


def adopt_legacy_parts(plan: Plan, output: Path) -> None:
    """Parts written before fingerprints existed count as done; their fingerprints are the current inputs'.

    The alternative, recomputing every cell of an old output folder once, would cost a whole sweep
    to learn what the user most likely already has. `--force` recomputes instead.
    """
    for cell in plan.legacy:
        part = cell.metrics_part(output)
        table = conform(pq.read_table(part), METRICS_SCHEMA)
        for name, value in cell.inputs.items():
            table = table.set_column(table.schema.get_field_index(name), name, pa.array([value] * table.num_rows, pa.string()))
        write_table_atomic(table, part, METRICS_SCHEMA, _inputs_metadata(cell))
    if plan.legacy:
        log.info(
            "adopted %d cells written before input fingerprints: recorded the current task and checkpoint "
            "fingerprints for them (rerun with --force to recompute instead)",
            len(plan.legacy),
        )
    plan.legacy = []


def _read_parts(paths: list[Path], schema: pa.Schema) -> pa.Table:
    tables = [conform(pq.read_table(path), schema) for path in paths if path.is_file()]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _with_current_tokens(plan: Plan, table: pa.Table) -> pa.Table:
    """The `tokens` column from the config's token schedule now, not from when a cell was written.

    Tokens label a checkpoint and do not change its results, so they are not in the cell hash: a
    corrected schedule (the E2LM batch ramp-up, say) relabels every cell without recomputing any.
    A deleted checkpoint keeps the tokens it was written with.
    """
    if "tokens" not in table.column_names or table.num_rows == 0:
        return table
    tokens = {cell.checkpoint.id: cell.checkpoint.tokens for cell in plan.cells}
    written = table.column("tokens").to_pylist()
    current = [tokens[c] if c in tokens else old for c, old in zip(table.column("checkpoint").to_pylist(), written)]
    index = table.column_names.index("tokens")
    return table.set_column(index, table.schema.field(index), pa.array(current, type=table.schema.field(index).type))


def _with_deleted_flag(table: pa.Table, deleted: bool) -> pa.Table:
    index = table.schema.get_field_index("checkpoint_deleted")
    return table.set_column(index, table.schema.field(index), pa.array([deleted] * table.num_rows, pa.bool_()))


def current_cells(plan: Plan, output: Path) -> list[Cell]:
    """The plan's cells whose part holds rows computed from the inputs there are now."""
    current = []
    for cell in plan.cells:
        state, recorded, _ = read_part_inputs(cell.metrics_part(output))
        if state == "ok" and (recorded is None or cell.inputs == {k: recorded.get(k) for k in cell.inputs}):
            current.append(cell)
    return current


def consolidate(plan: Plan, output: Path) -> tuple[int, int]:
    """``metrics.parquet`` and ``samples.parquet`` from the current parts of this plan's cells and the parts
    of checkpoints deleted since they were evaluated (marked ``checkpoint_deleted``), atomically.

    A part computed from inputs that have changed since (a recomputation that failed) is left out:
    no table shows a number the current task or checkpoint would not give.
    """
    cells = current_cells(plan, output)
    # A watcher keeps the cells of checkpoints deleted while it runs in its plan (`watch._keep_earlier_cells`).
    here: list[Cell] = []
    gone: list[Cell] = []
    for cell in cells:
        deleted = cell.checkpoint.path is not None and not Path(cell.checkpoint.path).exists()
        (gone if deleted else here).append(cell)
    planned = {c.metrics_part(output) for c in plan.cells}
    retired = [r for r in plan.retired if r.metrics not in planned]

    def table(kept: list[Path], deleted: list[Path], schema: pa.Schema) -> pa.Table:
        kept_table = _with_deleted_flag(_with_current_tokens(plan, _read_parts(kept, schema)), False)
        return pa.concat_tables([kept_table, _with_deleted_flag(_with_current_tokens(plan, _read_parts(deleted, schema)), True)])

    metrics = table([c.metrics_part(output) for c in here], [c.metrics_part(output) for c in gone] + [r.metrics for r in retired], METRICS_SCHEMA)
    samples = table([c.samples_part(output) for c in here], [c.samples_part(output) for c in gone] + [r.samples for r in retired], SAMPLES_SCHEMA)
    write_table_atomic(metrics, output / "metrics.parquet", METRICS_SCHEMA)
    write_table_atomic(samples, output / "samples.parquet", SAMPLES_SCHEMA)
    return metrics.num_rows, samples.num_rows


def _failure_error(error: BaseException) -> str:
    # Ray wraps the worker's exception; keep the original type and message, not Ray's wrapping.
    cause = getattr(error, "cause", None) or error
    text = f"{type(cause).__name__}: {cause}"
    return text if len(text) < 4000 else text[:2000] + "\n...\n" + text[-2000:]


def _append_run_record(output: Path, record: dict[str, Any]) -> None:
    with open(output / "runs.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


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


class WorkerPool:
    """The sweep's workers, started on first use and kept for every round of a watched run."""

    def __init__(self, config: SweepConfig, address: str | None, in_process: bool):
        self.config, self.address, self.in_process = config, address, in_process
        self.workers: RayWorkers | InProcessWorker | None = None
        self.loaded: dict[int, str | None] = {}  # worker index -> engine key of its last unit

    def get(self) -> RayWorkers | InProcessWorker:
        if self.workers is None:
            self.workers = InProcessWorker() if self.in_process else RayWorkers(self.config, self.address)
        return self.workers

    def shutdown(self) -> None:
        if self.workers is not None:
            self.workers.shutdown()
            self.workers = None
            self.loaded.clear()


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
        def each(unit: WorkUnit) -> None:
            if self.trackers is not None:  # the checkpoint's cells and failures, as soon as they are written
                self.trackers.after_checkpoint(unit.cells)
            if after_unit is not None:
                after_unit(unit)

        if plan.units:
            args = (self.pool, self.progress, self.failures, self.summary, self.stop, each, self.failure_parts)
            _evaluate(plan, self.config, self.output, *args)

    def end_round(self) -> None:
        """After a sweep or a watch round: anything the trackers still lack, then the scores and plots."""
        if self.trackers is not None:
            self.trackers.after_round()

    def write_tables(self, plan: Plan) -> None:
        consolidate(plan, self.output)
        if self.failures_written != len(self.failures):  # a watched run calls this after every unit
            write_table_atomic(_table(self.failures, FAILURES_SCHEMA), self.output / "failures.parquet", FAILURES_SCHEMA)
            self.failures_written = len(self.failures)

    def finish(self) -> None:
        """After the last ``write_tables``: failures.parquet holds this run's failures; the parts go,
        those of killed runs too (this run retried their cells)."""
        shutil.rmtree(self.output / FAILURE_PARTS, ignore_errors=True)


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
    _append_run_record(
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
    _append_run_record(
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


def _record_failure(
    failures: list[dict[str, Any]], cell: Cell, error: str, attempts: int, parts: Path, kind: str = "error"
) -> None:
    row = {
        **_cell_columns(cell),
        "task": cell.task.name,
        "error": error,
        "kind": kind,
        "attempts": attempts,
        "config_hash": cell.cell_hash,
    }
    failures.append(row)
    # Written at once, so a driver killed later still leaves the failures seen so far; one row per
    # part, so the thousandth failure costs what the first did (not a rewrite of all before it).
    write_table_atomic(_table([row], FAILURES_SCHEMA), parts / f"{len(failures):06d}.parquet", FAILURES_SCHEMA)


def _next_unit(pending: list[WorkUnit], engine_key: str | None) -> WorkUnit:
    """The next unit of the family a worker already has loaded (a weight swap), else the next in order."""
    for index, unit in enumerate(pending):
        if unit.engine_key == engine_key:
            return pending.pop(index)
    return pending.pop(0)


def _evaluate(
    plan: Plan,
    config: SweepConfig,
    output: Path,
    pool: WorkerPool,
    progress: bool,
    failures: list[dict[str, Any]],
    summary: SweepSummary,
    stop: threading.Event | None = None,
    after_unit: Callable[[WorkUnit], None] | None = None,
    failure_parts: Path | None = None,
) -> None:
    """Run the plan's units on the pool's workers; with `stop` set, finish the units in flight and return."""
    parts = failure_parts or output / FAILURE_PARTS / uuid.uuid4().hex[:12]
    workers = pool.get()
    log.info("%s; %d checkpoints to evaluate", workers.describe(), len(plan.units))
    pending: list[WorkUnit] = list(plan.units)
    idle: list[int] = list(range(workers.count))
    loaded = pool.loaded  # worker index -> engine key of its last unit, kept across a watched run's rounds
    in_flight: dict[Any, tuple[int, WorkUnit, float]] = {}
    attempts: dict[str, int] = {}
    total = len(plan.missing)
    done_cells = 0
    started = time.time()
    bar = tqdm(total=total, unit="cell", desc="sweep", disable=not progress, mininterval=2.0, file=sys.stderr)
    try:
        while (pending and not (stop and stop.is_set())) or in_flight:
            while pending and idle and not (stop and stop.is_set()):
                index = idle.pop(0)
                unit = _next_unit(pending, loaded.get(index))
                attempts[unit.label] = attempts.get(unit.label, 0) + 1
                in_flight[workers.submit(index, unit)] = (index, unit, time.time())
            for ref, hung in _next_finished(workers, in_flight):
                index, unit, submitted = in_flight.pop(ref)
                idle.append(index)
                try:
                    if hung is not None:
                        raise hung
                    result = workers.get(ref)
                except Exception as error:  # noqa: BLE001 - every failure of a checkpoint is recorded, the sweep goes on
                    loaded[index] = None
                    workers.replace_if_dead(index, error)
                    message = _failure_error(error)
                    kind = failure_kind(error)
                    if kind in RETRIED_KINDS and attempts[unit.label] < config.max_attempts:
                        log.warning("%s: attempt %d failed, retrying: %s", unit.label, attempts[unit.label], message.splitlines()[0])
                        pending.insert(0, unit)
                        continue
                    for cell in unit.cells:
                        _record_failure(failures, cell, message, attempts[unit.label], parts, kind)
                    log.error("%s: failed after %d attempts: %s", unit.label, attempts[unit.label], message.splitlines()[0])
                else:
                    loaded[index] = unit.engine_key
                    _write_unit(unit, result, output, failures, summary, wall=time.time() - submitted, parts=parts)
                done_cells += len(unit.cells)
                bar.update(len(unit.cells))
                bar.set_postfix(failed=len(failures))
                elapsed = time.time() - started
                eta = elapsed / done_cells * (total - done_cells)
                log.info(
                    "progress: %d/%d cells, %d failed, %.0f s elapsed, ETA %.0f s",
                    done_cells,
                    total,
                    len(failures),
                    elapsed,
                    eta,
                )
                if after_unit is not None:
                    after_unit(unit)
        if pending:
            log.info("stopping: %d checkpoints left for a later run", len(pending))
    finally:
        bar.close()


def _next_finished(
    workers: RayWorkers | InProcessWorker, in_flight: dict[Any, tuple[int, WorkUnit, float]]
) -> list[tuple[Any, CheckpointTimeoutError | None]]:
    """Units that finished, as ``(ref, None)``; else, once a unit passes ``checkpoint_timeout_s``,
    ``(ref, CheckpointTimeoutError)`` with its worker killed and replaced (`abandon`), so that the
    driver retries it as a dead worker's."""
    timeout = workers.checkpoint_timeout_s
    if timeout is None:
        return [(ref, None) for ref in workers.wait(list(in_flight))]
    while True:
        first_deadline = min(submitted + timeout for _, _, submitted in in_flight.values())
        done = workers.wait(list(in_flight), timeout=max(0.0, first_deadline - time.time()))
        if done:
            return [(ref, None) for ref in done]
        now = time.time()
        hung = [(ref, entry) for ref, entry in in_flight.items() if now >= entry[2] + timeout]
        for ref, (index, unit, submitted) in hung:
            log.warning("%s: no result after %.0f s (checkpoint_timeout_s=%g): killing its worker", unit.label, now - submitted, timeout)
            workers.abandon(index, ref)
        if hung:
            return [(ref, _timeout_error(unit.label, timeout)) for ref, (_, unit, _) in hung]


def _timeout_error(label: str, timeout: float) -> CheckpointTimeoutError:
    return CheckpointTimeoutError(
        f"no result for {label} within checkpoint_timeout_s={timeout:g} s; its worker was killed "
        "(if the checkpoint only needs longer, raise checkpoint_timeout_s or --checkpoint-timeout-s)"
    )


def _write_unit(
    unit: WorkUnit,
    result: UnitResult,
    output: Path,
    failures: list[dict[str, Any]],
    summary: SweepSummary,
    wall: float,
    parts: Path,
) -> None:
    """Write a finished unit's cells, and its timing record in ``runs.jsonl``."""
    writing_started = time.perf_counter()
    by_key = {cell.key: cell for cell in unit.cells}
    engine_share = result.engine_seconds / max(1, len(result.cells))
    for cell_result in result.cells:
        cell = by_key[cell_result.key]
        if cell_result.error is not None:
            _record_failure(failures, cell, cell_result.error, 1, parts, cell_result.error_kind or "error")
        else:
            write_cell(cell, cell_result, result, output, engine_share)
            summary.evaluated += 1
    writing = time.perf_counter() - writing_started
    _append_run_record(
        output,
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
