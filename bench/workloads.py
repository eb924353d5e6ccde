"""The fixed benchmark workloads: real tasks over ../shared/data, few-shot count and size.

Sizes are chosen so that the slowest backend (lm-eval `vllm`, ~1.8 s per 5-shot request on 2 cores)
finishes each workload in a few minutes. `--quick` shrinks every workload to a smoke-test size.
"""

from __future__ import annotations

from dataclasses import dataclass

from e2lm_vllm.taskdata.suites import FULL_PREFIX, SAMPLE_MMLU_SUBJECTS, mmlu_task_name, task_name

# One subject per MMLU category (STEM, social sciences, humanities, other): the bundled samples' subjects,
# here in the full suite (every item of the subject).
MMLU_SUBJECTS = tuple(SAMPLE_MMLU_SUBJECTS)


@dataclass(frozen=True)
class Workload:
    name: str
    tasks: tuple[str, ...]
    num_fewshot: int
    limit: int  # documents per task
    quick_limit: int  # documents per task under --quick
    description: str

    @property
    def few_shot(self) -> bool:
        return self.num_fewshot > 0

    def limit_for(self, quick: bool) -> int:
        return self.quick_limit if quick else self.limit


def by_name(*workloads: Workload) -> dict[str, Workload]:
    return {workload.name: workload for workload in workloads}


def _mmlu(kind: str) -> tuple[str, ...]:
    return tuple(mmlu_task_name(FULL_PREFIX, kind, subject) for subject in MMLU_SUBJECTS)


# Columns: name, tasks, num_fewshot, limit, quick_limit, description.
WORKLOADS: dict[str, Workload] = by_name(
    Workload("mmlu_5shot_letter", _mmlu("letter"), 5, 6, 2, "MMLU 5-shot, answer letters ' A'..' D' (4 subjects x 6 questions)"),
    Workload("mmlu_5shot_cloze", _mmlu("cloze"), 5, 6, 2, "MMLU 5-shot, answer texts (4 subjects x 6 questions)"),
    Workload("arc_easy_0shot", (task_name(FULL_PREFIX, "arc_easy"),), 0, 60, 4, "ARC-Easy 0-shot cloze (60 questions)"),
    Workload("hellaswag_0shot", (task_name(FULL_PREFIX, "hellaswag"),), 0, 40, 4, "HellaSwag 0-shot (40 contexts)"),
)


def select_workloads(names: str | None) -> list[Workload]:
    """The workloads named in a comma-separated list (all when `names` is empty)."""
    if not names:
        return list(WORKLOADS.values())
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; expected some of: {', '.join(WORKLOADS)}")
    return [WORKLOADS[name] for name in chosen]
