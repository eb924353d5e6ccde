"""Real evaluation data -> normalised JSONL + lm-eval task folders (the one converter).

Reads the raw layout of the shared data folder (``../shared/data`` beside the repo, or
``$E2LM_DATA_DIR``), writes one JSONL file per split with the same fields as the Hugging Face
datasets that lm-eval's stock tasks load (``cais/mmlu``, ``allenai/ai2_arc``, ``baber/piqa``,
hellaswag after lm-eval's ``process_docs``), and writes lm-eval YAML tasks whose prompts are
lm-eval's own templates verbatim. Only ``dataset_path``/``data_files`` differ from the stock tasks.

Two suites, same templates:
- ``full``: every item; built on demand into a cache folder with absolute data paths
  (:func:`include_path_for`), so it works from any directory.
- ``samples``: a few hundred seeded items committed under ``tasks/samples`` for the demo; its
  YAML names data files relative to the repo root (the demo and ``ray job submit --working-dir .``
  run there). :func:`include_path_for` ("samples") gives an absolute-path copy usable anywhere.

    python -m e2lm_vllm.taskdata samples            # regenerates tasks/samples (committed)
    python -m e2lm_vllm.taskdata full [-o DIR]      # prints the include path of the full suite
"""

from __future__ import annotations

import argparse
import bz2
import csv
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "tasks" / "samples"
# Data paths written into the committed sample YAMLs: relative to the repo root, where
# `make demo` and `ray job submit --working-dir .` run lm-eval.
SAMPLES_DATA_REF = "tasks/samples/data"
SuiteKind = Literal["full", "samples"]

# Bump when the normalised format or the YAML templates change: cached full suites rebuild.
FORMAT_VERSION = 1
SAMPLE_SEED = 1234
STALE_BUILD_SECONDS = 24 * 3600

MMLU_LETTERS = ["A", "B", "C", "D"]
# One subject per MMLU category (STEM, social sciences, humanities, other), short questions so
# the demo stays cheap.
SAMPLE_MMLU_SUBJECTS = ["astronomy", "high_school_geography", "world_religions", "nutrition"]
SAMPLE_SIZES = {
    "mmlu_per_subject": 20,
    "arc_easy": 60,
    "arc_challenge": 40,
    "piqa": 60,
    "hellaswag": 60,
    "stories_short": 3,
    "stories_long": 1,
}
# Rolling-perplexity documents are cut at this many words (~4k SmolLM2 tokens): many full
# documents exceed 2,048 tokens, so rolling windows really roll at max_length=2048.
STORY_MAX_WORDS = 3000
STORY_LONG_WORDS = (2000, STORY_MAX_WORDS)  # the "long" sample document's word range
STORY_SHORT_MAX_WORDS = 400


RAW_FOLDERS = ("mmlu", "arc", "piqa", "hellaswag")


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


