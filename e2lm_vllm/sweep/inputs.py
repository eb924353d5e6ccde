"""What a cell's numbers depend on beyond the config: the task as lm-eval resolves it, and the checkpoint's files.

The cell hash (`plan.Cell.cell_hash`) says *which* evaluation a cell is (engine settings, task
name, few-shot, limit). The fingerprints here say *what* it read: a task YAML edited in place, a
data file replaced, lm-eval upgraded, or a checkpoint folder re-written gives another fingerprint,
and the plan recomputes exactly those cells (`plan.build_plan`).

- A task's fingerprint is its config after ``include:`` (lm-eval's own YAML loader, functions
  unresolved), the bytes of the Python files its ``!function`` hooks live in, the bytes of every
  local file or folder its dataset keys name, its members' fingerprints (a group), and lm-eval's
  version. A hub dataset is known by name and revision only (nothing is fetched here).
- A checkpoint's fingerprint is, per weight, config and tokenizer file: name, size, and a digest
  of its first MiB and of 16 strided 64 KiB samples (a training step changes every weight, so
  samples see a re-written folder; the whole 14 GB of a 7B model would take too long per poll).
  ``config.json`` counts without provenance keys, so a corrected token count relabels cells
  without recomputing them. A hub checkpoint is known by repo, revision and subfolder.

Tags (`ai2_arc`) are expanded here into their member tasks, each a cell; a group stays one cell
whose rows are its members' and its aggregate's. A task YAML named by path is loaded from that
path, never by its `task:` name (another file of the same name could shadow it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2lm_vllm.checkpoint import TOKENIZER_FILES, config_without_provenance
from e2lm_vllm.sweep.config import SweepConfigError, is_task_yaml_path

SAMPLE_BYTES = 64 * 1024
SAMPLES_PER_FILE = 16
HEAD_BYTES = 1024 * 1024
# A file this small is hashed whole.
WHOLE_FILE_BYTES = 8 * 1024 * 1024
# A dataset folder with more files than this is known by its listing and sizes only.
MAX_FOLDER_FILES = 2000
# The files of a checkpoint folder that change its numbers; optimizer and trainer state do not.
CHECKPOINT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
CHECKPOINT_SKIPPED_PREFIXES = ("optimizer", "scheduler", "rng_state", "training_args", "trainer_state")
CHECKPOINT_NAMED_FILES = (
    *TOKENIZER_FILES,
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)
# Dataset keys of a task config whose string values may name local files or folders.
DATASET_KEYS = ("dataset_path", "dataset_name", "dataset_kwargs", "custom_dataset")


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FileDigests:
    """Sampled digests of files, memoised by (path, size, mtime): a watcher polls the same folders again and again."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, int, int], str] = {}

    def file(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = _sampled_digest(path, stat.st_size)
        return found

    def folder(self, path: Path) -> str:
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if len(files) > MAX_FOLDER_FILES:
            return _digest([(str(p.relative_to(path)), p.stat().st_size) for p in files])
        return _digest([(str(p.relative_to(path)), self.file(p)) for p in files])


def _sampled_digest(path: Path, size: int) -> str:
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as handle:
        if size <= WHOLE_FILE_BYTES:
            digest.update(handle.read())
        else:
            digest.update(handle.read(HEAD_BYTES))
            stride = (size - HEAD_BYTES) // SAMPLES_PER_FILE
            for index in range(SAMPLES_PER_FILE):
                handle.seek(HEAD_BYTES + index * stride)
                digest.update(handle.read(SAMPLE_BYTES))
            handle.seek(max(0, size - SAMPLE_BYTES))
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


# --- checkpoints --------------------------------------------------------------------------------


def _is_checkpoint_file(path: Path) -> bool:
    name = path.name
    if name.startswith(".") or name.startswith(CHECKPOINT_SKIPPED_PREFIXES):
        return False
    return name in CHECKPOINT_NAMED_FILES or name.endswith(CHECKPOINT_FILE_SUFFIXES)


def _config_digest(path: Path, digests: FileDigests) -> Any:
    """config.json without provenance keys (a corrected token count relabels, it does not recompute)."""
    try:
        config = json.loads(path.read_text())
    except ValueError:
        return digests.file(path)  # not JSON: the worker reports it; its bytes still tell a change
    return config_without_provenance(config) if isinstance(config, dict) else config


def checkpoint_fingerprint(checkpoint: Any, digests: FileDigests) -> str:
    """Digest of what a checkpoint's numbers depend on (`Checkpoint` of `sweep.checkpoints`)."""
    if checkpoint.path is None:
        return _digest("hub", checkpoint.repo, checkpoint.revision, checkpoint.subfolder)
    folder = Path(checkpoint.path) / (checkpoint.subfolder or "")
    if not folder.is_dir():
        return _digest("missing", str(folder))
    parts = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and _is_checkpoint_file(p)):
        if path.name == "config.json":
            parts.append((path.name, _config_digest(path, digests)))
        else:
            parts.append((path.name, digests.file(path)))
    return _digest("local", parts)


