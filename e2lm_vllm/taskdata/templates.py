"""Prompt templates (package data ``e2lm_vllm/templates/tasks.yaml``) and the task-YAML writer.

The one reader of the template file: the task suites (:mod:`e2lm_vllm.taskdata.suites`) and the
MMLU-Curriculum writer (:mod:`e2lm_vllm.curriculum.writer`) take their prompts from here, so a
prompt is written once. Every accessor returns a fresh copy: callers may change what they get.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

TEMPLATES_FILE = Path(__file__).resolve().parents[1] / "templates" / "tasks.yaml"
MmluKind = Literal["letter", "cloze", "gen"]
MMLU_KINDS: tuple[MmluKind, ...] = ("letter", "cloze", "gen")
ZeroShotTask = Literal["arc", "piqa", "hellaswag", "stories_ppl"]


@functools.cache
def _templates() -> dict[str, Any]:
    with TEMPLATES_FILE.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@dataclass(frozen=True)
class MmluFormat:
    """One MMLU answer format: the settings its subject tasks include, and their description."""

    kind: MmluKind
    task: dict[str, Any]
    description_format: str
    group_metric: str

    def description(self, subject: str) -> str:
        """The description of ``subject``'s task (``high_school_geography`` -> ``... high school geography.``)."""
        return self.description_format.format(subject=subject_title(subject))

    @property
    def group_filters(self) -> list[str | None]:
        """Filters the group aggregates ``group_metric`` over (``[None]``: the unfiltered metric)."""
        return [entry["name"] for entry in self.task.get("filter_list", [])] or [None]


def subject_title(subject: str) -> str:
    return subject.replace("_", " ")


def mmlu_format(kind: MmluKind) -> MmluFormat:
    entry = copy.deepcopy(_templates()["mmlu"][kind])
    return MmluFormat(kind, entry["task"], entry["description"], entry["group_metric"])


def zero_shot_task(name: ZeroShotTask) -> dict[str, Any]:
    """The task settings of a zero-shot task, ``output_type`` first; no task name, data or splits."""
    return copy.deepcopy(_templates()[name]["task"])


def multiple_choice_metrics() -> list[dict[str, Any]]:
    """acc and acc_norm, averaged, higher is better (lm-eval's multiple-choice metric_list)."""
    return copy.deepcopy(_templates()["metric_lists"]["multiple_choice"])


def aggregate_metric_list(metrics: list[str], filters: list[str | None] | None = None) -> list[dict[str, Any]]:
    """A group's ``aggregate_metric_list``: each metric (per filter) averaged, weighted by task size."""
    aggregate = []
    for metric in metrics:
        for filter_name in filters or [None]:
            entry: dict[str, Any] = {"metric": metric, "aggregation": "mean", "weight_by_size": True}
            if filter_name:
                entry["filter_list"] = filter_name
            aggregate.append(entry)
    return aggregate


MMLU_LETTERS: list[str] = mmlu_format("letter").task["doc_to_choice"]


# --------------------------------------------------------------------------- writing task YAML


class _TaskYamlDumper(yaml.SafeDumper):
    """Multi-line strings as one double-quoted line with \\n escapes, like lm-eval's own task files."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_TaskYamlDumper.add_representer(str, _represent_str)


def task_yaml_text(config: dict[str, Any], header: str) -> str:
    """``config`` as lm-eval task YAML, after a one-line ``# header`` comment."""
    return f"# {header}\n" + yaml.dump(config, Dumper=_TaskYamlDumper, sort_keys=False, allow_unicode=True, width=1000)
