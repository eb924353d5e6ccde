"""The curriculum on disk: a dataset folder (Parquet, JSONL, HF dataset card) and pure-YAML lm-eval tasks.

Layout of a task folder (``tasks/mmlu_curriculum/``)::

    curriculum.json                    manifest: tiers, subjects, how it was built
    <name>.yaml                        group <name>: the tier groups, acc/acc_norm weighted by size
    <name>_<tier>.yaml                 group <name>_<tier>: its subject tasks
    <name>_<subject>.yaml              one task per subject (include + dataset_name + description)
    _<name>_template_yaml              shared task settings: cloze prompt, choices, metrics
    data/                              an HF dataset repository, ready to upload as it is:
      README.md                        dataset card: one config per subject, plus "all"
      <name>.parquet, <name>.jsonl     every item: subject, tier, question, choices, answer, difficulty
      subjects/<subject>.parquet       the items of one subject (what a subject's config loads)
      LICENSE, SOURCE.md               MMLU's MIT licence and where the items come from

Two places for the data, same YAML otherwise (``dataset_path`` is the only difference):

- local: ``dataset_path`` is the data folder (relative to the repo root in the committed copy, where
  the demo runs lm-eval; :func:`local_include_path` writes an absolute-path copy usable anywhere);
- hub: ``dataset_path`` is the HF dataset id the user uploaded ``data/`` to (the competition
  requires the dataset on the Hub). ``datasets.load_dataset(path, subject)`` reads the card's
  configs the same way from a local folder and from the Hub, so the local variant tests the
  hub variant's layout.

The prompt is lm-eval's ``mmlu_continuation`` format (the one the difficulty was measured on):
description ``The following are questions (with answers) about <subject>.`` and
``Question: ...\\nAnswer:``; each choice's full text is scored, no letters.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, Field

from e2lm_vllm.curriculum.validate import PromptFormat

DEFAULT_NAME = "mmlu_curriculum"
MANIFEST_NAME = "curriculum.json"
DATA_DIR = "data"
DOC_TO_TEXT = "Question: {{question.strip()}}\nAnswer:"
REPO_ROOT = Path(__file__).resolve().parents[2]

# Columns of the dataset, in order: what lm-eval reads first, then where it sits and why.
DOC_COLUMNS = ["question", "subject", "choices", "answer"]
INFO_COLUMNS = ["tier", "tier_name", "doc_id"]
STAT_COLUMNS = ["acc_last", "margin_first", "margin_last", "margin_rise", "slope", "rho", "learned_step", "max_request_tokens"]

MMLU_LICENSE = """MIT License

Copyright (c) 2020 Dan Hendrycks

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


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
        _write_text(task_dir / MANIFEST_NAME, self.model_dump_json(indent=1) + "\n")


def subject_title(subject: str) -> str:
    return subject.replace("_", " ")


def prompt_format(subject: str) -> PromptFormat:
    """The exact prompt of a subject task (lm-eval's mmlu_continuation)."""
    return PromptFormat(doc_to_text=DOC_TO_TEXT, description=_description(subject))


def _description(subject: str) -> str:
    return f"The following are questions (with answers) about {subject_title(subject)}.\n\n"


# --------------------------------------------------------------------------- YAML


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if "\n" in value else None)


_Dumper.add_representer(str, _represent_str)


def _yaml(config: dict[str, Any]) -> str:
    header = "# Generated by `e2lm-vllm curriculum build`; rebuild rather than edit.\n"
    return header + yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)


def _aggregate() -> list[dict[str, Any]]:
    return [
        {"metric": "acc", "aggregation": "mean", "weight_by_size": True},
        {"metric": "acc_norm", "aggregation": "mean", "weight_by_size": True},
    ]


def task_yamls(manifest: Manifest, dataset_path: str | None = None, name: str | None = None) -> dict[str, str]:
    """File name -> YAML text of every task file; ``dataset_path``/``name`` override the manifest's."""
    name = name or manifest.name
    dataset_path = dataset_path or manifest.dataset_path
    template = f"_{name}_template_yaml"
    files = {
        template: _yaml(
            {
                "dataset_path": dataset_path,
                "output_type": "multiple_choice",
                "test_split": "test",
                "doc_to_text": DOC_TO_TEXT,
                "doc_to_choice": "{{choices}}",
                "doc_to_target": "{{answer}}",
                "metric_list": [
                    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
                ],
                "metadata": {"version": 1.0},
            }
        ),
        f"{name}.yaml": _yaml(
            {
                "group": name,
                "group_alias": name,
                "task": [f"{name}_{tier.name}" for tier in manifest.tiers],
                "aggregate_metric_list": _aggregate(),
                "metadata": {"version": 1.0},
            }
        ),
    }
    for number, tier in enumerate(manifest.tiers, start=1):
        files[f"{name}_{tier.name}.yaml"] = _yaml(
            {
                "group": f"{name}_{tier.name}",
                "group_alias": f"tier {number}: {tier.name}",
                "task": [f"{name}_{subject}" for subject in tier.subjects],
                "aggregate_metric_list": _aggregate(),
                "metadata": {"version": 1.0},
            }
        )
        for subject in tier.subjects:
            files[f"{name}_{subject}.yaml"] = _yaml(
                {
                    "include": template,
                    "task": f"{name}_{subject}",
                    "task_alias": subject_title(subject),
                    "dataset_name": subject,
                    "description": _description(subject),
                }
            )
    return files


# --------------------------------------------------------------------------- dataset


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return value


