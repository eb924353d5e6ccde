"""What a curriculum task folder holds: its names, the manifest, and the item table.

Shared by the writer (which writes the folder) and the validator (which reads it back), so neither
imports the other for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from e2lm_vllm.atomic import write_text_atomic

DEFAULT_NAME = "mmlu_curriculum"
MANIFEST_NAME = "curriculum.json"
DATA_DIR = "data"


class TierEntry(BaseModel):
    name: str
    subjects: list[str]
    n_items: int


class Manifest(BaseModel):
    """What a task folder holds and how it was built; the submission re-renders the YAML from it."""

    name: str = DEFAULT_NAME
    tiers: list[TierEntry]
    n_items: int
    data_dir: str = DATA_DIR
    dataset_path: str = Field(description="what the YAML passes to load_dataset: the data folder or an HF id")
    hold_out: str = ""
    build: dict[str, Any] = Field(default_factory=dict, description="inputs, thresholds, counts")

    @property
    def template_file(self) -> str:
        return f"_{self.name}_template_yaml"

    @property
    def subjects(self) -> list[str]:
        return [subject for tier in self.tiers for subject in tier.subjects]

    @classmethod
    def read(cls, task_dir: str | Path) -> Manifest:
        path = Path(task_dir) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: expected a task folder written by `e2lm-vllm curriculum build`")
        return cls.model_validate_json(path.read_text(encoding="utf-8"))

    def write(self, task_dir: Path) -> None:
        write_text_atomic(task_dir / MANIFEST_NAME, self.model_dump_json(indent=1) + "\n")


def read_items(data_dir: str | Path, name: str | None = None) -> pd.DataFrame:
    """The full item table of a dataset folder."""
    data_dir = Path(data_dir)
    files = [data_dir / f"{name}.parquet"] if name else sorted(data_dir.glob("*.parquet"))
    if not files or not files[0].is_file():
        raise FileNotFoundError(f"no <name>.parquet in {data_dir}: expected the dataset written by `curriculum build`")
    return pq.read_table(files[0]).to_pandas()


