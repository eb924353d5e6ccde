"""Real evaluation data -> normalised JSONL + lm-eval task folders (the one converter).
Imports no other e2lm_vllm package but models (its user cache folder); doctor, demo, curriculum and the bench use it.

Reads the raw layout of the shared data folder (``../shared/data`` beside the repo, or
``$E2LM_DATA_DIR``), writes one JSONL file per split with the same fields as the Hugging Face
datasets that lm-eval's stock tasks load (``cais/mmlu``, ``allenai/ai2_arc``, ``baber/piqa``,
hellaswag after lm-eval's ``process_docs``), and writes lm-eval YAML tasks whose prompts are
lm-eval's own templates verbatim. Only ``dataset_path``/``data_files`` differ from the stock tasks.

Two suites, same templates:
- ``full``: every item; built on demand into a cache folder with absolute data paths
  (:func:`include_path_for`), so it works from any directory.
- ``samples``: a few hundred seeded items committed as package data in ``e2lm_vllm/taskdata/samples``
  (``SAMPLES_DIR``; a checkout links ``tasks/samples`` to it) for the demo and the doctor; its YAML
  names data files relative to a checkout's root (the demo and ``ray job submit --working-dir .``
  run there). :func:`include_path_for` ("samples") gives an absolute-path copy usable anywhere,
  installed wheel included.

    python -m e2lm_vllm.taskdata samples            # regenerates e2lm_vllm/taskdata/samples (committed)
    python -m e2lm_vllm.taskdata full [-o DIR]      # prints the include path of the full suite

One module per job:

- :mod:`~e2lm_vllm.taskdata.readers`: the raw files as dataset rows;
- :mod:`~e2lm_vllm.taskdata.templates`: the prompt templates (package data
  ``e2lm_vllm/templates/tasks.yaml``, shared with the MMLU-Curriculum writer) and the YAML writer;
- :mod:`~e2lm_vllm.taskdata.suites`: rows + templates -> the files of the two suites;
- :mod:`~e2lm_vllm.taskdata.cache`: the absolute-path build for lm-eval's ``include_path``;
- :mod:`~e2lm_vllm.taskdata.cli`: ``python -m e2lm_vllm.taskdata``.
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
