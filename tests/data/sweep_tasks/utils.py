"""Loaders for the tiny sweep test tasks: ARC JSONL beside this file, in the HF `ai2_arc` layout."""

from __future__ import annotations

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def _arc_rows(file_name: str) -> list[dict]:
    rows = []
    for line in (HERE / file_name).read_text().splitlines():
        item = json.loads(line)
        choices = item["question"]["choices"]
        rows.append(
            {
                "id": item["id"],
                "question": item["question"]["stem"],
                "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
                "answerKey": item["answerKey"],
            }
        )
    return rows


def load_arc(file: str, **_metadata) -> datasets.DatasetDict:
    """lm-eval `custom_dataset` hook: `dataset_kwargs: {file: ...}` names the JSONL beside this module."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_arc_rows(file))})


def letter_prompt(doc: dict) -> str:
    options = "\n".join(f"{label}. {text}" for label, text in zip(doc["choices"]["label"], doc["choices"]["text"]))
    return f"Question: {doc['question']}\n{options}\nAnswer:"
