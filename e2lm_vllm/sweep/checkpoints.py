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
import logging
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

log = logging.getLogger("e2lm_vllm.sweep")

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
    """The trailing number of a folder or revision name: ``iter_0002000`` -> 2000, ``checkpoint-500`` -> 500.

    The one rule for a step in a name: digits that *end* it. ``latest``, ``final`` or
    ``step1000-unsharded`` (a second copy of step 1000, in another layout) have none: guessing 1000
    would evaluate one checkpoint twice, so such a folder needs ``e2lm.step`` or ``step:``.
    """
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
    from e2lm_vllm.quality.tokens import BatchSchedule, iteration_to_tokens

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


# A header longer than this is no safetensors header (the safetensors library's own limit): reading
# it would pull a corrupt file's gigabytes into memory at every poll.
MAX_SAFETENSORS_HEADER = 100_000_000


@dataclass(frozen=True)
class NotReady:
    """Why a checkpoint folder is not evaluated now."""

    reason: str
    # True when waiting will not mend it (a corrupt header, no step): the watcher warns once
    # instead of listing it as in progress; it still looks again at every poll (a trainer may rewrite it).
    malformed: bool = False


def _safetensors_state(path: Path) -> NotReady | None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return NotReady(f"{path.name}: {size} bytes, header not written yet")
            (header_length,) = struct.unpack("<Q", prefix)
            if header_length > MAX_SAFETENSORS_HEADER:
                return NotReady(
                    f"{path.name}: header length {header_length} bytes is over {MAX_SAFETENSORS_HEADER}: "
                    "not a safetensors file",
                    malformed=True,
                )
            if 8 + header_length > size:
                return NotReady(f"{path.name}: {size} bytes, header of {header_length} bytes not written yet")
            raw = handle.read(header_length)
    except FileNotFoundError:
        return NotReady(f"{path.name}: not there yet")
    except OSError as error:
        return NotReady(f"{path.name}: unreadable ({type(error).__name__}: {error})")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        # The whole header is there (the size says so) and does not parse: corrupt, not in progress.
        return NotReady(f"{path.name}: header is not JSON ({type(error).__name__}: {error})", malformed=True)
    if not isinstance(header, dict):
        return NotReady(f"{path.name}: header is not a JSON object", malformed=True)
    ends = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            return NotReady(
                f"{path.name}: tensor {name!r} has data_offsets {offsets!r}, expected [begin, end] with 0 <= begin <= end",
                malformed=True,
            )
        ends.append(offsets[1])
    expected = 8 + header_length + max(ends, default=0)
    if size < expected:
        return NotReady(f"{path.name}: {size} of {expected} bytes")
    if size > expected:
        return NotReady(f"{path.name}: {size} bytes, more than the {expected} its header describes", malformed=True)
    return None


def safetensors_incomplete(path: Path) -> str | None:
    """Why a safetensors file is not whole yet (or is no safetensors file), or None when it is whole.

    The file is an 8-byte little-endian header length, a JSON header giving each tensor's
    ``data_offsets`` into the data that follows, then the data; so its final size is known from
    its first bytes: ``8 + header length + the largest end offset``. A shorter file is still
    being written. Reads only the header (at most ``MAX_SAFETENSORS_HEADER`` bytes), whatever the
    file's size, and never raises on a corrupt one.
    """
    state = _safetensors_state(path)
    return None if state is None else state.reason


def _torch_bin_state(path: Path) -> NotReady | None:
    """A torch.save file is a zip archive, whose directory is written last: a truncated one has none."""
    try:
        with zipfile.ZipFile(path):
            return None
    except FileNotFoundError:
        return NotReady(f"{path.name}: not there yet")
    except (OSError, zipfile.BadZipFile) as error:
        return NotReady(f"{path.name}: not a whole archive yet ({error})")


def _shards_state(index: Path, check: Callable[[Path], NotReady | None]) -> NotReady | None:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return NotReady(f"{index.name}: unreadable ({type(error).__name__}: {error})")
    for shard in shards:
        state = check(index.parent / shard)
        if state is not None:
            return state
    return None