def _need(path: Path) -> Path:
    if not path.exists():
        raise TaskDataError(f"expected raw data file {path} (see SOURCE.md in its folder)")
    return path


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with _need(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# --------------------------------------------------------------------------- converters


def mmlu_subjects(root: Path) -> list[str]:
    subjects = sorted(p.name.removesuffix("_test.csv") for p in (root / "mmlu" / "test").glob("*_test.csv"))
    if not subjects:
        raise TaskDataError(f"no <subject>_test.csv files in {root / 'mmlu' / 'test'}")
    return subjects


def mmlu_rows(root: Path, subject: str, split: Literal["test", "dev"]) -> list[dict[str, Any]]:
    """Rows of ``mmlu/<split>/<subject>_<split>.csv`` (header, integer answer) as ``cais/mmlu`` rows."""
    path = _need(root / "mmlu" / split / f"{subject}_{split}.csv")
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


ARC_SUBSETS = {"easy": "ARC-Easy", "challenge": "ARC-Challenge"}
ARC_SPLITS = {"train": "Train", "validation": "Dev", "test": "Test"}


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
    labels_path = _need(root / "piqa" / "data" / "valid-labels.lst")
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
    path = _need(root / "hellaswag" / "hellaswag_val_full.txt.bz2")
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


# --------------------------------------------------------------------------- sample selection


def _seeded_subset(rows: list[dict[str, Any]], k: int, salt: str) -> list[dict[str, Any]]:
    """``k`` rows picked with a seed derived from SAMPLE_SEED and ``salt``, kept in source order."""
    rng = random.Random(f"{SAMPLE_SEED}:{salt}")
    picked = sorted(rng.sample(range(len(rows)), min(k, len(rows))))
    return [rows[i] for i in picked]


def _sample_stories(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    short = [d for d in docs if len(d["text"].split()) <= STORY_SHORT_MAX_WORDS]
    lo, hi = STORY_LONG_WORDS
    long = [d for d in docs if lo <= len(d["text"].split()) <= hi]
    picked = _seeded_subset(short, SAMPLE_SIZES["stories_short"], "stories_short")
    picked += _seeded_subset(long, SAMPLE_SIZES["stories_long"], "stories_long")
    return sorted(picked, key=lambda d: d["doc_id"])


# --------------------------------------------------------------------------- suite = data + YAML


@dataclass
class Suite:
    """Normalised data files (name -> rows) and YAML files (name -> config) of one task suite."""

    prefix: str
    data: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    yamls: dict[str, dict[str, Any]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)  # other files copied verbatim (licenses)
    # zero-shot lm-eval requests per task: documents x choices, or one per document
    request_counts: dict[str, int] = field(default_factory=dict)


def _files(data_ref: str, **splits: str) -> dict[str, Any]:
    return {"data_files": {split: f"{data_ref}/{name}" for split, name in splits.items()}}


def _mmlu_template(kind: Literal["letter", "cloze", "gen"]) -> dict[str, Any]:
    """lm-eval's mmlu ``default``, ``continuation`` and ``generative`` templates, with local data."""
    base: dict[str, Any] = {
        "dataset_path": "json",
        "test_split": "test",
        "fewshot_split": "dev",
        "fewshot_config": {"sampler": "first_n"},
    }
    letter_prompt = (
        "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"
    )
    if kind == "letter":
        return base | {
            "output_type": "multiple_choice",
            "doc_to_text": letter_prompt,
            "doc_to_choice": list(MMLU_LETTERS),
            "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        }
    if kind == "cloze":
        return base | {
            "output_type": "multiple_choice",
            "doc_to_text": "Question: {{question.strip()}}\nAnswer:",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{answer}}",
            # lm-eval's continuation template has no metric_list (acc + acc_norm by default).
            "metadata": {"version": 1.0},
        }
    return base | {
        "output_type": "generate_until",
        "doc_to_text": letter_prompt,
        "doc_to_target": "{{['A', 'B', 'C', 'D'][answer]}}",
        # lm-eval's mmlu_generative stops, plus greedy decoding and a short budget: the answer is one letter.
        "generation_kwargs": {"until": ["</s>", "\n"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 8},
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_punctuation": True,
                "ignore_case": True,
            }
        ],
        "filter_list": [
            {   # lm-eval's mmlu_generative filter, verbatim
                "name": "get_response",
                "filter": [
                    {"function": "regex", "regex_pattern": "^(.*?)(?=\\n|$)"},
                    {"function": "remove_whitespace"},
                    {"function": "regex", "regex_pattern": "^(.*?)\\s*$"},
                    {"function": "take_first"},
                ],
            },
            {   # the first standalone A-D letter anywhere in the answer ("A. Mars" -> "A")
                "name": "first_letter",
                "filter": [
                    {"function": "regex", "regex_pattern": "\\b([ABCD])\\b"},
                    {"function": "take_first"},
                ],
            },
        ],
        "metadata": {"version": 3.0},
    }


MMLU_KIND_INFO = {
    # kind: (description opening, metric for aggregation, filters aggregated)
    "letter": ("The following are multiple choice questions (with answers) about", "acc", [None]),
    "cloze": ("The following are questions (with answers) about", "acc", [None]),
    "gen": ("The following are multiple choice questions (with answers) about", "exact_match", ["get_response", "first_letter"]),
}


def _add_mmlu(suite: Suite, data_ref: str, subjects: dict[str, tuple[list[dict], list[dict]]]) -> None:
    for subject, (test, dev) in subjects.items():
        suite.data[f"mmlu/{subject}.test.jsonl"] = test
        suite.data[f"mmlu/{subject}.dev.jsonl"] = dev
    for kind, (opening, metric, filters) in MMLU_KIND_INFO.items():
        group = f"{suite.prefix}_mmlu_{kind}"
        template_name = f"_mmlu_{kind}_template_yaml"  # no .yaml suffix: lm-eval does not index it as a task
        suite.yamls[template_name] = _mmlu_template(kind)
        for subject in subjects:
            pretty = subject.replace("_", " ")
            n_docs = len(subjects[subject][0])
            suite.request_counts[f"{group}_{subject}"] = n_docs * (len(MMLU_LETTERS) if kind != "gen" else 1)
            suite.yamls[f"mmlu_{kind}/{group}_{subject}.yaml"] = {
                "include": f"../{template_name}",
                "task": f"{group}_{subject}",
                "task_alias": pretty,
                "tag": f"{group}_tasks",
                "description": f"{opening} {pretty}.\n\n",
                "dataset_kwargs": _files(
                    data_ref, test=f"mmlu/{subject}.test.jsonl", dev=f"mmlu/{subject}.dev.jsonl"
                ),
            }
        aggregate = []
        for filter_name in filters:
            entry: dict[str, Any] = {"metric": metric, "aggregation": "mean", "weight_by_size": True}
            if filter_name:
                entry["filter_list"] = filter_name
            aggregate.append(entry)
        suite.yamls[f"_{group}.yaml"] = {
            "group": group,
            "task": [f"{group}_tasks"],
            "aggregate_metric_list": aggregate,
            "metadata": {"version": 1},
        }


_MC_METRICS = [
    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
]


def _add_arc(suite: Suite, data_ref: str, subset: str, splits: dict[str, list[dict]]) -> None:
    task = f"{suite.prefix}_arc_{subset}"
    for split, rows in splits.items():
        suite.data[f"arc/{subset}.{split}.jsonl"] = rows
    config: dict[str, Any] = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": _files(data_ref, **{s: f"arc/{subset}.{s}.jsonl" for s in splits}),
        "output_type": "multiple_choice",
    }
    for split in ("train", "validation", "test"):  # lm-eval's arc_easy split roles
        if split in splits:
            config[f"{'training' if split == 'train' else split}_split"] = split
    config |= {
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{choices.label.index(answerKey)}}",
        "doc_to_choice": "{{choices.text}}",
        "should_decontaminate": True,
        "doc_to_decontamination_query": "Question: {{question}}\nAnswer:",
        "metric_list": _MC_METRICS,
        "metadata": {"version": 1.0},
    }
    suite.yamls[f"{task}.yaml"] = config
    suite.request_counts[task] = sum(len(r["choices"]["text"]) for r in splits["test"])


