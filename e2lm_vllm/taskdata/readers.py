"""Raw data readers: the shared data folder's files as rows shaped like the Hugging Face datasets.

Reads the raw layout of the shared data folder (``../shared/data`` beside the repo, or
``$E2LM_DATA_DIR``) into rows with the same fields as the datasets lm-eval's stock tasks load
(``cais/mmlu``, ``allenai/ai2_arc``, ``baber/piqa``, hellaswag after lm-eval's ``process_docs``),
plus rolling-perplexity documents made of HellaSwag stories.
"""

from __future__ import annotations

import bz2
import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parents[2]
RAW_FOLDERS = ("mmlu", "arc", "piqa", "hellaswag")
ARC_SUBSETS = {"easy": "ARC-Easy", "challenge": "ARC-Challenge"}
ARC_SPLITS = {"train": "Train", "validation": "Dev", "test": "Test"}
# Rolling-perplexity documents are cut at this many words (~4k SmolLM2 tokens): many full
# documents exceed 2,048 tokens, so rolling windows really roll at max_length=2048.
STORY_MAX_WORDS = 3000


class TaskDataError(ValueError):
    """Raw data missing or not in the expected layout."""


# --------------------------------------------------------------------------- raw data location


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The raw shared data folder: ``explicit``, else ``$E2LM_DATA_DIR``, else ``<repo>/../shared/data``."""
    root = Path(explicit or os.environ.get("E2LM_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
    if not (root / "mmlu").is_dir():
        raise TaskDataError(
            f"raw data folder {root} has no mmlu/; expected the shared data folder holding "
            "mmlu/ arc/ piqa/ hellaswag/ (set E2LM_DATA_DIR)"
        )
    return root


def need_file(path: Path) -> Path:
    if not path.exists():
        raise TaskDataError(f"expected raw data file {path} (see SOURCE.md in its folder)")
    return path


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with need_file(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# --------------------------------------------------------------------------- converters


def mmlu_subjects(root: Path) -> list[str]:
    subjects = sorted(p.name.removesuffix("_test.csv") for p in (root / "mmlu" / "test").glob("*_test.csv"))
    if not subjects:
        raise TaskDataError(f"no <subject>_test.csv files in {root / 'mmlu' / 'test'}")
    return subjects


def mmlu_rows(root: Path, subject: str, split: Literal["test", "dev"]) -> list[dict[str, Any]]:
    """Rows of ``mmlu/<split>/<subject>_<split>.csv`` (header, integer answer) as ``cais/mmlu`` rows."""
    path = need_file(root / "mmlu" / split / f"{subject}_{split}.csv")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if header != ["question", "choice0", "choice1", "choice2", "choice3", "answer"]:
            raise TaskDataError(f"{path}: header {header}, expected question,choice0..choice3,answer")
        rows = []
        for line_no, fields in enumerate(reader, start=2):
            if len(fields) != 6 or fields[5] not in {"0", "1", "2", "3"}:
                raise TaskDataError(f"{path}:{line_no}: expected 6 fields with answer 0-3, got {fields!r}")
            rows.append({"question": fields[0], "subject": subject, "choices": fields[1:5], "answer": int(fields[5])})
    return rows


def arc_rows(root: Path, subset: Literal["easy", "challenge"], split: str) -> list[dict[str, Any]]:
    """ARC release JSONL as ``allenai/ai2_arc`` rows; labels kept as given (A-E or 1-5, like the HF copy)."""
    name = ARC_SUBSETS[subset]
    path = root / "arc" / name / f"{name}-{ARC_SPLITS[split]}.jsonl"
    rows = []
    for raw in _read_jsonl(path):
        labels = [c["label"] for c in raw["question"]["choices"]]
        if raw["answerKey"] not in labels:
            raise TaskDataError(f"{path}: {raw['id']} answerKey {raw['answerKey']!r} not among labels {labels}")
        rows.append(
            {
                "id": raw["id"],
                "question": raw["question"]["stem"],
                "choices": {"text": [c["text"] for c in raw["question"]["choices"]], "label": labels},
                "answerKey": raw["answerKey"],
            }
        )
    return rows


def arc_gold_index(row: dict[str, Any]) -> int:
    """Index of the answer among the choices (what lm-eval's ``choices.label.index(answerKey)`` gives)."""
    return row["choices"]["label"].index(row["answerKey"])


def piqa_rows(root: Path) -> list[dict[str, Any]]:
    """``piqa/data/valid.jsonl`` joined with the line-aligned ``valid-labels.lst`` (``baber/piqa`` rows)."""
    docs = _read_jsonl(root / "piqa" / "data" / "valid.jsonl")
    labels_path = need_file(root / "piqa" / "data" / "valid-labels.lst")
    labels = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(labels) != len(docs) or set(labels) - {"0", "1"}:
        raise TaskDataError(f"{labels_path}: expected {len(docs)} labels in {{0,1}}, got {len(labels)}")
    return [{"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": int(lab)} for d, lab in zip(docs, labels)]


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's ``hellaswag/utils.py::preprocess``, verbatim (WikiHow bracket artifacts)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


def _capitalize_ctx_b(ctx: str) -> str:
    """Approximate lm-eval's ``ctx_a + " " + ctx_b.capitalize()`` on the joined text form.

    The text form lost the ctx_a/ctx_b split. ctx_b is the unfinished last sentence, which
    starts lower-case in ActivityNet items ("... on a roof. he"); a trailing fragment that
    starts lower-case is taken to be ctx_b and capitalised as lm-eval does.
    """
    tail = _SENTENCE_END.split(ctx)[-1]
    if not tail[:1].islower():
        return ctx
    return ctx[: len(ctx) - len(tail)] + tail.capitalize()


def hellaswag_rows(root: Path) -> list[dict[str, Any]]:
    """The 6-line text form (``label: ctx`` / gold / 4 endings) as lm-eval's processed hellaswag docs."""
    path = need_file(root / "hellaswag" / "hellaswag_val_full.txt.bz2")
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise TaskDataError(f"{path}: {len(lines)} lines, expected 6 per item")
    rows = []
    for ind, start in enumerate(range(0, len(lines), 6)):
        first, gold, *endings = lines[start : start + 6]
        activity_label, sep, ctx = first.partition(": ")
        if not sep or gold not in {"0", "1", "2", "3"}:
            raise TaskDataError(f"{path}: item {ind} (line {start + 1}) is not 'label: ctx' + gold 0-3")
        rows.append(
            {
                "ind": ind,
                "activity_label": activity_label,
                "query": hellaswag_preprocess(activity_label + ": " + _capitalize_ctx_b(ctx)),
                "choices": [hellaswag_preprocess(e) for e in endings],
                "label": int(gold),
            }
        )
    return rows


def story_docs(hellaswag: list[dict[str, Any]], max_words: int = STORY_MAX_WORDS) -> list[dict[str, Any]]:
    """Rolling-perplexity documents: each HellaSwag item with its gold ending ("query ending"),
    consecutive items of one activity label joined by blank lines, cut at ``max_words`` words.
    """
    by_label: dict[str, list[str]] = {}
    for row in hellaswag:
        by_label.setdefault(row["activity_label"], []).append(row["query"] + " " + row["choices"][row["label"]])
    docs: list[dict[str, Any]] = []
    for label, stories in by_label.items():
        chunk: list[str] = []
        words = 0
        for story in stories:
            n = len(story.split())
            if chunk and words + n > max_words:
                docs.append(_story_doc(label, len(docs), chunk))
                chunk, words = [], 0
            chunk.append(story)
            words += n
        if chunk:
            docs.append(_story_doc(label, len(docs), chunk))
    return docs


def _story_doc(label: str, index: int, stories: list[str]) -> dict[str, Any]:
    text = "\n\n".join(stories)
    return {"doc_id": f"story-{index:04d}", "activity_label": label, "n_items": len(stories), "text": text}
