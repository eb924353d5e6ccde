"""The sweep worker: one per device, alive for the whole sweep, evaluating checkpoint after checkpoint.

Starting an engine costs far more than its weights and KV cache: most of it is processes importing
torch and vLLM (docs/measurements.md#engine-start). So a `SweepWorker` (a Ray actor per GPU, or per
CPU slot) imports once and keeps its engine in its own process: between checkpoints of one family
(same engine settings, architecture, dtype and tokenizer) it only swaps the weights
(`E2LMVLLM.load_checkpoint`, docs/measurements.md#weight-swaps); a checkpoint of another family gets
a new lm. lm-eval's tasks and requests are built
once (`taskcache`), tokens and plans once per lm.

Before its first swap, each worker checks that swaps are exact against fresh engines
(`SweepWorker._check_swap`, `swapcheck`); if not, it warns once and builds a fresh engine per
checkpoint from then on, as when the neighbouring checkpoint it checks against cannot serve as
reference (does not load, or scores NaN): never a failure of the checkpoint under test. A swap that fails midway (a corrupt checkpoint) drops the engine, whose weights are then
half old, half new, and the error goes to the driver, which retries the checkpoint.

`SweepWorker.evaluate` *returns* its rows; it writes nothing, so a worker on another node needs
no shared filesystem and a killed worker leaves nothing for a retry to duplicate.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import socket
import time
import traceback
from typing import Any

from e2lm_vllm.sweep.checkpoints import Checkpoint
from e2lm_vllm.sweep.rows import NoMetricsError, check_cell_results, request_count, sample_rows, subtask_names, versions
from e2lm_vllm.sweep.swapcheck import SwapCheck, compare, probe_scores
from e2lm_vllm.sweep.taskcache import TaskCache, TaskKey, evaluate
from e2lm_vllm.sweep.types import Cell, CellResult, UnitResult, WorkUnit

log = logging.getLogger("e2lm_vllm.sweep.worker")

# The phases of a checkpoint's wall time, in the order they happen (`UnitResult.timings`).
PHASES = (
    "imports",  # lm-eval, torch and vLLM: the first checkpoint of a worker only
    "engine_build",
    "weight_swap",
    "swap_check",  # a fresh engine and probes: the first swap of a worker only
    "task_build",  # lm-eval tasks and requests: the first checkpoint of each task set only
    "tokenize",
    "plan",
    "scoring",  # the engine's own time (for lm-eval's HF model: its whole evaluation)
    "lm_eval",  # lm-eval around the model: filters, metrics, our rows
)


def failure_kind(error: BaseException) -> str:
    """``non_finite`` for NaN/inf weights or scores (a result about the checkpoint: retrying repeats it), else ``error``."""
    cause = getattr(error, "cause", None) or error  # Ray wraps a worker's exception
    return getattr(cause, "kind", None) or getattr(error, "kind", None) or "error"


def backend_of(lm: Any) -> str:
    from e2lm_vllm.lm import E2LMVLLM

    return "vllm" if isinstance(lm, E2LMVLLM) else "hf"


def _swappable_lm(unit: WorkUnit) -> bool:
    """Our lm on vLLM (not lm-eval's HF model, nor ours on ``backend=hf``): weights can be swapped."""
    from e2lm_vllm.lm import resolve_backend

    return unit.lm == "e2lm_vllm" and resolve_backend(unit.settings) == "vllm"


def _swapped_probe_scores(lm: Any) -> list[float]:
    """Probe scores of a swapped engine; NaN where it scores non-finite (both fresh engines scored
    finite, so that is the swap's fault: the check fails, never the checkpoint under test)."""
    from e2lm_vllm.checkpoint import NonFiniteError
    from e2lm_vllm.sweep.swapcheck import PROBE_TEXTS

    try:
        return probe_scores(lm)
    except NonFiniteError:
        return [math.nan] * (2 * len(PROBE_TEXTS))


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def configure_worker_process() -> None:
    """Logging and threads of a process that Ray started for a worker."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    # Ray sets OMP_NUM_THREADS=1 unless the task's runtime_env says otherwise; torch follows it.
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        import torch

        torch.set_num_threads(int(threads))


class SweepWorker:
    """Evaluates work units one after the other, reusing its engine, tasks and plans."""

    def __init__(self) -> None:
        started = time.perf_counter()
        import lm_eval  # noqa: F401 - once per worker, measured apart from any checkpoint

        from e2lm_vllm.lm import vllm_importable

        vllm_importable()  # imports vLLM (and torch) when present
        self.import_seconds = time.perf_counter() - started
        self.lm: Any = None
        self.lm_key: str | None = None
        self.tasks = TaskCache()
        self.swap_check: SwapCheck | None = None
        self.units = 0

    # -- engine lifecycle --------------------------------------------------------------------------

    def _drop_lm(self) -> None:
        lm = self.lm
        self.lm, self.lm_key = None, None
        if backend_of(lm) == "vllm":
            lm.shutdown()
        del lm
        gc.collect()

    def _build(self, unit: WorkUnit, checkpoint: Checkpoint | None = None) -> None:
        """A new lm for `unit`'s checkpoint (or `checkpoint`, its partner), from its validated settings."""
        from e2lm_vllm.lm import build_lm

        self._drop_lm()
        self.lm = build_lm(unit.model_args(checkpoint), unit.lm)
        self.lm_key = unit.engine_key

    def _swaps_allowed(self) -> bool:
        return self.swap_check is not None and self.swap_check.passed

    def _load(self, unit: WorkUnit, timings: dict[str, float]) -> str:
        """Put `unit`'s checkpoint into an lm: swap the weights when the family allows, else build."""
        from e2lm_vllm.checkpoint import CheckpointMismatchError

        started = time.perf_counter()
        if self.swap_check is None and unit.partner is not None and _swappable_lm(unit):
            if self._check_swap(unit):
                timings["swap_check"] = time.perf_counter() - started
                return "checked"
        swappable = self.lm is not None and self.lm_key == unit.engine_key and backend_of(self.lm) == "vllm"
        if swappable and self._swaps_allowed():
            try:
                refreshed = self.lm.load_checkpoint(**unit.checkpoint.model_args())
            except CheckpointMismatchError as error:
                log.info("%s: %s", unit.label, error)
            except Exception:
                self._drop_lm()  # its weights are half swapped
                raise
            else:
                timings["weight_swap"] = time.perf_counter() - started
                log.info("%s: weights swapped in %.2f s (refreshed %s)", unit.label, timings["weight_swap"], refreshed)
                return "swapped"
        self._build(unit)
        timings["engine_build"] = time.perf_counter() - started
        return "built"

    def _check_swap(self, unit: WorkUnit) -> bool:
        """Are weight swaps exact here? Checked once per worker, before it relies on them.

        Fresh engines on a neighbouring checkpoint P and on `unit`'s checkpoint A give reference
        probe scores; the engine on A is then swapped to P and back to A, and both must score as
        the fresh engines did. Swapping *into* a checkpoint the engine was not built on is what
        exposes derived state a swap forgot (a stale tied head keeps the weights the engine was
        built with: a round trip alone would hide it). Leaves a fresh or verified engine on A.
        Returns False when P turns out not to be swappable with A (the check waits for a later unit),
        or cannot serve as reference (P does not load, or scores NaN: a diverged neighbour). P's
        failure is never A's: no check then, fresh engines from then on, and A proceeds.
        """
        from e2lm_vllm.checkpoint import CheckpointMismatchError

        assert unit.partner is not None
        partner = unit.partner.subfolder or unit.partner.revision or unit.partner.path or unit.partner.repo
        try:
            self._build(unit, unit.partner)
            partner_fresh = probe_scores(self.lm)
        except Exception as error:  # noqa: BLE001 - the neighbour is not this unit: its failure is never this unit's
            # A neighbour that does not load or scores NaN (diverged) is no reference: no swap check,
            # fresh engines from now on, and this unit proceeds (its own checks still apply).
            reason = f"{type(error).__name__}: {error}"
            self.swap_check = SwapCheck(checkpoint=str(partner), probes=0, max_difference=None, skipped=reason)
            log.warning(
                "%s: no swap check: the neighbouring checkpoint %s cannot serve as reference (%s); this worker "
                "starts a fresh engine for every checkpoint instead",
                unit.label, partner, reason,
            )  # fmt: skip
            self._drop_lm()
            return False
        self._build(unit)
        fresh = probe_scores(self.lm)
        try:
            self.lm.load_checkpoint(**unit.partner.model_args())
        except CheckpointMismatchError as error:
            log.info("%s: swap check postponed: %s", unit.label, error)
            self._build(unit)
            return False
        swapped_to_partner = _swapped_probe_scores(self.lm)
        self.lm.load_checkpoint(**unit.checkpoint.model_args())
        swapped_back = _swapped_probe_scores(self.lm)
        self.swap_check = compare(str(partner), swapped_to_partner + swapped_back, partner_fresh + fresh)
        if self.swap_check.passed:
            log.info(
                "%s: weight swaps verified against fresh engines (max |diff| %.3g nats)",
                unit.label,
                self.swap_check.max_difference,
            )
            return True
        log.warning(
            "weight swaps are NOT exact on this machine: a swap to %s scored the probes up to %.3g nats away from "
            "a fresh engine; this worker starts a fresh engine for every checkpoint instead",
            partner,
            self.swap_check.max_difference,
        )
        self._build(unit)
        return True

    # -- evaluation --------------------------------------------------------------------------------

    def _cell_result(self, cell: Cell, results: dict[str, Any], seconds: float) -> CellResult:
        from e2lm_vllm.checkpoint import NonFiniteError

        try:
            metrics = check_cell_results(results, cell.task.name)
        except (NonFiniteError, NoMetricsError) as error:  # a cell without trustworthy numbers is a failure, never 'done'
            log.error("%s: %s", cell.task.name, error)
            return CellResult(key=cell.key, error=f"{type(error).__name__}: {error}", error_kind=failure_kind(error), eval_seconds=seconds)
        samples = results.get("samples", {})
        rows = [row for name in subtask_names(results, cell.task.name) for row in sample_rows(self.lm, name, samples.get(name, []))]
        return CellResult(key=cell.key, metrics=metrics, samples=rows, eval_seconds=seconds)

    def _run(self, unit: WorkUnit, cells: list[Cell]) -> tuple[dict[str, Any], float, float]:
        """lm-eval's results for `cells`; evaluation seconds and the part of them spent building tasks."""
        # A task YAML named by path is loaded from that path (`CellTask.source`), never by its name.
        sources = tuple(cell.task.source or cell.task.name for cell in cells)
        key = TaskKey(tuple(unit.include_paths), sources, cells[0].task.num_fewshot, cells[0].task.limit)
        started = time.perf_counter()
        build_before = self.tasks.build_seconds
        results = evaluate(self.lm, key, self.tasks)
        return results, time.perf_counter() - started, self.tasks.build_seconds - build_before

    def _evaluate_cells(self, unit: WorkUnit, timings: dict[str, float]) -> list[CellResult]:
        # One lm-eval run per (few-shot, limit) setting: lm-eval takes one of each per call.
        groups: dict[tuple[Any, Any], list[Cell]] = {}
        for cell in unit.cells:
            groups.setdefault((cell.task.num_fewshot, cell.task.limit), []).append(cell)
        out: list[CellResult] = []
        for cells in groups.values():
            names = ", ".join(cell.task.name for cell in cells)
            log.info("%s: evaluating %s", unit.label, names)
            try:
                results, seconds, build = self._run(unit, cells)
            except Exception as error:  # noqa: BLE001 - one bad task must not sink its neighbours: retry one by one
                if len(cells) == 1:
                    out.append(CellResult(key=cells[0].key, error=traceback.format_exc(limit=8), error_kind=failure_kind(error)))
                    log.error("%s: %s failed:\n%s", unit.label, names, out[-1].error)
                    continue
                log.warning("%s: evaluating %s together failed; evaluating one by one", unit.label, names)
                for cell in cells:
                    try:
                        results, seconds, build = self._run(unit, [cell])
                        out.append(self._cell_result(cell, results, seconds))
                        timings["task_build"] = timings.get("task_build", 0.0) + build
                    except Exception as cell_error:  # noqa: BLE001
                        out.append(CellResult(key=cell.key, error=traceback.format_exc(limit=8), error_kind=failure_kind(cell_error)))
                        log.error("%s: %s failed:\n%s", unit.label, cell.task.name, out[-1].error)
                continue
            timings["task_build"] = timings.get("task_build", 0.0) + build
            # lm-eval batches all tasks' requests together; charge each task its share of requests.
            counts = [request_count(results.get("samples", {}), subtask_names(results, c.task.name)) for c in cells]
            total = sum(counts) or 1
            for cell, count in zip(cells, counts):
                out.append(self._cell_result(cell, results, seconds * count / total))
                log.info("%s: %s done", unit.label, cell.task.name)
        return out

    def evaluate(self, unit: WorkUnit) -> UnitResult:
        """Load the checkpoint (swap or build), evaluate its missing tasks, return the rows."""
        wall_started = time.perf_counter()
        timings: dict[str, float] = {"imports": self.import_seconds} if self.units == 0 else {}
        self.units += 1
        pid = os.getpid()
        tasks = ",".join(cell.task.name for cell in unit.cells)
        # The sweep tests find the worker to kill through this line.
        log.info("worker pid=%d loading %s (%s) for tasks %s", pid, unit.label, unit.checkpoint.id, tasks)
        engine = self._load(unit, timings)
        engine_seconds = time.perf_counter() - wall_started
        log.info("worker pid=%d %s %s in %.1f s", pid, engine, unit.label, engine_seconds)
        on_vllm = backend_of(self.lm) == "vllm"
        lm_before = dict(self.lm.timings) if on_vllm else {}
        evaluation_started = time.perf_counter()
        cells = self._evaluate_cells(unit, timings)
        evaluation = time.perf_counter() - evaluation_started
        if on_vllm:
            for phase, name in (("tokenize", "tokenize"), ("plan", "plan"), ("scoring", "engine")):
                timings[phase] = self.lm.timings.get(name, 0.0) - lm_before.get(name, 0.0)
        else:
            timings["scoring"] = evaluation - timings.get("task_build", 0.0)
        inner = sum(timings.get(phase, 0.0) for phase in ("task_build", "tokenize", "plan", "scoring"))
        timings["lm_eval"] = max(0.0, evaluation - inner)
        return UnitResult(
            label=unit.label,
            cells=cells,
            engine_seconds=engine_seconds,
            backend=backend_of(self.lm),
            versions=versions(),
            pid=pid,
            host=socket.gethostname(),
            engine=engine,
            timings={phase: round(timings[phase], 4) for phase in PHASES if phase in timings},
            swap_check=self.swap_check.as_dict() if engine == "checked" and self.swap_check else None,
            rss_bytes=_rss(),
        )

    def shutdown(self) -> None:
        self._drop_lm()


class RaySweepWorker(SweepWorker):
    """The Ray actor: a `SweepWorker` in a process of its own."""

    def __init__(self) -> None:
        configure_worker_process()
        super().__init__()


def evaluate_unit(unit: WorkUnit) -> UnitResult:
    """One checkpoint in a worker of its own (`worker_lifetime: checkpoint`, the design before long-lived workers)."""
    configure_worker_process()
    worker = SweepWorker()
    try:
        return worker.evaluate(dataclasses.replace(unit, partner=None))  # never swaps: nothing to check
    finally:
        worker.shutdown()