def _add_piqa(suite: Suite, data_ref: str, rows: list[dict]) -> None:
    task = f"{suite.prefix}_piqa"
    suite.data["piqa/validation.jsonl"] = rows
    suite.request_counts[task] = 2 * len(rows)
    suite.yamls[f"{task}.yaml"] = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": _files(data_ref, validation="piqa/validation.jsonl"),
        "output_type": "multiple_choice",
        "validation_split": "validation",
        "doc_to_text": "Question: {{goal}}\nAnswer:",
        "doc_to_target": "label",
        "doc_to_choice": "{{[sol1, sol2]}}",
        "should_decontaminate": True,
        "doc_to_decontamination_query": "goal",
        "metric_list": _MC_METRICS,
        "metadata": {"version": 1.0},
    }


def _add_hellaswag(suite: Suite, data_ref: str, rows: list[dict]) -> None:
    task = f"{suite.prefix}_hellaswag"
    suite.data["hellaswag/validation.jsonl"] = rows
    suite.request_counts[task] = sum(len(r["choices"]) for r in rows)
    suite.yamls[f"{task}.yaml"] = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": _files(data_ref, validation="hellaswag/validation.jsonl"),
        "output_type": "multiple_choice",
        "validation_split": "validation",
        # query/choices are already lm-eval's process_docs output (see tasks/README.md for the differences)
        "doc_to_text": "{{query}}",
        "doc_to_target": "{{label}}",
        "doc_to_choice": "choices",
        "metric_list": _MC_METRICS,
        "metadata": {"version": 1.0},
    }


