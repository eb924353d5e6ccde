"""Resolve a family's checkpoint sources to concrete checkpoints, each with its training step.

Local folders are globbed and read (``config.json`` for the step); HF sources only produce
names: nothing touches the network until a worker loads the checkpoint.
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from e2lm_vllm.sweep.config import (
    CheckpointEntry,
    ConstantTokens,
    HFRevisions,
    HFSubfolders,
    ListedTokens,
    LocalCheckpoints,
    ModelFamily,
    SweepConfigError,
)

_TRAILING_NUMBER = re.compile(r"(\d+)$")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of one family: where its weights are, and when in training it was saved."""

    model: str  # family name, e.g. "dense-1b-arch1"
    id: str  # path, "repo@revision" or "repo/subfolder": the `checkpoint` column
    step: int
    tokens: float | None = None
    path: str | None = None
    repo: str | None = None
    revision: str | None = None
    subfolder: str | None = None
    architecture: str | None = None

    def model_args(self) -> dict[str, Any]:
        """Constructor kwargs that locate the weights (``pretrained``, ``revision``, ``subfolder``)."""
        args: dict[str, Any] = {"pretrained": self.path or self.repo}
        if self.revision:
            args["revision"] = self.revision
        if self.subfolder:
            args["subfolder"] = self.subfolder
        return args

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def step_from_name(name: str) -> int | None:
    """The trailing number of a folder or revision name: ``iter_0002000`` -> 2000, ``checkpoint-500`` -> 500."""
    match = _TRAILING_NUMBER.search(name.rstrip("/"))
    return int(match.group(1)) if match else None


def read_checkpoint_meta(folder: Path) -> dict[str, Any]:
    """Training metadata written beside the weights: ``config.json`` key ``e2lm`` (``step``, ``tokens``)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        return {}
    try:
        meta = json.loads(config_file.read_text()).get("e2lm") or {}
    except (json.JSONDecodeError, AttributeError):
        # A corrupt config is the worker's error to report; discovery falls back to the folder name.
        return {}
    return meta if isinstance(meta, dict) else {}


def schedule_tokens(family: ModelFamily, step: int) -> float | None:
    """Tokens seen at ``step`` by the family's ``token_schedule`` (or ``tokens_per_step``); None without one.

    A ramp-up goes through ``iteration_to_tokens``, the same function ``e2lm-vllm score`` uses.
    """
    schedule = family.token_schedule
    if schedule is None:
        return None if family.tokens_per_step is None else float(step) * family.tokens_per_step
    if isinstance(schedule, ConstantTokens):
        return float(step) * schedule.tokens_per_step
    if isinstance(schedule, ListedTokens):
        if step not in schedule.tokens:
            listed = ", ".join(str(s) for s in sorted(schedule.tokens))
            raise SweepConfigError(
                f"model {family.name}: token_schedule.tokens has no entry for step {step} (listed steps: {listed})"
            )
        return float(schedule.tokens[step])
    from e2lm_vllm.scoring.tokens import BatchSchedule, iteration_to_tokens

    batches = BatchSchedule(**schedule.model_dump(exclude={"kind", "method"}))  # the same field names
    return float(iteration_to_tokens([step], batches, schedule.method)[0])


def _tokens(entry_tokens: float | None, meta_tokens: Any, step: int, family: ModelFamily) -> float | None:
    if entry_tokens is not None:
        return float(entry_tokens)
    if meta_tokens is not None:
        return float(meta_tokens)
    return schedule_tokens(family, step)


def _local(family: ModelFamily, source: LocalCheckpoints) -> list[Checkpoint]:
    found: list[Checkpoint] = []
    for entry in source.paths:
        if _GLOB_CHARS.search(entry.name):
            folders = sorted(Path(p) for p in glob.glob(entry.name) if Path(p).is_dir())
            if not folders:
                raise SweepConfigError(f"model {family.name}: checkpoint glob {entry.name!r} matches no folder")
        else:
            # A missing explicit folder is kept: the worker records it as a failed checkpoint, the rest runs.
            folders = [Path(entry.name)]
        for folder in folders:
            meta = read_checkpoint_meta(folder)
            step = entry.step if entry.step is not None else meta.get("step")
            if step is None:
                step = step_from_name(folder.name)
            if step is None:
                raise SweepConfigError(
                    f"model {family.name}: no training step for {folder} "
                    "(expected `e2lm.step` in its config.json, a trailing number in the folder name, or `step:`)"
                )
            found.append(
                Checkpoint(
                    model=family.name,
                    id=str(folder.absolute()),
                    step=int(step),
                    tokens=_tokens(entry.tokens, meta.get("tokens"), int(step), family),
                    path=str(folder.absolute()),
                    architecture=family.architecture or family.name,
                )
            )
    return found


def _named_step(family: ModelFamily, entry: CheckpointEntry, what: str) -> int:
    step = entry.step if entry.step is not None else step_from_name(entry.name)
    if step is None:
        raise SweepConfigError(
            f"model {family.name}: no training step for {what} {entry.name!r} (expected a trailing number or `step:`)"
        )
    return step


def _revisions(family: ModelFamily, source: HFRevisions) -> list[Checkpoint]:
    found = []
    for entry in source.revisions:
        step = _named_step(family, entry, "revision")
        found.append(
            Checkpoint(
                model=family.name,
                id=f"{source.repo}@{entry.name}",
                step=step,
                tokens=_tokens(entry.tokens, None, step, family),
                repo=source.repo,
                revision=entry.name,
                architecture=family.architecture or family.name,
            )
        )
    return found


def _subfolders(family: ModelFamily, source: HFSubfolders) -> list[Checkpoint]:
    if source.subfolders is not None:
        entries = source.subfolders
    else:
        assert source.subfolder_template is not None and source.steps is not None
        steps = source.steps if isinstance(source.steps, list) else source.steps.steps()
        entries = [CheckpointEntry(name=source.subfolder_template.format(step=s), step=s) for s in steps]
    found = []
    for entry in entries:
        step = _named_step(family, entry, "subfolder")
        found.append(
            Checkpoint(
                model=family.name,
                id=f"{source.repo}/{entry.name}" + (f"@{source.revision}" if source.revision else ""),
                step=step,
                tokens=_tokens(entry.tokens, None, step, family),
                repo=source.repo,
                revision=source.revision,
                subfolder=entry.name,
                architecture=family.architecture or family.name,
            )
        )
    return found


def resolve_checkpoints(family: ModelFamily) -> list[Checkpoint]:
    """Every checkpoint of ``family``, sorted by step, duplicates (same id) dropped."""
    found: list[Checkpoint] = []
    for source in family.checkpoints:
        if isinstance(source, LocalCheckpoints):
            found += _local(family, source)
        elif isinstance(source, HFRevisions):
            found += _revisions(family, source)
        else:
            found += _subfolders(family, source)
    unique = {checkpoint.id: checkpoint for checkpoint in found}
    return sorted(unique.values(), key=lambda c: (c.step, c.id))
