"""Resolve a family's checkpoint sources to concrete checkpoints, each with its training step.

Local folders are globbed and read (``config.json`` for the step); HF sources only produce
names: nothing touches the network until a worker loads the checkpoint.

A watched run (``e2lm-vllm sweep --watch``) also asks whether a local folder is complete yet
(``incomplete_reason``): a trainer may still be writing it, and a half-written checkpoint must be
neither evaluated nor recorded as failed.
"""

from __future__ import annotations

import glob
import json
import re
import struct
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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


# --- completeness of a checkpoint folder that may still be being written ------------------------

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"


def safetensors_incomplete(path: Path) -> str | None:
    """Why a safetensors file is not whole yet, or None when it is.

    The file is an 8-byte little-endian header length, a JSON header giving each tensor's
    ``data_offsets`` into the data that follows, then the data; so its final size is known from
    its first bytes: ``8 + header length + the largest end offset``. A shorter file is still
    being written. Reads only the header, whatever the file's size.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return f"{path.name}: {size} bytes, header not written yet"
            (header_length,) = struct.unpack("<Q", prefix)
            if 8 + header_length > size:
                return f"{path.name}: {size} bytes, header of {header_length} bytes not written yet"
            header = json.loads(handle.read(header_length))
    except FileNotFoundError:
        return f"{path.name}: not there yet"
    except (OSError, ValueError, UnicodeDecodeError) as error:
        return f"{path.name}: header unreadable ({type(error).__name__}: {error})"
    if not isinstance(header, dict):
        return f"{path.name}: header is not a JSON object"
    ends = [info["data_offsets"][1] for name, info in header.items() if name != "__metadata__" and isinstance(info, dict)]
    expected = 8 + header_length + max(ends, default=0)
    if size != expected:
        return f"{path.name}: {size} of {expected} bytes"
    return None


def _torch_bin_incomplete(path: Path) -> str | None:
    """A torch.save file is a zip archive, whose directory is written last: a truncated one has none."""
    try:
        with zipfile.ZipFile(path):
            return None
    except FileNotFoundError:
        return f"{path.name}: not there yet"
    except (OSError, zipfile.BadZipFile) as error:
        return f"{path.name}: not a whole archive yet ({error})"


def _shards_incomplete(index: Path, check: Callable[[Path], str | None]) -> str | None:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"{index.name}: unreadable ({type(error).__name__}: {error})"
    for shard in shards:
        reason = check(index.parent / shard)
        if reason is not None:
            return reason
    return None


def incomplete_reason(folder: Path, marker: str | None = None) -> str | None:
    """Why ``folder`` is not a complete checkpoint yet, or None when it is.

    With ``marker`` (a file name the trainer writes last, e.g. ``COMPLETE``), that file alone
    decides. Otherwise: ``config.json`` parses, and the weights are whole: ``model.safetensors``,
    or every shard of ``model.safetensors.index.json`` (``safetensors_incomplete``), else
    ``pytorch_model.bin`` or its index's shards. A writer that preallocates the file at its final
    size before filling it passes this check too early: such trainers should write a marker.
    """
    if not folder.is_dir():
        return "folder not there yet"
    if marker is not None:
        return None if (folder / marker).is_file() else f"no {marker} marker yet"
    try:
        json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        return "no config.json yet"
    except (OSError, ValueError) as error:
        return f"config.json unreadable ({type(error).__name__})"
    if (folder / SAFETENSORS_INDEX).is_file():
        return _shards_incomplete(folder / SAFETENSORS_INDEX, safetensors_incomplete)
    if (folder / SAFETENSORS).is_file():
        return safetensors_incomplete(folder / SAFETENSORS)
    if (folder / TORCH_BIN_INDEX).is_file():
        return _shards_incomplete(folder / TORCH_BIN_INDEX, _torch_bin_incomplete)
    if (folder / TORCH_BIN).is_file():
        return _torch_bin_incomplete(folder / TORCH_BIN)
    return f"no weights yet (expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN})"


@dataclass
class Completeness:
    """Watch mode's filter on local folders: which are complete, and why the others are not (``waiting``)."""

    marker: str | None = None
    waiting: dict[str, str] = field(default_factory=dict)  # folder -> reason, filled while resolving

    def accepts(self, folder: Path) -> bool:
        reason = incomplete_reason(folder, self.marker)
        if reason is None:
            self.waiting.pop(str(folder.absolute()), None)
            return True
        self.waiting[str(folder.absolute())] = reason
        return False


def _local(family: ModelFamily, source: LocalCheckpoints, completeness: Completeness | None) -> list[Checkpoint]:
    found: list[Checkpoint] = []
    for entry in source.paths:
        if _GLOB_CHARS.search(entry.name):
            folders = sorted(Path(p) for p in glob.glob(entry.name) if Path(p).is_dir())
            if not folders and completeness is None:  # a watched run waits for its first checkpoint
                raise SweepConfigError(f"model {family.name}: checkpoint glob {entry.name!r} matches no folder")
        else:
            # A missing explicit folder is kept: the worker records it as a failed checkpoint, the rest runs.
            folders = [Path(entry.name)]
        for folder in folders:
            if completeness is not None and not completeness.accepts(folder):
                continue  # still being written: looked at again at the next poll
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


def resolve_checkpoints(family: ModelFamily, completeness: Completeness | None = None) -> list[Checkpoint]:
    """Every checkpoint of ``family``, sorted by step, duplicates (same id) dropped.

    With ``completeness`` (a watched run), local folders still being written are left out and
    noted in ``completeness.waiting``, and a glob matching nothing yet is no error.
    """
    found: list[Checkpoint] = []
    for source in family.checkpoints:
        if isinstance(source, LocalCheckpoints):
            found += _local(family, source, completeness)
        elif isinstance(source, HFRevisions):
            found += _revisions(family, source)
        else:
            found += _subfolders(family, source)
    unique = {checkpoint.id: checkpoint for checkpoint in found}
    return sorted(unique.values(), key=lambda c: (c.step, c.id))
