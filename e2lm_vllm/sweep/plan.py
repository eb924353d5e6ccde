"""The cells of a sweep (checkpoint x task), which are already done, and the work left.

A cell is done when its metrics part file exists under ``OUTPUT/cells/``; parts are written
atomically, so an existing file is a complete result. A cell's file name carries a hash of
everything that changes its result (engine args, family args, task, few-shot, limit), so changing
the config recomputes exactly the affected cells and a rerun of the same config computes only
the missing ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2lm_vllm.sweep.checkpoints import Checkpoint, Completeness, resolve_checkpoints
from e2lm_vllm.sweep.config import ModelFamily, SweepConfig, SweepConfigError, TaskSpec, stable_hash

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class _TolerantLoader(yaml.SafeLoader):
    """Reads lm-eval task YAMLs, whose ``!function`` tags mean nothing outside lm-eval."""


_TolerantLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def task_name_of(spec: TaskSpec) -> str:
    """The lm-eval task name: the spec itself, or the ``task:`` of a task YAML path."""
    if not spec.name.endswith((".yaml", ".yml")):
        return spec.name
    path = Path(spec.name)
    if not path.is_file():
        raise SweepConfigError(f"tasks: task YAML {spec.name} not found")
    data = yaml.load(path.read_text(), Loader=_TolerantLoader) or {}
    name = data.get("task") or data.get("group")
    if not isinstance(name, str):
        raise SweepConfigError(f"tasks: {spec.name} has no `task:` name (expected an lm-eval task YAML)")
    return name


def include_paths_of(config: SweepConfig) -> list[str]:
    """Include paths plus the folder of every task given as a YAML path."""
    paths = list(config.include_paths)
    for spec in config.tasks:
        if spec.name.endswith((".yaml", ".yml")):
            folder = str(Path(spec.name).resolve().parent)
            if folder not in paths:
                paths.append(folder)
    return paths


def _slug(text: str, length: int = 60) -> str:
    return _UNSAFE.sub("_", text).strip("_")[-length:] or "x"


@dataclass(frozen=True)
class CellTask:
    """One task as a cell evaluates it."""

    name: str
    num_fewshot: int | None
    limit: float | None


@dataclass(frozen=True)
class Cell:
    checkpoint: Checkpoint
    task: CellTask
    cell_hash: str  # hash of what changes this cell's result; the `config_hash` column

    @property
    def key(self) -> str:
        return f"{self.checkpoint.model}|{self.checkpoint.id}|{self.task.name}|{self.cell_hash}"

    def part_stem(self, output: Path) -> Path:
        ckpt = self.checkpoint
        folder = f"step{ckpt.step:010d}_{_slug(Path(ckpt.id).name)}_{stable_hash(ckpt.id, 8)}"
        return output / "cells" / _slug(ckpt.model) / folder / f"{_slug(self.task.name)}.{self.cell_hash}"

    def metrics_part(self, output: Path) -> Path:
        return self.part_stem(output).with_name(self.part_stem(output).name + ".metrics.parquet")

    def samples_part(self, output: Path) -> Path:
        return self.part_stem(output).with_name(self.part_stem(output).name + ".samples.parquet")


@dataclass
class WorkUnit:
    """One checkpoint and the tasks still to evaluate on it: one engine lifetime in one worker."""

    checkpoint: Checkpoint
    cells: list[Cell]
    model_args: dict[str, Any]
    lm: str
    include_paths: list[str]
    # Same key, same engine settings: the worker may swap weights (the lm still checks config and tokenizer).
    engine_key: str = ""
    # Model args of another checkpoint of the family: what a worker's swap check swaps to and back.
    partner_args: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.checkpoint.model}@{self.checkpoint.step}"


@dataclass
class Plan:
    cells: list[Cell]
    done: list[Cell] = field(default_factory=list)
    missing: list[Cell] = field(default_factory=list)
    units: list[WorkUnit] = field(default_factory=list)


def family_model_args(config: SweepConfig, family: ModelFamily) -> dict[str, Any]:
    """Engine settings then family overrides, without the location of the weights."""
    tokenizer = {"tokenizer": family.tokenizer} if family.tokenizer is not None else {}
    args = {**config.engine.settings_args(), **tokenizer, **config.engine.extra, **family.model_args}
    return {key: value for key, value in args.items() if value is not None}


def _partner_args(args: dict[str, Any], checkpoints: list[Checkpoint], position: int) -> dict[str, Any] | None:
    """A neighbouring checkpoint of the family (the next, else the previous); None for a lone checkpoint."""
    if len(checkpoints) < 2:
        return None
    partner = checkpoints[position + 1] if position + 1 < len(checkpoints) else checkpoints[position - 1]
    return {**args, **partner.model_args()}


def build_plan(config: SweepConfig, output: Path, force: bool = False, completeness: Completeness | None = None) -> Plan:
    """Every cell of the sweep, split into done and missing; missing cells grouped per checkpoint.

    ``completeness`` (a watched run): local checkpoints still being written are left out.
    """
    tasks = [CellTask(task_name_of(t), config.task_fewshot(t), config.task_limit(t)) for t in config.tasks]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise SweepConfigError(f"tasks: expected each task once, got {names}")
    include_paths = include_paths_of(config)
    plan = Plan(cells=[])
    for family in config.models:
        args = family_model_args(config, family)
        engine_key = stable_hash({"lm": config.engine.lm, "args": args})
        checkpoints = resolve_checkpoints(family, completeness)
        for position, checkpoint in enumerate(checkpoints):
            unit_cells = []
            for task in tasks:
                cell_hash = stable_hash({"lm": config.engine.lm, "args": args, "task": task.__dict__})
                cell = Cell(checkpoint, task, cell_hash)
                plan.cells.append(cell)
                if not force and cell.metrics_part(output).is_file():
                    plan.done.append(cell)
                else:
                    plan.missing.append(cell)
                    unit_cells.append(cell)
            if unit_cells:
                plan.units.append(
                    WorkUnit(
                        checkpoint=checkpoint,
                        cells=unit_cells,
                        model_args={**args, **checkpoint.model_args()},
                        lm=config.engine.lm,
                        include_paths=include_paths,
                        engine_key=engine_key,
                        partner_args=_partner_args(args, checkpoints, position),
                    )
                )
    # One family's checkpoints back to back, in step order: a worker swaps weights between them.
    plan.units.sort(key=lambda u: (u.checkpoint.architecture or "", u.checkpoint.model, u.checkpoint.step))
    return plan
