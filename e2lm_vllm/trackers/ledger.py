"""``OUTPUT/trackers.json``: per tracker target and model family, the run id and what the run already holds.

A restarted sweep, watcher or ``e2lm-vllm log`` reads it to continue the same run and to log only
cells it lacks (a cell is logged again only when its fingerprint, the ``config_hash``, changed).
Written atomically after each successful push, so a crash loses at most what was being logged,
which the next push logs again. It holds run ids, cell keys and fingerprints, never a credential (an
MLflow URI's password is left out of its target key, ``spec.TrackerSpec.key``), so it has the mode of
the results beside it (the umask's), readable by whoever reads them.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2lm_vllm.atomic import write_text_atomic

LEDGER_FILE = "trackers.json"
# One background thread per target (push.TrackerPush) saves its runs into the same file: one
# read-modify-write at a time, or a target's save would drop another's.
_SAVING = threading.Lock()


@dataclass(frozen=True)
class Ledger:
    path: Path

    @classmethod
    def of(cls, output: Path) -> Ledger:
        return cls(Path(output) / LEDGER_FILE)

    def read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"version": 1, "runs": {}}
        return json.loads(self.path.read_text())

    def run(self, target: str, model: str) -> dict[str, Any]:
        """The record of one run: ``run_id``, ``cells`` (key -> fingerprint), ``failures``, ``scores``."""
        record = self.read()["runs"].get(target, {}).get(model, {})
        return {"run_id": None, "cells": {}, "failures": [], "scores": None, **record}

    def save_run(self, target: str, model: str, record: dict[str, Any]) -> None:
        with _SAVING:
            data = self.read()
            data["runs"].setdefault(target, {})[model] = record
            write_text_atomic(self.path, json.dumps(data, indent=1, sort_keys=True))
