"""The one interface every tracker implements, and what it is given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from e2lm_vllm.trackers.points import CheckpointPoint, FailureNote


@dataclass(frozen=True)
class RunIdentity:
    """Which run to open: ``run_id`` from the ledger to continue one, None to start one."""

    model: str  # the model family: one tracker run per family
    name: str  # the run's display name
    run_id: str | None
    output: Path  # the sweep's output folder (W&B keeps its offline files there)


@dataclass(frozen=True)
class ScoresSnapshot:
    """The benchmark-quality scores of the results so far (``e2lm-vllm score``) and the report's plots."""

    tasks: pd.DataFrame  # one row per task and metric: the `score` table
    text: str  # score.txt as `e2lm-vllm score` prints it
    scores: dict[str, Any]  # scores.json
    images: tuple[Path, ...]  # the report's PNGs
    step: int  # the last step in the results: where a step-keyed tracker puts them
    digest: str  # changes when the scores do: the same scores are not logged twice
    folder: Path | None = None  # where the plots were drawn; removed once every tracker has them


class Tracker(Protocol):
    run_id: str

    def log_checkpoint(self, point: CheckpointPoint) -> None: ...

    def log_failures(self, notes: list[FailureNote]) -> None: ...

    def log_scores(self, scores: ScoresSnapshot) -> None: ...

    def close(self) -> None: ...
