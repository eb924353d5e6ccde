"""Which engine scored each cell (the ``backend`` column of ``metrics.parquet``), and when to say so.

``e2lm_vllm`` records ``"vllm"``; ``"hf"`` is lm-eval's HF model. Scores of the two are close but
not equal (two implementations of the model), so a curve whose cells mix backends can jump where
the backend changes, and an ``hf`` cell in a sweep that asked for ``e2lm_vllm`` is worth knowing
about. The report and ``score`` say so in one line whenever more than one backend appears or any
is ``hf``; only the column is seen, not what the run asked for.
"""

from __future__ import annotations

import pandas as pd

CELL_KEY = ["model", "step", "task"]
HF_BACKEND = "hf"


def backend_counts(table: pd.DataFrame) -> dict[str, int]:
    """Cells (model, step, task) per recorded backend, ``hf`` first; empty when the table has no backend column.

    Rows without a backend (the metrics derived from samples, tables written before the column)
    are not counted.
    """
    if "backend" not in table:
        return {}
    rows = table.dropna(subset=["backend"])
    cells = rows.drop_duplicates([*CELL_KEY, "backend"])["backend"].astype(str).value_counts()
    return {name: int(cells[name]) for name in sorted(cells.index, key=lambda name: (name != HF_BACKEND, name))}


def backend_line(counts: dict[str, int]) -> str | None:
    """``backend: hf for 3 cells, vllm for 9 cells. ...`` when backends mix or any is hf; else None."""
    if len(counts) <= 1 and HF_BACKEND not in counts:
        return None
    parts = ", ".join(f"{name} for {count} cell{'s' if count != 1 else ''}" for name, count in counts.items())
    if len(counts) > 1:
        why = "scores of different backends differ slightly, so a curve may jump where its backend changes"
    else:
        why = "every cell was scored by lm-eval's HF model, not by e2lm_vllm's vLLM engine"
    return f"backend: {parts} ({why})."
