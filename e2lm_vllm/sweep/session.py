"""What a watched sweep (`e2lm_vllm.sweep.watch.follow`) drives: a session of the driver, as a protocol.

`e2lm_vllm.sweep.runner.SweepSession` is one; the runner calls the watcher, so the watcher names the
session by this protocol instead of importing the runner (no runner <-> watch cycle).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from e2lm_vllm.sweep.cells import Plan
    from e2lm_vllm.sweep.checkpoints import Completeness
    from e2lm_vllm.sweep.types import WorkUnit


class Session(Protocol):
    """One run of the driver: its output folder, its failures so far, its stop flag and its summary."""

    output: Path
    failures: list[dict[str, Any]]
    stop: threading.Event
    summary: Any  # `runner.SweepSummary`: the watcher sets its `stopped_by`

    def plan(self, force: bool = False, completeness: Completeness | None = None) -> Plan:
        """The cells as the checkpoint sources are now; cells that failed in this run are not planned again."""
        ...

    def evaluate(self, plan: Plan, after_unit: Callable[[WorkUnit], None] | None = None) -> None: ...

    def write_tables(self, plan: Plan) -> None: ...

    def end_round(self) -> None:
        """After a sweep or a watch round: the trackers (`log_to`) get what they lack, then the scores."""
        ...
