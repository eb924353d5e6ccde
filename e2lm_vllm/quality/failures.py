"""Cells a sweep could not evaluate (`failures.parquet`), for the score table and the report.

A failed cell is absent from the metrics; without this a reader could not tell it from a
checkpoint that was never there.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def read_failures(results: str | Path) -> pd.DataFrame:
    """The failures of the sweep folder `results` (empty when it has none, or is not a sweep folder)."""
    path = Path(results)
    path = path / "failures.parquet" if path.is_dir() else path.with_name("failures.parquet")
    if not path.is_file():
        return pd.DataFrame(columns=["model", "checkpoint", "step", "task", "kind", "error"])
    failures = pd.read_parquet(path)
    if "kind" not in failures:  # tables written before failures had kinds
        failures["kind"] = "error"
    failures["kind"] = failures["kind"].fillna("error")
    return failures


def failure_line(failures: pd.DataFrame) -> str | None:
    """One line: how many cells failed, by kind; None when none did."""
    if failures.empty:
        return None
    kinds = ", ".join(f"{kind}: {count}" for kind, count in failures["kind"].value_counts().sort_index().items())
    return f"Failed cells (not in the scores above): {len(failures)} ({kinds}); see failures.parquet"


def failure_rows(failures: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the report's failures table: one row per failed cell, its error's last line."""
    rows = [
        [str(row.model), str(row.step), str(row.task), str(row.kind), (str(row.error).strip().splitlines() or ["?"])[-1][:160]]
        for row in failures.sort_values(["kind", "model", "step", "task"]).itertuples()
    ]
    return ["model", "step", "task", "kind", "error"], rows
