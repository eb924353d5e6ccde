"""One home per fact: names and pins other modules use are those their home generates or declares."""

from __future__ import annotations

import yaml

from e2lm_vllm import demo, doctor
from e2lm_vllm.taskdata import SAMPLES_DIR


def _sample_names() -> set[str]:
    """Every task and group name of the committed sample suite (tasks/samples, written by the generator)."""
    names: set[str] = set()
    for path in SAMPLES_DIR.rglob("*.yaml"):
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        names |= {config[key] for key in ("task", "group") if isinstance(config.get(key), str)}
    return names


def test_doctor_demo_and_fidelity_name_generated_sample_tasks():
    from bench.fidelity import WORKLOADS

    used = {*doctor.PARITY_TASKS, *doctor.BENCH_TASKS, *demo.DEMO_TASKS, *demo.SAMPLE_TASKS}
    used |= {task for workload in WORKLOADS.values() for task in workload.tasks}
    assert used <= _sample_names(), used - _sample_names()
