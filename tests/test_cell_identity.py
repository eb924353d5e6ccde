"""A cell is done only with numbers computed from the inputs there are now (issue 19).

Cells are written with the runner's own `write_cell` (a worker's result stands in for the engine's:
what is tested here is what the driver plans and writes); lm-eval's task index, YAML loader and
task builder are the real ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from e2lm_vllm.results.schema import METRICS_SCHEMA
from e2lm_vllm.sweep.cells import build_plan, cell_tasks, include_paths_of
from e2lm_vllm.sweep.config import SweepConfigError, config_from_flags
from e2lm_vllm.sweep.inputs import FileDigests, TaskResolver
from e2lm_vllm.sweep.rows import NoMetricsError, check_cell_results
from e2lm_vllm.sweep.runner import prepare_plan
from e2lm_vllm.sweep.tables import consolidate, write_cell
from e2lm_vllm.sweep.types import CellResult, UnitResult

TASKS = Path(__file__).parent / "data" / "sweep_tasks"


@pytest.fixture
def tasks(tmp_path: Path) -> Path:
    """An editable copy of the sweep test tasks, the two ARC tasks tagged `tiny_arc`."""
    folder = tmp_path / "tasks"
    shutil.copytree(TASKS, folder)
    for name in ("sweep_arc_easy.yaml", "sweep_arc_letter.yaml"):
        path = folder / name
        path.write_text(path.read_text() + "tag: tiny_arc\n")
    return folder


def _checkpoint(root: Path, step: int, fill: float = 0.0) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    folder = root / f"step_{step}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "e2lm": {"step": step}}))
    save_file({"w": np.full((4, 4), fill, dtype=np.float32)}, str(folder / "model.safetensors"))
    return folder


def _config(tasks: Path, root: Path, output: Path, task_list: str = "sweep_arc_easy,sweep_arc_letter"):
    return config_from_flags(
        checkpoints=[str(root / "step_*")], tasks=task_list, include_path=[str(tasks)], output=str(output), limit=2
    )


def _finish(plan, output: Path, value: float = 0.5) -> None:
    for cell in plan.missing:
        result = CellResult(key=cell.key, metrics=[{"task": cell.task.name, "metric": "acc", "filter": "none", "value": value}])
        write_cell(cell, result, UnitResult("x", [result], 1.0, "vllm", {}, 1, "h"), output, engine_share=1.0)


def test_editing_a_task_yaml_recomputes_exactly_its_cells_and_says_why(tasks, tmp_path, caplog):
    for step in (1, 2):
        _checkpoint(tmp_path / "run", step)
    output = tmp_path / "out"
    config = _config(tasks, tmp_path / "run", output)
    first = build_plan(config, output)
    _finish(first, output)
    assert len(build_plan(config, output).missing) == 0
    yaml_file = tasks / "sweep_arc_easy.yaml"
    yaml_file.write_text(yaml_file.read_text().replace('"Question: {{question}}\\nAnswer:"', '"Q: {{question}}\\nA:"'))
    with caplog.at_level("WARNING", logger="e2lm_vllm.sweep"):
        again = prepare_plan(config, output, False, None, FileDigests())
    assert sorted((c.task.name, c.checkpoint.step) for c in again.missing) == [("sweep_arc_easy", 1), ("sweep_arc_easy", 2)]
    assert any(line.startswith("task sweep_arc_easy changed since ") and line.endswith(": 2 cell(s) to recompute") for line in caplog.messages)
    # The stale numbers are not in the tables while the cells wait for their recomputation.
    consolidate(again, output)
    assert set(pq.read_table(output / "metrics.parquet").column("task").to_pylist()) == {"sweep_arc_letter"}
    _finish(again, output, value=0.75)
    consolidate(build_plan(config, output), output)
    metrics = pq.read_table(output / "metrics.parquet").to_pandas()
    assert len(metrics) == 4 and not metrics.duplicated(["checkpoint", "task", "metric", "filter"]).any()
    assert sorted(metrics[metrics.task == "sweep_arc_easy"].value) == [0.75, 0.75]
    assert metrics.task_fingerprint.notna().all() and metrics.checkpoint_fingerprint.notna().all()


def test_a_data_file_or_hook_edited_in_place_changes_the_task(tasks, tmp_path):
    _checkpoint(tmp_path / "run", 1)
    output = tmp_path / "out"
    config = _config(tasks, tmp_path / "run", output)
    _finish(build_plan(config, output), output)
    with open(tasks / "arc_easy_8.jsonl", "a") as handle:  # sweep_arc_easy's data, named in dataset_kwargs
        handle.write("\n")
    assert [c.task.name for c in build_plan(config, output).missing] == ["sweep_arc_easy"]
    _finish(build_plan(config, output), output)
    with open(tasks / "utils.py", "a") as handle:  # both tasks' `!function` hooks
        handle.write("\n# edited\n")
    assert sorted(c.task.name for c in build_plan(config, output).missing) == ["sweep_arc_easy", "sweep_arc_letter"]


def test_a_rewritten_checkpoint_is_recomputed_a_relabelled_one_is_not(tasks, tmp_path):
    for step in (1, 2):
        _checkpoint(tmp_path / "run", step)
    output = tmp_path / "out"
    config = _config(tasks, tmp_path / "run", output)
    _finish(build_plan(config, output), output)
    _checkpoint(tmp_path / "run", 2, fill=1.0)  # re-written in place: same names, same sizes, other weights
    assert sorted({c.checkpoint.step for c in build_plan(config, output).missing}) == [2]
    _finish(build_plan(config, output), output)
    config_json = tmp_path / "run" / "step_1" / "config.json"
    config_json.write_text(json.dumps({"model_type": "llama", "e2lm": {"step": 1, "tokens": 4096}}))  # provenance only
    (tmp_path / "run" / "step_1" / "optimizer.pt").write_bytes(b"state")  # trainer state is not an input
    assert build_plan(config, output).missing == []


def test_a_tag_is_expanded_to_member_cells(tasks, tmp_path):
    _checkpoint(tmp_path / "run", 1)
    plan = build_plan(_config(tasks, tmp_path / "run", tmp_path / "out", task_list="tiny_arc"), tmp_path / "out")
    assert sorted(c.task.name for c in plan.cells) == ["sweep_arc_easy", "sweep_arc_letter"]
    with pytest.raises(SweepConfigError, match=r"expected each task once, got sweep_arc_easy \(from \['tiny_arc', 'sweep_arc_easy'\]\)"):
        build_plan(_config(tasks, tmp_path / "run", tmp_path / "out", task_list="tiny_arc,sweep_arc_easy"), tmp_path / "out")


def test_lm_evals_ai2_arc_tag_gives_its_two_tasks(tmp_path):
    """The case reported: `tasks: [ai2_arc]` was one cell written as done with 0 metric rows."""
    _checkpoint(tmp_path / "run", 1)
    config = config_from_flags(checkpoints=[str(tmp_path / "run" / "step_*")], tasks="ai2_arc", output=str(tmp_path / "o"))
    assert sorted(c.task.name for c in build_plan(config, tmp_path / "o").cells) == ["arc_challenge", "arc_easy"]


def test_legacy_parts_are_adopted_once_then_tracked(tasks, tmp_path, caplog):
    _checkpoint(tmp_path / "run", 1)
    output = tmp_path / "out"
    config = _config(tasks, tmp_path / "run", output, task_list="sweep_arc_easy")
    (cell,) = build_plan(config, output).cells
    # A part as main wrote it before fingerprints: the old columns, no footer record.
    old_schema = pa.schema([f for f in METRICS_SCHEMA if f.name not in ("task_fingerprint", "checkpoint_fingerprint", "checkpoint_deleted")])
    row = {"model": "run", "checkpoint": cell.checkpoint.id, "step": 1, "task": "sweep_arc_easy", "metric": "acc", "filter": "none", "value": 0.25}
    cell.metrics_part(output).parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), cell.metrics_part(output))
    with caplog.at_level("INFO", logger="e2lm_vllm.sweep"):
        plan = prepare_plan(config, output, False, None, FileDigests())
    assert plan.missing == [] and any(m.startswith("adopted 1 cells written before input fingerprints") for m in caplog.messages)
    adopted = pq.read_table(cell.metrics_part(output)).to_pylist()[0]
    assert adopted["value"] == 0.25 and adopted["task_fingerprint"] == cell.task.fingerprint
    yaml_file = tasks / "sweep_arc_easy.yaml"
    yaml_file.write_text(yaml_file.read_text() + "description: 'Answer.'\n")
    assert len(build_plan(config, output).missing) == 1


@pytest.mark.parametrize("damage", ["zero-byte", "truncated", "no rows"])
def test_a_damaged_or_empty_part_is_recomputed(tasks, tmp_path, damage):
    _checkpoint(tmp_path / "run", 1)
    output = tmp_path / "out"
    config = _config(tasks, tmp_path / "run", output, task_list="sweep_arc_easy")
    plan = build_plan(config, output)
    _finish(plan, output)
    part = plan.cells[0].metrics_part(output)
    if damage == "zero-byte":
        part.write_bytes(b"")
    elif damage == "truncated":
        part.write_bytes(part.read_bytes()[:-40])
    else:
        pq.write_table(METRICS_SCHEMA.empty_table(), part)
    again = build_plan(config, output)
    assert len(again.missing) == 1
    assert {"zero-byte": "unreadable", "truncated": "unreadable", "no rows": "empty"}[damage] == again.recompute[0].reason


def test_rows_of_a_deleted_checkpoint_stay_marked_and_a_dropped_one_goes(tasks, tmp_path):
    for step in (1, 2, 3):
        _checkpoint(tmp_path / "run", step)
    output = tmp_path / "out"
    config = _config(tasks, tmp_path / "run", output, task_list="sweep_arc_easy")
    _finish(build_plan(config, output), output)
    shutil.rmtree(tmp_path / "run" / "step_1")  # the trainer keeps the last two
    plan = build_plan(config, output)  # a restarted watcher plans only what it finds
    assert len(plan.cells) == 2 and len(plan.retired) == 1
    consolidate(plan, output)
    metrics = pq.read_table(output / "metrics.parquet").to_pandas().sort_values("step")
    assert list(metrics.step) == [1, 2, 3] and list(metrics.checkpoint_deleted) == [True, False, False]
    # A checkpoint the user takes out of the config is not 'deleted': its rows leave the tables.
    narrowed = config_from_flags(base=config, checkpoints=[str(tmp_path / "run" / "step_3")])
    consolidate(build_plan(narrowed, output), output)
    assert list(pq.read_table(output / "metrics.parquet").column("step").to_pylist()) == [3]


def test_a_task_yaml_path_is_evaluated_from_that_file(tmp_path):
    """Two YAMLs with the same `task:` in one tree: the path given is the one lm-eval builds."""
    from e2lm_vllm.sweep.taskcache import TaskCache, TaskKey

    folder = tmp_path / "tasks"
    shutil.copytree(TASKS, folder)
    shutil.copytree(TASKS, folder / "a_first")  # sorts first: lm-eval's index keeps its `sweep_arc_easy`
    shadow = (folder / "sweep_arc_easy.yaml").read_text().replace('"Question: {{question}}\\nAnswer:"', '"SHADOW {{question}}"')
    (folder / "a_first" / "sweep_arc_easy.yaml").write_text(shadow)
    config = config_from_flags(checkpoints=["/x/step_1"], tasks=str(folder / "sweep_arc_easy.yaml"), include_path=[str(folder)], output=str(tmp_path / "o"))
    (task,) = cell_tasks(config, TaskResolver(include_paths_of(config)))
    loaded = TaskCache().tasks(TaskKey(tuple(include_paths_of(config)), (task.source,), 0, 1))
    doc = loaded["tasks"]["sweep_arc_easy"].test_docs()[0]
    assert loaded["tasks"]["sweep_arc_easy"].doc_to_text(doc).startswith("Question: ")


def _results(values: dict[str, object]) -> dict:
    return {"results": {"t": {"alias": "t", **values}}, "n-samples": {"t": {"effective": 2}}, "n-shot": {"t": 0}}


def test_a_nan_metric_or_no_metric_is_a_failure_not_a_done_cell():
    from e2lm_vllm.checkpoint import NonFiniteError

    assert [r["value"] for r in check_cell_results(_results({"acc,none": 0.5, "acc_stderr,none": float("nan")}), "t")] == [0.5]
    with pytest.raises(NonFiniteError, match=r"non-finite metric value\(s\): t acc_norm,none = nan") as error:
        check_cell_results(_results({"acc,none": 0.5, "acc_norm,none": float("nan")}), "t")
    assert error.value.kind == "non_finite"
    with pytest.raises(NoMetricsError, match=r"lm-eval returned no metric for task 'ai2_arc' \(results hold: arc_easy\)"):
        check_cell_results({"results": {"arc_easy": {"acc,none": 0.5}}}, "ai2_arc")


@pytest.mark.slow
def test_a_real_sweep_rerun_after_a_task_edit_gives_the_new_numbers(tasks, tiny_ladder_dirs, tmp_path, caplog):
    """lm-eval's HF model on a tiny ladder rung, in this process: a tag gives its member cells, a NaN
    metric is a `non_finite` failure, and a rerun after editing a task YAML recomputes that task only."""
    import pandas as pd

    from e2lm_vllm.sweep.runner import run_sweep

    (tasks / "sweep_nan.yaml").write_text(
        (tasks / "sweep_arc_easy.yaml").read_text().replace("task: sweep_arc_easy", "task: sweep_nan").replace("tag: tiny_arc\n", "")
        + "process_results: !function utils.nan_acc\n"
    )
    with open(tasks / "utils.py", "a") as handle:
        handle.write("\n\ndef nan_acc(doc, results):\n    return {'acc': float('nan'), 'acc_norm': 0.0}\n")
    output = tmp_path / "out"

    def sweep(task_list: str):
        config = config_from_flags(
            checkpoints=[str(tiny_ladder_dirs[1])], model_name="ladder", tasks=task_list, include_path=[str(tasks)],
            output=str(output), limit=2, lm="hf", model_args={"dtype": "float32", "max_model_len": 512},
        )  # fmt: skip
        return run_sweep(config, progress=False, in_process=True)

    first = sweep("tiny_arc,sweep_nan")
    failures = pd.read_parquet(output / "failures.parquet")
    assert (first.evaluated, first.exit_code) == (2, 1)
    assert list(failures.task) == ["sweep_nan"] and list(failures.kind) == ["non_finite"]
    assert "sweep_nan acc,none = nan" in failures.error[0]
    before = pd.read_parquet(output / "samples.parquet")
    assert sorted(before.task.unique()) == ["sweep_arc_easy", "sweep_arc_letter"]
    yaml_file = tasks / "sweep_arc_easy.yaml"
    yaml_file.write_text(yaml_file.read_text().replace('"Question: {{question}}\\nAnswer:"', '"Q: {{question}}\\nA:"'))
    with caplog.at_level("WARNING", logger="e2lm_vllm.sweep"):
        second = sweep("tiny_arc")
    assert (second.already_done, second.evaluated, second.exit_code) == (1, 1, 0)
    assert any(m.startswith("task sweep_arc_easy changed since") for m in caplog.messages)
    after = pd.read_parquet(output / "samples.parquet")
    old, new = (frame[frame.task == "sweep_arc_easy"].sort_values("doc_id").choice_logprobs.tolist() for frame in (before, after))
    assert len(new) == 2 and all(list(a) != list(b) for a, b in zip(old, new))  # other prompts, other numbers
    metrics = pd.read_parquet(output / "metrics.parquet")
    assert not metrics.duplicated(["checkpoint", "task", "metric", "filter"]).any()
    assert set(metrics.backend) == {"hf"}