# --- tasks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedTask:
    """One task of the sweep as a cell evaluates it."""

    name: str  # lm-eval's name: results and rows are keyed by it
    source: str  # what lm-eval loads: the name, or the YAML path the user gave
    fingerprint: str
    spec: str = ""  # the entry of `tasks:` it came from (a tag expands to several)


_DEFAULT_INDEX: dict[str, Any] | None = None


def _default_index() -> dict[str, Any]:
    """lm-eval's built-in tasks (seconds to index: docs/measurements.md#task-building): once per process,
    they change only with lm-eval."""
    global _DEFAULT_INDEX
    if _DEFAULT_INDEX is None:
        import lm_eval.tasks
        from lm_eval.tasks._index import TaskIndex

        _DEFAULT_INDEX = TaskIndex.build([Path(lm_eval.tasks.__file__).parent])
    return _DEFAULT_INDEX


@dataclass
class TaskResolver:
    """Resolves the sweep's `tasks:` against lm-eval's task index of the include paths (re-read at every
    plan, so a watcher sees edited and new YAMLs) and, when a name needs them, the built-in tasks."""

    include_paths: list[str]
    digests: FileDigests = field(default_factory=FileDigests)
    _index: dict[str, Any] | None = None

    def _entries(self, names: list[str]) -> dict[str, Any]:
        from lm_eval.tasks._index import TaskIndex

        if self._index is None:
            self._index = TaskIndex.build([Path(p) for p in self.include_paths])
        if any(name not in self._index for name in names):
            # The include paths override built-in tasks of the same name, as in lm-eval's TaskManager.
            self._index = {**_default_index(), **self._index}
        return self._index

    def resolve(self, specs: list[str]) -> list[ResolvedTask]:
        """The cells' tasks for the `tasks:` entries: tags expanded, paths kept, each with its fingerprint."""
        from lm_eval.tasks._index import Kind

        if len(set(specs)) != len(specs):
            raise SweepConfigError(f"tasks: expected each task once, got {specs}")
        self._index = None  # the include paths as they are now
        names = [spec for spec in specs if not is_task_yaml_path(spec)]
        index = self._entries(names)
        out: list[ResolvedTask] = []
        for spec in specs:
            if is_task_yaml_path(spec):
                out.append(self._resolve_path(spec))
                continue
            entry = index.get(spec)
            if entry is None:
                raise SweepConfigError(_unknown_task(spec, index))
            if entry.kind == Kind.TAG:
                members = sorted(entry.tags)
                if not members:
                    raise SweepConfigError(f"tasks: tag {spec!r} has no member tasks")
                for member in members:
                    out.append(ResolvedTask(member, member, self.fingerprint(member), spec))
                continue
            out.append(ResolvedTask(spec, spec, self.fingerprint(spec), spec))
        names = [task.name for task in out]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            origins = {name: [t.spec for t in out if t.name == name] for name in duplicates}
            raise SweepConfigError(f"tasks: expected each task once, got {', '.join(f'{n} (from {o})' for n, o in origins.items())}")
        return out

    def _resolve_path(self, spec: str) -> ResolvedTask:
        from lm_eval.tasks._yaml_loader import load_yaml

        path = Path(spec).expanduser()
        if not path.is_file():
            raise SweepConfigError(f"tasks: task YAML {spec} not found")
        try:
            config = load_yaml(path, resolve_func=False)
        except Exception as error:  # noqa: BLE001 - lm-eval's loader raises whatever the YAML meets
            raise SweepConfigError(f"tasks: {spec} is not an lm-eval task YAML: {error}") from error
        name = config.get("task") if "group" not in config else config.get("group")
        if not isinstance(name, str):
            raise SweepConfigError(f"tasks: {spec} has no `task:` name (expected an lm-eval task YAML)")
        return ResolvedTask(name, str(path.resolve()), self._fingerprint(config, path), spec)

    def fingerprint(self, name: str, _seen: frozenset[str] = frozenset()) -> str:
        """Fingerprint of a registered task, group or tag."""
        from lm_eval.tasks._index import Kind
        from lm_eval.tasks._yaml_loader import load_yaml

        index = self._entries([name])
        entry = index.get(name)
        if entry is None or name in _seen:
            return _digest("unresolved", name)
        if entry.kind == Kind.TAG:
            return _digest("tag", [(member, self.fingerprint(member, _seen | {name})) for member in sorted(entry.tags)])
        if entry.yaml_path is None:
            return _digest("inline", entry.cfg, _lm_eval_version())
        config = load_yaml(entry.yaml_path, resolve_func=False)
        return self._fingerprint(config, entry.yaml_path, _seen | {name})

    def _fingerprint(self, config: dict[str, Any], yaml_path: Path, seen: frozenset[str] = frozenset()) -> str:
        base = Path(yaml_path).resolve().parent
        hooks = sorted(set(_function_refs(config)))
        files: list[tuple[str, str]] = []
        for ref in hooks:
            module = _hook_module(ref)
            if module.is_file():
                files.append((module.name, self.digests.file(module)))
        folders = [base, *{Path(ref).parent for ref in hooks}]
        for text in _dataset_strings(config):
            for candidate in _candidates(text, folders):
                if candidate.is_file():
                    files.append((text, self.digests.file(candidate)))
                    break
                if candidate.is_dir():
                    files.append((text, self.digests.folder(candidate)))
                    break
        members: list[tuple[str, str]] = []
        task_field = config.get("task")
        if "group" in config and isinstance(task_field, list):
            for member in task_field:
                if isinstance(member, str):
                    members.append((member, self.fingerprint(member, seen)))
                elif isinstance(member, dict):
                    members.append((str(member.get("task")), _digest(_portable(member, base))))
        return _digest(_portable(config, base), files, members, _lm_eval_version())


