"""Atomic results writes under real faults: a full disk and a read-only folder (small tmpfs mounts).

Tests run as root, where ``chmod`` does not stop writes, so the faults are real file systems: a
tmpfs of a few hundred KiB filled up, and a tmpfs remounted read-only. Skipped where ``mount``
is not permitted. No Ray, no engine: the sweep's own cell writer and consolidation are driven
directly, as its driver calls them.
"""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from e2lm_vllm.results.schema import METRICS_SCHEMA
from e2lm_vllm.results.store import ResultsWriteError, write_table_atomic
from e2lm_vllm.sweep.cells import build_plan
from e2lm_vllm.sweep.config import config_from_flags
from e2lm_vllm.sweep.tables import consolidate, write_cell
from e2lm_vllm.sweep.types import CellResult, UnitResult

TASKS = str(Path(__file__).parent / "data" / "sweep_tasks")


@pytest.fixture
def tmpfs(tmp_path):
    """A 512 KiB tmpfs mounted at ``tmp_path / 'mnt'``; unmounted afterwards."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


def _fill(mount: Path) -> Path:
    """Fill the file system to the last byte; returns the filler file."""
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def _table(rows: int, tag: str = "x") -> pa.Table:
    return pa.table({"step": list(range(rows)), "tag": [f"{tag}{i}" * 8 for i in range(rows)]})


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*.tmp"))


def test_full_disk_fails_naming_the_file_and_leaves_no_partial_file(tmpfs):
    out = tmpfs / "out"
    earlier = {name: _table(50, name) for name in ("a", "b")}
    for name, table in earlier.items():
        write_table_atomic(table, out / f"{name}.parquet")
    _fill(tmpfs)
    target = out / "c.parquet"
    with pytest.raises(ResultsWriteError) as error:
        write_table_atomic(_table(20_000), target)
    assert str(error.value) == f"cannot write {target}: No space left on device (nothing written there; earlier results intact)"
    assert error.value.errno == errno.ENOSPC and isinstance(error.value, OSError)
    # Replacing an existing file fails the same way and leaves the old content.
    with pytest.raises(ResultsWriteError, match="a.parquet: No space left on device"):
        write_table_atomic(_table(20_000), out / "a.parquet")
    assert not target.exists() and _leftovers(tmpfs) == []
    for name, table in earlier.items():
        assert pq.read_table(out / f"{name}.parquet").equals(table)
    (tmpfs / "filler").unlink()  # the fault is fixed: the same write now succeeds
    write_table_atomic(_table(20_000), target)
    assert pq.read_table(target).num_rows == 20_000


def test_read_only_folder_fails_naming_the_file_and_keeps_earlier_files(tmpfs):
    out = tmpfs / "out"
    table = _table(50)
    write_table_atomic(table, out / "a.parquet")
    _remount(tmpfs, "ro")
    for target in (out / "b.parquet", out / "a.parquet", out / "new" / "c.parquet"):
        with pytest.raises(ResultsWriteError) as error:
            write_table_atomic(_table(10), target)
        assert str(error.value) == f"cannot write {target}: Read-only file system (nothing written there; earlier results intact)"
        assert error.value.errno == errno.EROFS
    assert pq.read_table(out / "a.parquet").equals(table) and sorted(p.name for p in out.iterdir()) == ["a.parquet"]
    _remount(tmpfs, "rw")
    write_table_atomic(_table(10), out / "b.parquet")


def _result(cell, value: float) -> tuple[CellResult, UnitResult]:
    rows = [{"task": cell.task.name, "metric": "acc", "filter": "none", "value": value, "n_samples": 400}]
    samples = [{"task": cell.task.name, "doc_id": i, "correct": i % 2 == 0, "choice_logprobs": [-1.0, -2.0] * 20} for i in range(400)]
    cell_result = CellResult(key=cell.key, metrics=rows, samples=samples, eval_seconds=1.0)
    unit = UnitResult(label="x", cells=[cell_result], engine_seconds=1.0, backend="vllm", versions={}, pid=1, host="h")
    return cell_result, unit


def test_a_sweep_stopped_by_a_full_disk_keeps_and_counts_its_cells_and_resumes_without_duplicates(tmp_path, tmpfs):
    for step in (1, 2, 3, 4):
        (tmp_path / "run" / f"step_{step}").mkdir(parents=True)
    config = config_from_flags(checkpoints=[str(tmp_path / "run" / "step_*")], tasks="sweep_arc_easy,sweep_arc_letter", include_path=[TASKS], output=str(tmpfs / "out"))
    output = tmpfs / "out"
    plan = build_plan(config, output)
    assert len(plan.missing) == 8
    written = []
    with pytest.raises(ResultsWriteError, match=r"cannot write .*/cells/.*\.parquet: No space left on device"):
        for index, cell in enumerate(plan.missing):
            if index == 3:
                _fill(tmpfs)  # the disk fills up while the sweep runs
            write_cell(cell, *_result(cell, value=index), output, engine_share=1.0)
            written.append(cell.key)
    assert len(written) == 3 and _leftovers(tmpfs) == []
    # Every cell written before the fault is intact and counted as done.
    again = build_plan(config, output)
    assert sorted(cell.key for cell in again.done) == sorted(written)
    # The fault fixed, a rerun computes only the rest; consolidation has each cell once.
    (tmpfs / "filler").unlink()
    for cell in again.missing:
        write_cell(cell, *_result(cell, value=-1), output, engine_share=1.0)
    assert len(build_plan(config, output).missing) == 0
    metrics_rows, samples_rows = consolidate(plan, output)
    metrics = pq.read_table(output / "metrics.parquet").to_pandas()
    assert (metrics_rows, samples_rows) == (8, 8 * 400)
    assert not metrics.duplicated(["checkpoint", "task", "metric", "filter"]).any()
    assert sorted(metrics["value"]) == [-1.0] * 5 + [0.0, 1.0, 2.0]  # the first three kept their results
    assert METRICS_SCHEMA.names == metrics.columns.tolist()


def _cli_args(tmp_path: Path, output: Path) -> list[str]:
    (tmp_path / "run" / "step_1").mkdir(parents=True, exist_ok=True)
    return ["--checkpoints", str(tmp_path / "run" / "step_1"), "--tasks", "sweep_arc_easy", "--include-path", TASKS, "--output", str(output), "--no-progress"]


def test_sweep_cli_on_a_read_only_output_stops_before_any_work(tmp_path, tmpfs, capsys):
    from e2lm_vllm.sweep import cli

    _remount(tmpfs, "ro")
    assert cli.main(_cli_args(tmp_path, tmpfs / "out")) == 2
    assert f"e2lm-vllm sweep: output {tmpfs / 'out'}: cannot create the lock file {tmpfs / 'out' / 'sweep.lock'}: Read-only file system" in capsys.readouterr().err


def test_sweep_cli_on_a_disk_filling_up_mid_run_exits_1_naming_the_file(tmp_path, tmpfs, capsys, monkeypatch):
    from e2lm_vllm.sweep import cli, runner

    def evaluate_until_full(session, plan, after_unit=None):  # the driver's loop, without Ray
        cell = plan.missing[0]
        _fill(tmpfs)
        write_cell(cell, *_result(cell, value=0.5), session.output, engine_share=1.0)

    monkeypatch.setattr(runner.SweepSession, "evaluate", evaluate_until_full)
    assert cli.main(_cli_args(tmp_path, tmpfs / "out")) == 1
    err = capsys.readouterr().err
    assert f"e2lm-vllm sweep: cannot write {tmpfs / 'out' / 'cells'}" in err
    assert "samples.parquet: No space left on device (nothing written there; earlier results intact); rerun once fixed" in err
    assert not (tmpfs / "out" / "sweep.lock").exists() and _leftovers(tmpfs) == []
