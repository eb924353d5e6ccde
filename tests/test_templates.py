"""The prompt templates are written once (e2lm_vllm/templates/tasks.yaml) and every task file is made from them."""

from __future__ import annotations

from pathlib import Path

import yaml

from e2lm_vllm.curriculum.writer import Manifest, prompt_format, task_yamls
from e2lm_vllm.taskdata.templates import MMLU_KINDS, mmlu_format

REPO_ROOT = Path(__file__).resolve().parents[1]
CURRICULUM = REPO_ROOT / "tasks" / "mmlu_curriculum"
SAMPLES = REPO_ROOT / "tasks" / "samples"


def test_committed_curriculum_yaml_is_the_writer_output() -> None:
    files = task_yamls(Manifest.read(CURRICULUM))
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in CURRICULUM.iterdir() if p.suffix == ".yaml" or p.name.endswith("_yaml")}
    assert files == on_disk, "rebuild with `e2lm-vllm curriculum build` (docs/curriculum.md)"


def test_curriculum_asks_the_cloze_prompt_of_the_suites() -> None:
    """The curriculum ships the prompt its difficulty was measured on: the suites' mmlu_cloze tasks."""
    suite_template = yaml.safe_load((SAMPLES / "_mmlu_cloze_template_yaml").read_text(encoding="utf-8"))
    suite_task = yaml.safe_load((SAMPLES / "mmlu_cloze" / "sample_mmlu_cloze_astronomy.yaml").read_text(encoding="utf-8"))
    curriculum = yaml.safe_load((CURRICULUM / "_mmlu_curriculum_template_yaml").read_text(encoding="utf-8"))
    for key in ("output_type", "doc_to_text", "doc_to_choice", "doc_to_target"):
        assert curriculum[key] == suite_template[key]
    fmt = prompt_format("astronomy")
    assert (fmt.doc_to_text, fmt.description) == (suite_template["doc_to_text"], suite_task["description"])


def test_templates_are_fresh_copies() -> None:
    for kind in MMLU_KINDS:
        mmlu_format(kind).task["doc_to_text"] = "changed"
        assert mmlu_format(kind).task["doc_to_text"] != "changed"
