"""The cells of a sweep (checkpoint x task), which are already done, and the work left.

A cell is done when its metrics part file under ``OUTPUT/cells/`` holds rows and was computed
from the inputs there are now. The part's name carries a hash of everything in the config that
changes its result (engine args, family args, task name, few-shot, limit), so changing the config
recomputes exactly the affected cells; the part's footer records the fingerprints of the task and
the checkpoint it read (`inputs`), so an edited task YAML or a re-written checkpoint folder
recomputes exactly theirs, and says so. Parts are written atomically; an empty or unreadable one
is recomputed. A part written before fingerprints existed is adopted: its fingerprints are taken
from the current inputs (`adopt_legacy_parts`).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from e2lm_vllm.sweep.checkpoints import Checkpoint, Completeness, resolve_checkpoints
from e2lm_vllm.sweep.config import LocalCheckpoints, ModelFamily, SweepConfig, is_task_yaml_path, stable_hash
from e2lm_vllm.sweep.inputs import FileDigests, TaskResolver, checkpoint_fingerprint
from e2lm_vllm.sweep.types import Cell, CellTask, WorkUnit, slug


def include_paths_of(config: SweepConfig) -> list[str]:
    """Include paths plus the folder of every task given as a YAML path."""
    paths = list(config.include_paths)
    for spec in config.tasks:
        if is_task_yaml_path(spec.name):
            folder = str(Path(spec.name).resolve().parent)
            if folder not in paths:
                paths.append(folder)
    return paths


# The key of a part's Parquet footer that records the inputs it was computed from.
INPUTS_METADATA_KEY = b"e2lm_inputs"


@dataclass(frozen=True)
class Recompute:
    """Why a cell with results on disk is evaluated again."""

    cell: Cell
    reason: str  # "task", "checkpoint", "empty" or "unreadable"
    written: str | None = None  # when the old part was written (ISO date)


@dataclass(frozen=True)
class RetiredPart:
    """The results of a checkpoint that was evaluated and then deleted (a trainer keeping the last N)."""

    metrics: Path
    samples: Path


@dataclass
class Plan:
    cells: list[Cell]
    done: list[Cell] = field(default_factory=list)
    missing: list[Cell] = field(default_factory=list)
    units: list[WorkUnit] = field(default_factory=list)
    recompute: list[Recompute] = field(default_factory=list)  # missing cells whose old results are stale
    legacy: list[Cell] = field(default_factory=list)  # done cells written before fingerprints: to adopt
    retired: list[RetiredPart] = field(default_factory=list)

    def describe_recompute(self) -> list[str]:
        """One line per changed input: 'task X changed since DATE: N cells to recompute'."""
        groups: dict[tuple[str, str], list[Recompute]] = {}
        for item in self.recompute:
            subject = item.cell.task.name if item.reason == "task" else item.cell.checkpoint.id
            groups.setdefault((item.reason, subject), []).append(item)
        lines = []
        for (reason, subject), items in groups.items():
            since = min((i.written for i in items if i.written), default=None)
            what = {
                "task": f"task {subject} changed",
                "checkpoint": f"checkpoint {subject} changed",
                "empty": f"{subject}: results without metric rows",
                "unreadable": f"{subject}: unreadable (truncated?) results",
            }[reason]
            lines.append(f"{what}{f' since {since}' if since else ''}: {len(items)} cell(s) to recompute")
        return lines


def _partner(checkpoints: list[Checkpoint], position: int) -> Checkpoint | None:
    """A neighbouring checkpoint of the family (the next, else the previous); None for a lone checkpoint."""
    if len(checkpoints) < 2:
        return None
    return checkpoints[position + 1] if position + 1 < len(checkpoints) else checkpoints[position - 1]


def read_part_inputs(path: Path) -> tuple[str, dict[str, Any] | None, str | None]:
    """("ok" | "absent" | "empty" | "unreadable", recorded inputs or None for a legacy part, written date)."""
    if not path.is_file():
        return "absent", None, None
    try:
        metadata = pq.read_metadata(path)
    except Exception:  # noqa: BLE001 - a zero-byte or truncated file: pyarrow's errors vary by damage
        return "unreadable", None, None
    written = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if metadata.num_rows == 0:
        return "empty", None, written
    raw = (metadata.metadata or {}).get(INPUTS_METADATA_KEY)
    return "ok", (json.loads(raw) if raw else None), written


def cell_tasks(config: SweepConfig, resolver: TaskResolver) -> list[CellTask]:
    """The sweep's tasks as cells see them: tags expanded to their members, fingerprints taken."""
    specs = {spec.name: spec for spec in config.tasks}
    return [
        CellTask(task.name, config.task_fewshot(specs[task.spec]), config.task_limit(specs[task.spec]), task.source, task.fingerprint)
        for task in resolver.resolve([spec.name for spec in config.tasks])
    ]


