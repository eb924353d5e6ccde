"""Failed cells on disk as they happen, at a cost per failure that does not grow with the run. Fast: no Ray, no engine."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from e2lm_vllm.results.schema import FAILURES_SCHEMA
from e2lm_vllm.sweep.cells import build_plan
from e2lm_vllm.sweep.config import config_from_flags
from e2lm_vllm.sweep.executors import WorkerPool
from e2lm_vllm.sweep.runner import SweepSession, SweepSummary
from e2lm_vllm.sweep.tables import FAILURE_PARTS, record_failure

TASKS_DIR = Path(__file__).resolve().parent / "data" / "sweep_tasks"


def test_each_failure_is_one_part_written_at_once_and_never_rewritten(tmp_path):
    output = tmp_path / "out"
    config = config_from_flags(checkpoints=[str(tmp_path / "run" / "step_1")], tasks="sweep_arc_easy, sweep_arc_letter", include_path=[str(TASKS_DIR)], output=str(output))
    plan = build_plan(config, output)
    session = SweepSession(config, output, WorkerPool(config, None, in_process=True), SweepSummary(output, len(plan.cells), 0), False)
    parts = session.failure_parts
    assert parts == output / FAILURE_PARTS / session.run_id
    first = None
    for index in range(60):
        cell = plan.cells[index % len(plan.cells)]
        record_failure(session.failures, cell, f"error {index}", 1, parts, "error")
        part = parts / f"{index + 1:06d}.parquet"
        # On disk when the call returns: a driver killed now keeps it.
        assert pq.read_table(part).to_pylist() == [{name: session.failures[-1][name] for name in FAILURES_SCHEMA.names}]
        first = first or (part.stat().st_ino, part.stat().st_mtime_ns)
        first_part = parts / "000001.parquet"
        assert (first_part.stat().st_ino, first_part.stat().st_mtime_ns) == first  # never rewritten
        assert not (output / "failures.parquet").exists()  # no whole-table rewrite per failure
    assert len(list(parts.iterdir())) == 60
    session.write_tables(plan)
    table = pq.read_table(output / "failures.parquet").to_pylist()
    assert [row["error"] for row in table] == [f"error {i}" for i in range(60)]
    assert table == [row for part in sorted(parts.iterdir()) for row in pq.read_table(part).to_pylist()]
    written = (output / "failures.parquet").stat().st_mtime_ns
    session.write_tables(plan)  # a watcher's next unit, no new failure: failures.parquet left alone
    assert (output / "failures.parquet").stat().st_mtime_ns == written
    (output / FAILURE_PARTS / "killed-run").mkdir()  # parts of a driver killed earlier: retried by this run
    session.finish()
    assert not (output / FAILURE_PARTS).exists() and (output / "failures.parquet").is_file()