def _jsonl(frame: pd.DataFrame) -> str:
    lines = []
    for record in frame.to_dict(orient="records"):
        lines.append(json.dumps({key: _json_value(value) for key, value in record.items()}, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def dataset_card(manifest: Manifest) -> str:
    configs = [{"config_name": "all", "data_files": [{"split": "test", "path": f"{manifest.name}.parquet"}]}]
    for subject in sorted(manifest.subjects):
        configs.append({"config_name": subject, "data_files": [{"split": "test", "path": f"subjects/{subject}.parquet"}]})
    header = yaml.dump(
        {"license": "mit", "language": ["en"], "task_categories": ["multiple-choice"], "pretty_name": manifest.name, "configs": configs},
        sort_keys=False,
        width=1000,
    )
    tiers = "\n".join(f"| {i} | {t.name} | {t.n_items} | {', '.join(t.subjects)} |" for i, t in enumerate(manifest.tiers, 1))
    return (
        f"---\n{header}---\n\n# {manifest.name}\n\n"
        f"{manifest.n_items} MMLU test questions (Hendrycks et al., MIT licence) selected and ordered by how small "
        "language-model checkpoints learn them, for evaluating models early in training. "
        "Built by `e2lm-vllm curriculum build` (e2lm-vllm, docs/curriculum.md).\n\n"
        "Config `all` holds every item with its difficulty statistics (also as JSON lines in "
        f"`{manifest.name}.jsonl`); one config per subject holds that subject's items (what the lm-eval tasks load).\n\n"
        f"Hold-out: {manifest.hold_out}\n\n| tier | name | items | subjects |\n|---|---|---|---|\n{tiers}\n"
    )


def write_dataset(curriculum: pd.DataFrame, data_dir: Path, manifest: Manifest) -> None:
    """Every file of the dataset folder (see the module docstring)."""
    columns = DOC_COLUMNS + INFO_COLUMNS + [c for c in STAT_COLUMNS if c in curriculum]
    table = curriculum[columns].reset_index(drop=True)
    staging = Path(tempfile.mkdtemp(prefix=".data-", dir=data_dir.parent))
    try:
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), staging / f"{manifest.name}.parquet")
        (staging / f"{manifest.name}.jsonl").write_text(_jsonl(table), encoding="utf-8")
        (staging / "subjects").mkdir()
        for subject, part in table.groupby("subject", sort=True):
            pq.write_table(pa.Table.from_pandas(part, preserve_index=False), staging / "subjects" / f"{subject}.parquet")
        (staging / "README.md").write_text(dataset_card(manifest), encoding="utf-8")
        (staging / "LICENSE").write_text(MMLU_LICENSE, encoding="utf-8")
        (staging / "SOURCE.md").write_text(_source_note(manifest), encoding="utf-8")
        if data_dir.exists():
            shutil.rmtree(data_dir)
        os.replace(staging, data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _source_note(manifest: Manifest) -> str:
    return (
        "# Source\n\n"
        "Items: MMLU test split (Hendrycks et al., 'Measuring Massive Multitask Language Understanding', "
        "ICLR 2021; github.com/hendrycks/test, HF `cais/mmlu`), MIT licence (LICENSE beside this file). "
        "Question, choices and answer are copied verbatim; `doc_id` is the item's row index in "
        "`<subject>_test.csv` / `cais/mmlu` test.\n\n"
        "Selection and tiers: `e2lm-vllm curriculum build` from per-sample results of small-model checkpoints; "
        f"{manifest.hold_out}. Inputs and thresholds: `curriculum.json` in the task folder.\n"
    )


def read_items(data_dir: str | Path, name: str | None = None) -> pd.DataFrame:
    """The full item table of a dataset folder."""
    data_dir = Path(data_dir)
    files = [data_dir / f"{name}.parquet"] if name else sorted(data_dir.glob("*.parquet"))
    if not files or not files[0].is_file():
        raise FileNotFoundError(f"no <name>.parquet in {data_dir}: expected the dataset written by `curriculum build`")
    return pq.read_table(files[0]).to_pandas()


def write_task(curriculum: pd.DataFrame, task_dir: str | Path, manifest: Manifest) -> list[Path]:
    """Dataset folder, YAML files and manifest; stale YAML of an earlier build is removed."""
    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    write_dataset(curriculum, task_dir / manifest.data_dir, manifest)
    files = task_yamls(manifest)
    for old in task_dir.iterdir():
        if old.is_file() and (old.suffix == ".yaml" or old.name.endswith("_yaml")) and old.name not in files:
            old.unlink()
    written = []
    for file_name, text in files.items():
        _write_text(task_dir / file_name, text)
        written.append(task_dir / file_name)
    manifest.write(task_dir)
    return written


def local_include_path(task_dir: str | Path = REPO_ROOT / "tasks" / DEFAULT_NAME, cache: str | Path | None = None) -> str:
    """A copy of a task folder's YAML with the data folder as an absolute path: runs from any cwd."""
    task_dir = Path(task_dir).resolve()
    manifest = Manifest.read(task_dir)
    data = (task_dir / manifest.data_dir).resolve()
    files = task_yamls(manifest, dataset_path=str(data))
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache or os.environ.get("E2LM_TASKS_CACHE") or REPO_ROOT / ".cache" / "e2lm_tasks")
    out = root / f"{manifest.name}-{digest}"
    if not (out / MANIFEST_NAME).is_file():
        out.mkdir(parents=True, exist_ok=True)
        for file_name, text in files.items():
            _write_text(out / file_name, text)
        manifest.model_copy(update={"dataset_path": str(data), "data_dir": str(data)}).write(out)
    return str(out)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