def _unknown_task(name: str, index: dict[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(index), n=5)
    hint = f"; close names: {', '.join(close)}" if close else ""
    return f"tasks: {name!r} is not an lm-eval task, group or tag in the built-in tasks or the include paths{hint}"


def _function_refs(value: Any) -> list[str]:
    """`!function` references, which lm-eval's unresolving loader gives as 'BASE_DIR/module.function'."""
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in _function_refs(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in _function_refs(item)]
    if isinstance(value, str) and os.sep in value and "." in Path(value).name:
        if Path(value).is_absolute() and _hook_module(value).is_file():
            return [value]
    return []


def _hook_module(ref: str) -> Path:
    """The Python file of a `!function` reference 'BASE_DIR/module.function'."""
    return Path(ref).parent / (Path(ref).name.split(".")[0] + ".py")


def _portable(value: Any, base: Path) -> Any:
    """The config without the absolute folder it was read from (a Ray job reads it from a temporary copy)."""
    if isinstance(value, dict):
        return {key: _portable(item, base) for key, item in value.items()}
    if isinstance(value, list):
        return [_portable(item, base) for item in value]
    if isinstance(value, str) and os.sep in value and _function_refs(value):
        return Path(value).name
    return value


def _dataset_strings(config: dict[str, Any]) -> list[str]:
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for key in DATASET_KEYS:
        walk(config.get(key))
    return [text for text in found if text and len(text) < 4096 and "\n" not in text]


def _candidates(text: str, folders: list[Path]) -> list[Path]:
    path = Path(text).expanduser()
    if path.is_absolute():
        return [path]
    # lm-eval and `datasets` read relative paths from the working directory; hooks often from their own folder.
    return [Path.cwd() / path, *(folder / path for folder in folders)]


def _lm_eval_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        return None
