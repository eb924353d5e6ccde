"""The long-lived sweep worker, in this process on a real vLLM engine: swaps, their check, its caches.

Three tiny ladder rungs (SmolLM2's architecture, random weights) x the two tiny ARC tasks. A worker evaluates them in order: on rung 0 it
checks swapping first (fresh engines on rungs 1 and 0, then a swap to 1 and back, against the fresh
probes), then swaps to rungs 1 and 2. Rung 2's rows must equal those of a worker that built a
fresh engine on it. A worker whose swaps are broken on purpose must notice and fall back.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from e2lm_vllm.sweep.cells import build_plan
from e2lm_vllm.sweep.config import config_from_flags
from e2lm_vllm.sweep.types import UnitResult, WorkUnit
from e2lm_vllm.sweep.worker import PHASES, SweepWorker

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.usefixtures("engine_in_this_process")]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def units(tiny_ladder_dirs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> list[WorkUnit]:
    config = config_from_flags(
        checkpoints=[str(path) for path in tiny_ladder_dirs],
        tasks="sweep_arc_easy,sweep_arc_letter",
        include_path=[str(REPO / "tests" / "data" / "sweep_tasks")],
        limit=4,
        lm="e2lm_vllm",
        model_args={"dtype": "float32"},
        output=str(tmp_path_factory.mktemp("plan")),
    )
    plan = build_plan(config, Path(config.output))
    assert [unit.checkpoint.step for unit in plan.units] == [0, 1000, 2000]
    return plan.units


def _run(units: list[WorkUnit]) -> list[UnitResult]:
    worker = SweepWorker()
    try:
        return [worker.evaluate(unit) for unit in units]
    finally:
        worker.shutdown()


def _scores(result: UnitResult) -> dict[tuple[str, int], list[float]]:
    rows = [row for cell in result.cells for row in cell.samples]
    return {(row["task"], row["doc_id"]): row["choice_logprobs"] or [] for row in rows}


def _metrics(result: UnitResult) -> dict[tuple[str, str], float]:
    return {(row["task"], row["metric"]): row["value"] for cell in result.cells for row in cell.metrics}


@pytest.fixture(scope="module")
def fresh_last_rung(units: list[WorkUnit]) -> UnitResult:
    (result,) = _run([dataclasses.replace(units[-1], partner=None)])  # a lone checkpoint: no swap check
    assert result.engine == "built"
    return result


@pytest.fixture(scope="module")
def swept(units: list[WorkUnit]) -> list[UnitResult]:
    return _run(units)


def test_worker_checks_swaps_once_then_swaps(swept: list[UnitResult]) -> None:
    assert [result.engine for result in swept] == ["checked", "swapped", "swapped"]
    check = swept[0].swap_check
    assert check is not None and check["passed"] and check["max_difference"] == 0.0 and check["probes"] == 16
    assert len({result.pid for result in swept}) == 1
    first, _, swapped = (result.timings for result in swept)
    assert set(first) <= set(PHASES) and "imports" in first and "swap_check" in first
    assert "weight_swap" in swapped and "engine_build" not in swapped and "imports" not in swapped
    # Tasks, requests, tokens and plans were built for the first checkpoint and reused after.
    assert first["task_build"] > 0 and first["tokenize"] > 0
    assert swapped["task_build"] == 0 and swapped["tokenize"] == 0 and swapped["plan"] == 0
    assert all(cell.error is None for result in swept for cell in result.cells)


def test_swapped_weights_score_as_a_fresh_engine(swept: list[UnitResult], fresh_last_rung: UnitResult) -> None:
    swapped = swept[-1]
    assert _scores(swapped).keys() == _scores(fresh_last_rung).keys()
    for key, scores in _scores(fresh_last_rung).items():
        assert _scores(swapped)[key] == pytest.approx(scores, abs=1e-6), key
    assert _metrics(swapped) == pytest.approx(_metrics(fresh_last_rung), abs=1e-6)
    # The rungs differ, so equal scores are not the same weights scored twice.
    assert _scores(swept[0]) != _scores(swapped)


def test_swap_check_fails_when_the_tied_head_is_not_refreshed(
    units: list[WorkUnit], swept: list[UnitResult], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The defect that once made swaps 5.35 nats wrong: the tied lm_head keeps the old weights."""
    import e2lm_vllm.engine.vllm_engine

    monkeypatch.setattr(e2lm_vllm.engine.vllm_engine, "refresh_shared_modules", lambda model: [])
    results = _run(units[:2])
    assert [result.engine for result in results] == ["checked", "built"]
    check = results[0].swap_check
    assert check is not None and not check["passed"] and check["max_difference"] > 0.1
    assert "weight swaps are NOT exact on this machine" in caplog.text
    # The fallback is fresh engines, so the numbers stay right.
    for key, scores in _scores(swept[1]).items():
        assert _scores(results[1])[key] == pytest.approx(scores, abs=1e-6), key


def test_swap_check_fails_when_the_weights_are_not_swapped(units: list[WorkUnit], monkeypatch: pytest.MonkeyPatch) -> None:
    from e2lm_vllm.engine.vllm_engine import VLLMEngine

    monkeypatch.setattr(VLLMEngine, "swap_weights", lambda self, model_path: [])
    (result,) = _run(units[:1])
    assert result.engine == "checked" and result.swap_check is not None and not result.swap_check["passed"]
