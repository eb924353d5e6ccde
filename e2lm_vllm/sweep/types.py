"""The messages between the sweep's driver and its workers: cells, work units, and their results.

Types only (as vLLM's `outputs.py`): `cells` decides which cells and units there are, the workers
(`worker`) return `UnitResult`s, the driver (`runner`) writes them. Everything here crosses a Ray
boundary, so it is plain dataclasses that pickle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2lm_vllm.settings import EngineSettings, LmName, ModelArgs
from e2lm_vllm.sweep.checkpoints import Checkpoint
from e2lm_vllm.sweep.config import stable_hash

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str, length: int = 60) -> str:
    """`text` as one safe file-name part: unsafe runs become `_`, the last `length` characters kept."""
    return _UNSAFE.sub("_", text).strip("_")[-length:] or "x"


@dataclass(frozen=True)
class CellTask:
    """One task as a cell evaluates it."""

    name: str
    num_fewshot: int | None
    limit: float | None
    source: str = ""  # what lm-eval loads: the task name, or the YAML path the config gave
    fingerprint: str = ""  # `inputs.TaskResolver`: what the task reads

    def hash_payload(self) -> dict[str, Any]:
        # The fields the cell hash has always had: an unchanged config finds its parts done.
        return {"name": self.name, "num_fewshot": self.num_fewshot, "limit": self.limit}


@dataclass(frozen=True)
class Cell:
    checkpoint: Checkpoint
    task: CellTask
    cell_hash: str  # hash of what changes this cell's result; the `config_hash` column
    checkpoint_fingerprint: str = ""  # `inputs.checkpoint_fingerprint`

    @property
    def inputs(self) -> dict[str, str]:
        """The fingerprints recorded with the cell's results (footer and columns of its metrics part)."""
        return {"task_fingerprint": self.task.fingerprint, "checkpoint_fingerprint": self.checkpoint_fingerprint}

    @property
    def key(self) -> str:
        return f"{self.checkpoint.model}|{self.checkpoint.id}|{self.task.name}|{self.cell_hash}"

    def part_stem(self, output: Path) -> Path:
        ckpt = self.checkpoint
        folder = f"step{ckpt.step:010d}_{slug(Path(ckpt.id).name)}_{stable_hash(ckpt.id, 8)}"
        return output / "cells" / slug(ckpt.model) / folder / f"{slug(self.task.name)}.{self.cell_hash}"

    def metrics_part(self, output: Path) -> Path:
        return self.part_stem(output).with_name(self.part_stem(output).name + ".metrics.parquet")

    def samples_part(self, output: Path) -> Path:
        return self.part_stem(output).with_name(self.part_stem(output).name + ".samples.parquet")


@dataclass
class WorkUnit:
    """One checkpoint and the tasks still to evaluate on it: one engine lifetime in one worker."""

    checkpoint: Checkpoint
    cells: list[Cell]
    settings: EngineSettings  # validated on the driver (`SweepConfig.family_settings`), never on a worker
    lm: LmName
    include_paths: list[str]
    # Same key, same engine settings: the worker may swap weights (the lm still checks config and tokenizer).
    engine_key: str = ""
    # Another checkpoint of the family: what a worker's swap check swaps to and back.
    partner: Checkpoint | None = None

    @property
    def label(self) -> str:
        return f"{self.checkpoint.model}@{self.checkpoint.step}"

    def model_args(self, checkpoint: Checkpoint | None = None) -> ModelArgs:
        """The lm's args: the settings at this unit's checkpoint, or at `checkpoint` (its partner)."""
        return self.settings.located(**(checkpoint or self.checkpoint).model_args())


@dataclass
class CellResult:
    key: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None  # `failure_kind` of the error
    eval_seconds: float = 0.0


@dataclass
class UnitResult:
    label: str
    cells: list[CellResult]
    engine_seconds: float  # building the engine or swapping the weights (and the swap check)
    backend: str
    versions: dict[str, str | None]
    pid: int
    host: str
    engine: str = "built"  # "built", "swapped", or "checked": swapped, then rebuilt to check the swap
    timings: dict[str, float] = field(default_factory=dict)  # PHASES -> seconds
    swap_check: dict[str, Any] | None = None
    rss_bytes: int = 0  # the worker's resident memory after this checkpoint
