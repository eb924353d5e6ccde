"""Set-ups the sweep tests share: the small test tasks, and a sweep config over given checkpoints
written as the CLI's flags (`flags_config`) or as a sweep YAML's fields (`yaml_config`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

SWEEP_TASKS = Path(__file__).resolve().parent / "data" / "sweep_tasks"


def flags_config(
    checkpoints: Sequence[Path | str],
    output: Path,
    *,
    model_name: str,
    limit: int,
    lm: str,
    model_args: dict[str, Any] | None = None,
    **flags: Any,
):
    """``sweep_arc_easy`` over ``checkpoints`` from flags, in float32 unless ``model_args`` says otherwise."""
    from e2lm_vllm.sweep.config import config_from_flags

    return config_from_flags(
        checkpoints=[str(path) for path in checkpoints],
        model_name=model_name,
        tasks="sweep_arc_easy",
        include_path=[str(SWEEP_TASKS)],
        limit=limit,
        output=str(output),
        lm=lm,
        model_args={"dtype": "float32", **(model_args or {})},
        **flags,
    )


def yaml_config(checkpoints: Sequence[Path], output: Path, *, name: str, lm: str, **overrides: Any):
    """``sweep_arc_easy`` (2 documents) over ``checkpoints`` from a sweep YAML's fields, float32 at
    max_model_len 512; ``overrides`` are top-level fields, ``tensor_parallel_size`` an engine one."""
    from e2lm_vllm.sweep.config import validate_config

    engine = {"lm": lm, "dtype": "float32", "max_model_len": 512}
    if "tensor_parallel_size" in overrides:
        engine["tensor_parallel_size"] = overrides.pop("tensor_parallel_size")
    data = {
        "models": [{"name": name, "checkpoints": [{"paths": [str(p) for p in checkpoints]}]}],
        "tasks": ["sweep_arc_easy"],
        "include_paths": [str(SWEEP_TASKS)],
        "limit": 2,
        "engine": engine,
        "output": str(output),
        **overrides,
    }
    return validate_config(data)
