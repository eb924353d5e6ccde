"""A sweep's output folder on disk: the Parquet parts of each cell and each failure, the consolidated
tables, and the run records (``runs.jsonl``). The driver (`runner`) decides when; this says how.

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
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from e2lm_vllm.results.schema import FAILURES_SCHEMA, METRICS_SCHEMA, SAMPLES_SCHEMA
from e2lm_vllm.results.store import conform, write_table_atomic
from e2lm_vllm.sweep.cells import INPUTS_METADATA_KEY, Plan, read_part_inputs
from e2lm_vllm.sweep.types import Cell, CellResult, UnitResult

log = logging.getLogger("e2lm_vllm.sweep")

FAILURE_PARTS = "failures"  # OUTPUT/failures/RUN_ID/NNNNNN.parquet: one row each, until the run finishes


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


# -- failures ---------------------------------------------------------------------------------------


def record_failure(
    failures: list[dict[str, Any]], cell: Cell, error: str, attempts: int, parts: Path, kind: str = "error"
) -> None:
    """Append the failure of `cell` to `failures` and write it as the next one-row part under `parts`."""
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


def write_failures(failures: list[dict[str, Any]], output: Path) -> None:
    write_table_atomic(_table(failures, FAILURES_SCHEMA), output / "failures.parquet", FAILURES_SCHEMA)


def remove_failure_parts(output: Path) -> None:
    """Once ``failures.parquet`` holds a finished run's failures: the parts go, those of killed runs too
    (the finished run retried their cells)."""
    shutil.rmtree(output / FAILURE_PARTS, ignore_errors=True)


def append_run_record(output: Path, record: dict[str, Any]) -> None:
    """One line of ``runs.jsonl``: a run's start and finish, and each unit's timings."""
    with open(output / "runs.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