def _add_stories(suite: Suite, data_ref: str, docs: list[dict]) -> None:
    task = f"{suite.prefix}_stories_ppl"
    suite.data["stories/test.jsonl"] = docs
    suite.request_counts[task] = len(docs)
    suite.yamls[f"{task}.yaml"] = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": _files(data_ref, test="stories/test.jsonl"),
        "output_type": "loglikelihood_rolling",
        "test_split": "test",
        "doc_to_text": "",
        "doc_to_target": "text",
        "should_decontaminate": True,
        "doc_to_decontamination_query": "{{text}}",
        # words and bytes are counted on the scored text itself (lm-eval's default for rolling tasks)
        "metric_list": [
            {"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
            {"metric": "byte_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
            {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False},
        ],
        "metadata": {"version": 1.0},
    }


def _add_all_group(suite: Suite, name: str) -> None:
    p = suite.prefix
    members = [f"{p}_mmlu_letter", f"{p}_mmlu_cloze", f"{p}_mmlu_gen", f"{p}_arc_easy", f"{p}_arc_challenge",
               f"{p}_piqa", f"{p}_hellaswag", f"{p}_stories_ppl"]  # fmt: skip
    suite.yamls[f"_{name}.yaml"] = {"group": name, "task": members, "metadata": {"version": 1}}


def build_full_suite(root: Path, data_ref: str) -> Suite:
    """Every item of the raw data; ``data_ref`` is how the YAML names the data folder."""
    suite = Suite(prefix="e2lm")
    subjects = {s: (mmlu_rows(root, s, "test"), mmlu_rows(root, s, "dev")) for s in mmlu_subjects(root)}
    _add_mmlu(suite, data_ref, subjects)
    for subset in ARC_SUBSETS:
        _add_arc(suite, data_ref, subset, {split: arc_rows(root, subset, split) for split in ARC_SPLITS})
    _add_piqa(suite, data_ref, piqa_rows(root))
    hellaswag = hellaswag_rows(root)
    _add_hellaswag(suite, data_ref, hellaswag)
    _add_stories(suite, data_ref, story_docs(hellaswag))
    _add_all_group(suite, "e2lm_full")
    return suite


def build_samples_suite(root: Path, data_ref: str = SAMPLES_DATA_REF) -> Suite:
    """The seeded demo subset (see SAMPLE_SIZES), 0-shot except MMLU which keeps its 5 dev items."""
    suite = Suite(prefix="sample")
    n = SAMPLE_SIZES["mmlu_per_subject"]
    subjects = {
        s: (_seeded_subset(mmlu_rows(root, s, "test"), n, f"mmlu:{s}"), mmlu_rows(root, s, "dev"))
        for s in SAMPLE_MMLU_SUBJECTS
    }
    _add_mmlu(suite, data_ref, subjects)
    for subset in ARC_SUBSETS:
        rows = _seeded_subset(arc_rows(root, subset, "test"), SAMPLE_SIZES[f"arc_{subset}"], f"arc:{subset}")
        _add_arc(suite, data_ref, subset, {"test": rows})
    _add_piqa(suite, data_ref, _seeded_subset(piqa_rows(root), SAMPLE_SIZES["piqa"], "piqa"))
    hellaswag = hellaswag_rows(root)
    _add_hellaswag(suite, data_ref, _seeded_subset(hellaswag, SAMPLE_SIZES["hellaswag"], "hellaswag"))
    _add_stories(suite, data_ref, _sample_stories(story_docs(hellaswag)))
    _add_all_group(suite, "e2lm_samples")
    for folder in ("mmlu", "hellaswag"):  # the two datasets that ship a LICENSE file
        suite.texts[f"{folder}/LICENSE"] = _need(root / folder / "LICENSE").read_text(encoding="utf-8")
    return suite


# --------------------------------------------------------------------------- writing


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


class _TaskYamlDumper(yaml.SafeDumper):
    """Multi-line strings as one double-quoted line with \\n escapes, like lm-eval's own task files."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_TaskYamlDumper.add_representer(str, _represent_str)


def yaml_text(config: dict[str, Any]) -> str:
    header = "# Generated by `python -m e2lm_vllm.taskdata`; edit the generator, not this file.\n"
    return header + yaml.dump(config, Dumper=_TaskYamlDumper, sort_keys=False, allow_unicode=True, width=1000)


def suite_files(suite: Suite) -> Iterator[tuple[str, str]]:
    """(path relative to the suite folder, text) of every generated file."""
    for name, rows in sorted(suite.data.items()):
        yield f"data/{name}", jsonl_text(rows)
    for name, text in sorted(suite.texts.items()):
        yield f"data/{name}", text
    for name, config in sorted(suite.yamls.items()):
        yield name, yaml_text(config)


def write_suite(suite: Suite, out_dir: Path) -> list[Path]:
    written = []
    for rel, text in suite_files(suite):
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _cache_root() -> Path:
    return Path(os.environ.get("E2LM_TASKS_CACHE") or REPO_ROOT / ".cache" / "e2lm_tasks")


def _fingerprint(kind: SuiteKind, sources: list[Path]) -> str:
    digest = hashlib.sha256(f"{kind}:{FORMAT_VERSION}".encode())
    digest.update(Path(__file__).read_bytes())
    for path in sorted(sources):
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def include_path_for(kind: SuiteKind = "full", data: str | os.PathLike[str] | None = None) -> str:
    """Folder to pass as lm-eval's ``include_path`` for the ``full`` or ``samples`` suite.

    Both are written (once, then reused while the sources are unchanged) into a cache folder
    (``$E2LM_TASKS_CACHE`` or ``<repo>/.cache/e2lm_tasks``) with absolute data paths, so lm-eval
    can run them from any directory. ``full`` converts the raw data folder (:func:`data_root`);
    ``samples`` points at the committed files in ``tasks/samples/data``.
    """
    if kind == "full":
        root = data_root(data)
        sources = [p for folder in RAW_FOLDERS for p in (root / folder).rglob("*") if p.is_file()]
    elif kind == "samples":
        sources = [p for p in (SAMPLES_DIR / "data").rglob("*") if p.is_file()]
        if not sources:
            raise TaskDataError(f"no sample data in {SAMPLES_DIR / 'data'}; run `python -m e2lm_vllm.taskdata samples`")
    else:
        raise TaskDataError(f"unknown suite {kind!r}; expected 'full' or 'samples'")
    final = _cache_root() / f"{kind}-{_fingerprint(kind, sources)}"
    if (final / "manifest.json").exists():
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=final.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the suite is shared by every process of the user
    try:
        if kind == "full":
            write_suite(build_full_suite(root, str(staging.parent / final.name / "data")), staging)
        else:
            _write_samples_yaml_only(staging, str(SAMPLES_DIR / "data"))
        (staging / "manifest.json").write_text(json.dumps({"kind": kind, "format": FORMAT_VERSION}) + "\n")
        try:
            staging.rename(final)
        except OSError:  # another process finished first: its copy is identical
            if not (final / "manifest.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Builds of older sources or converter versions; kept a day in case a running job still reads one.
    for stale in final.parent.glob(f"{kind}-*"):
        if stale != final and time.time() - stale.stat().st_mtime > STALE_BUILD_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    return str(final)


def _write_samples_yaml_only(out_dir: Path, data_ref: str) -> None:
    """The committed sample YAMLs with ``tasks/samples/data`` replaced by ``data_ref``."""
    for path in SAMPLES_DIR.rglob("*"):
        if path.is_file() and (path.suffix == ".yaml" or path.name.endswith("_yaml")):
            target = out_dir / path.relative_to(SAMPLES_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text(encoding="utf-8").replace(f" {SAMPLES_DATA_REF}/", f" {data_ref}/"))


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2lm_vllm.taskdata", description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["samples", "full"])
    parser.add_argument("-o", "--out", type=Path, help="output folder (samples: tasks/samples; full: the cache)")
    parser.add_argument("--data", help="raw data folder (default: $E2LM_DATA_DIR or ../shared/data)")
    args = parser.parse_args(argv)
    try:
        root = data_root(args.data)
        if args.suite == "samples":
            out = args.out or SAMPLES_DIR
            suite = build_samples_suite(root)
            written = write_suite(suite, out)
            total = sum(suite.request_counts.values())
            print(f"wrote {len(written)} files to {out} ({total} zero-shot requests in all)")
        elif args.out:
            write_suite(build_full_suite(root, str(args.out.resolve() / "data")), args.out)
            print(args.out)
        else:
            print(include_path_for("full", args.data))
    except TaskDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