def build_plan(
    config: SweepConfig,
    output: Path,
    force: bool = False,
    completeness: Completeness | None = None,
    digests: FileDigests | None = None,
) -> Plan:
    """Every cell of the sweep, split into done and missing; missing cells grouped per checkpoint.

    ``completeness`` (a watched run): local checkpoints still being written are left out.
    ``digests``: file digests memoised across the rounds of a watched run.
    """
    include_paths = include_paths_of(config)
    digests = digests or FileDigests()
    tasks = cell_tasks(config, TaskResolver(include_paths, digests))
    plan = Plan(cells=[])
    for family in config.models:
        args = config.family_hash_args(family)
        settings = config.family_settings(family)  # validated when the config was; the workers only locate it
        engine_key = stable_hash({"lm": config.engine.lm, "args": args})
        checkpoints = resolve_checkpoints(family, completeness)
        for position, checkpoint in enumerate(checkpoints):
            unit_cells = []
            fingerprint = checkpoint_fingerprint(checkpoint, digests)
            for task in tasks:
                cell_hash = stable_hash({"lm": config.engine.lm, "args": args, "task": task.hash_payload()})
                cell = Cell(checkpoint, task, cell_hash, fingerprint)
                plan.cells.append(cell)
                if force:
                    plan.missing.append(cell)
                    unit_cells.append(cell)
                    continue
                state, recorded, written = read_part_inputs(cell.metrics_part(output))
                if state == "ok" and recorded is None:
                    plan.done.append(cell)
                    plan.legacy.append(cell)
                    continue
                if state == "ok" and recorded is not None:
                    changed = _changed_input(recorded, cell)
                    if changed is None:
                        plan.done.append(cell)
                        continue
                    plan.recompute.append(Recompute(cell, changed, written))
                elif state in ("empty", "unreadable"):
                    plan.recompute.append(Recompute(cell, state, written))
                plan.missing.append(cell)
                unit_cells.append(cell)
            if unit_cells:
                plan.units.append(
                    WorkUnit(
                        checkpoint=checkpoint,
                        cells=unit_cells,
                        settings=settings,
                        lm=config.engine.lm,
                        include_paths=include_paths,
                        engine_key=engine_key,
                        partner=_partner(checkpoints, position),
                    )
                )
    # One family's checkpoints back to back, in step order: a worker swaps weights between them.
    plan.units.sort(key=lambda u: (u.checkpoint.architecture or "", u.checkpoint.model, u.checkpoint.step))
    plan.retired = _retired_parts(config, plan, output)
    return plan


def _changed_input(recorded: dict[str, Any], cell: Cell) -> str | None:
    if recorded.get("task_fingerprint") != cell.task.fingerprint:
        return "task"
    if recorded.get("checkpoint_fingerprint") != cell.checkpoint_fingerprint:
        return "checkpoint"
    return None


def _local_patterns(family: ModelFamily) -> list[str]:
    return [str(Path(entry.name).expanduser().absolute()) for source in family.checkpoints if isinstance(source, LocalCheckpoints) for entry in source.paths]


def _retired_parts(config: SweepConfig, plan: Plan, output: Path) -> list[RetiredPart]:
    """Parts of checkpoints that match a family's local paths but are gone from disk, for tasks the plan
    still evaluates the same way (same cell hash and task fingerprint): their rows stay in the tables.

    A checkpoint the user took out of the config (no longer matching) is not retired, only dropped.
    """
    planned_folders = {cell.part_stem(output).parent for cell in plan.cells}
    current = {(cell.checkpoint.model, cell.task.name, cell.cell_hash): cell.task.fingerprint for cell in plan.cells}
    retired = []
    for family in config.models:
        patterns = _local_patterns(family)
        family_folder = output / "cells" / slug(family.name)
        if not patterns or not family_folder.is_dir():
            continue
        stems = {(slug(task), cell_hash): (task, fp) for (model, task, cell_hash), fp in current.items() if model == family.name}
        for folder in sorted(p for p in family_folder.iterdir() if p.is_dir() and p not in planned_folders):
            for part in sorted(folder.glob("*.metrics.parquet")):
                task_slug, _, cell_hash = part.name[: -len(".metrics.parquet")].rpartition(".")
                if (task_slug, cell_hash) not in stems:
                    continue
                state, recorded, _ = read_part_inputs(part)
                if state != "ok" or (recorded is not None and recorded.get("task_fingerprint") != stems[task_slug, cell_hash][1]):
                    continue
                checkpoint = pq.read_table(part, columns=["checkpoint"]).column("checkpoint")[0].as_py()
                location = str(Path(checkpoint).expanduser().absolute())
                if Path(location).exists() or not any(fnmatch.fnmatch(location, pattern) for pattern in patterns):
                    continue
                samples = part.with_name(part.name.replace(".metrics.parquet", ".samples.parquet"))
                retired.append(RetiredPart(part, samples))
    return retired