def folder_state(folder: Path, marker: str | None = None) -> NotReady | None:
    """Why ``folder`` is not a complete checkpoint yet, or None when it is.

    With ``marker`` (a file name the trainer writes last, e.g. ``COMPLETE``), that file alone
    decides. Otherwise: ``config.json`` parses, and the weights are whole: ``model.safetensors``,
    or every shard of ``model.safetensors.index.json`` (``safetensors_incomplete``), else
    ``pytorch_model.bin`` or its index's shards. A writer that preallocates the file at its final
    size before filling it passes this check too early: such trainers should write a marker.
    """
    if not folder.is_dir():
        return NotReady("folder not there yet")
    if marker is not None:
        return None if (folder / marker).is_file() else NotReady(f"no {marker} marker yet")
    try:
        json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        return NotReady("no config.json yet")
    except (OSError, ValueError) as error:
        return NotReady(f"config.json unreadable ({type(error).__name__})")
    if (folder / SAFETENSORS_INDEX).is_file():
        return _shards_state(folder / SAFETENSORS_INDEX, _safetensors_state)
    if (folder / SAFETENSORS).is_file():
        return _safetensors_state(folder / SAFETENSORS)
    if (folder / TORCH_BIN_INDEX).is_file():
        return _shards_state(folder / TORCH_BIN_INDEX, _torch_bin_state)
    if (folder / TORCH_BIN).is_file():
        return _torch_bin_state(folder / TORCH_BIN)
    return NotReady(f"no weights yet (expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN})")


def incomplete_reason(folder: Path, marker: str | None = None) -> str | None:
    """``folder_state``'s reason: why ``folder`` is not a complete checkpoint yet, or None when it is."""
    state = folder_state(folder, marker)
    return None if state is None else state.reason


@dataclass
class Completeness:
    """Watch mode's filter on local folders: which to plan now, which are still being written
    (``waiting``) and which cannot be used as they are (``skipped``: a corrupt header, no step, a
    step the token schedule lacks). Each skipped folder is warned about once per watcher, not at
    every poll: the watcher passes ``warned`` on from one poll's Completeness to the next."""

    marker: str | None = None
    waiting: dict[str, str] = field(default_factory=dict)  # folder -> reason, filled while resolving
    skipped: dict[str, str] = field(default_factory=dict)  # folder -> what is wrong with it
    warned: dict[str, str] = field(default_factory=dict)  # folder -> the reason last warned about

    def next_poll(self) -> Completeness:
        """A fresh filter for the next poll that remembers what was warned about."""
        return Completeness(self.marker, warned=self.warned)

    def accepts(self, folder: Path) -> bool:
        state = folder_state(folder, self.marker)
        key = str(folder.absolute())
        if state is None:
            self.waiting.pop(key, None)
            return True
        if state.malformed:
            self.skip(folder, state.reason)
        else:
            self.waiting[key] = state.reason
        return False

    def skip(self, folder: Path, reason: str) -> None:
        key = str(folder.absolute())
        self.waiting.pop(key, None)
        self.skipped[key] = reason
        if self.warned.get(key) != reason:  # once per folder, again only if what is wrong changes
            self.warned[key] = reason
            log.warning("watch: skipping %s: %s (looked at again at every poll; not warned again)", key, reason)


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
            try:
                found.append(_local_checkpoint(family, entry, folder))
            except SweepConfigError as error:
                if completeness is None:
                    raise  # a plain sweep stops before any work: the user fixes the config
                completeness.skip(folder, str(error))  # a watcher outlives one odd folder
    return found


def _local_checkpoint(family: ModelFamily, entry: CheckpointEntry, folder: Path) -> Checkpoint:
    meta = read_checkpoint_meta(folder)
    step = entry.step if entry.step is not None else meta.get("step")
    if step is None:
        step = step_from_name(folder.name)
    if step is None:
        raise SweepConfigError(
            f"model {family.name}: no training step for {folder} "
            "(expected `e2lm.step` in its config.json, a trailing number in the folder name, or `step:`)"
        )
    if isinstance(step, bool) or not isinstance(step, int):
        raise SweepConfigError(f"model {family.name}: `e2lm.step` in {folder / 'config.json'} is {step!r}, expected an integer")
    return Checkpoint(
        model=family.name,
        id=str(folder.absolute()),
        step=step,
        tokens=_tokens(entry.tokens, meta.get("tokens"), step, family),
        path=str(folder.absolute()),
        architecture=family.architecture or family.name,
    )


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
    noted in ``completeness.waiting``, a glob matching nothing yet is no error, and a folder that
    cannot be used (corrupt header, no step, a step the token schedule lacks) is left out with one
    warning (``completeness.skipped``) where a plain sweep raises ``SweepConfigError``.
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
