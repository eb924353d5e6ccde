"""Real evaluation data -> normalised JSONL + lm-eval task folders: `readers` (raw files as HF-shaped rows), `templates`, `suites` (the full suite and the bundled samples, package data), `cache` (absolute-path builds for `include_path`), `cli`.

Imports no other e2lm_vllm package but models (its user cache folder, when installed); proof (doctor), the demo, curriculum and the bench use it.
"""

from e2lm_vllm.taskdata.cache import FORMAT_VERSION, STALE_BUILD_SECONDS, SuiteKind, include_path_for
from e2lm_vllm.taskdata.cli import main
from e2lm_vllm.taskdata.readers import (
    ARC_SPLITS,
    ARC_SUBSETS,
    RAW_FOLDERS,
    REPO_ROOT,
    STORY_MAX_WORDS,
    TaskDataError,
    arc_gold_index,
    arc_rows,
    data_root,
    hellaswag_preprocess,
    hellaswag_rows,
    mmlu_rows,
    mmlu_subjects,
    piqa_rows,
    story_docs,
)
from e2lm_vllm.taskdata.suites import (
    FULL_PREFIX,
    SAMPLE_MMLU_SUBJECTS,
    SAMPLE_SEED,
    SAMPLE_SIZES,
    SAMPLES_DATA_REF,
    SAMPLES_DIR,
    SAMPLES_LINK,
    SAMPLES_PREFIX,
    STORY_LONG_WORDS,
    STORY_SHORT_MAX_WORDS,
    Suite,
    build_full_suite,
    build_samples_suite,
    jsonl_text,
    mmlu_task_name,
    suite_files,
    task_name,
    write_suite,
    yaml_text,
)
from e2lm_vllm.taskdata.templates import MMLU_KINDS, MMLU_LETTERS, mmlu_format

__all__ = [
    "ARC_SPLITS", "ARC_SUBSETS", "FORMAT_VERSION", "FULL_PREFIX", "MMLU_KINDS", "MMLU_LETTERS", "RAW_FOLDERS", "REPO_ROOT",
    "SAMPLES_DATA_REF", "SAMPLES_DIR", "SAMPLES_LINK", "SAMPLES_PREFIX", "SAMPLE_MMLU_SUBJECTS", "SAMPLE_SEED", "SAMPLE_SIZES", "STALE_BUILD_SECONDS",
    "STORY_LONG_WORDS", "STORY_MAX_WORDS", "STORY_SHORT_MAX_WORDS", "Suite", "SuiteKind", "TaskDataError",
    "arc_gold_index", "arc_rows", "build_full_suite", "build_samples_suite", "data_root", "hellaswag_preprocess",
    "hellaswag_rows", "include_path_for", "jsonl_text", "main", "mmlu_format", "mmlu_rows", "mmlu_subjects", "mmlu_task_name",
    "piqa_rows", "story_docs", "suite_files", "task_name", "write_suite", "yaml_text",
]  # fmt: skip
