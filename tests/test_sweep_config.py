"""Sweep definition: validation messages, checkpoint discovery, config hash, resume plan. Fast, no Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from e2lm_vllm.settings import ModelArgs
from e2lm_vllm.sweep.cells import build_plan, cell_tasks, include_paths_of
from e2lm_vllm.sweep.checkpoints import resolve_checkpoints, step_from_name
from e2lm_vllm.sweep.config import (
    SweepConfigError,
    config_from_flags,
    config_hash,
    load_sweep_config,
    validate_config,
)
from e2lm_vllm.sweep.inputs import TaskResolver

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "ray_jobs" / "examples"
TASKS_DIR = REPO / "tests" / "data" / "sweep_tasks"


def _folder(root: Path, name: str, e2lm: dict | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    config = {"model_type": "llama"}
    if e2lm is not None:
        config["e2lm"] = e2lm
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _config(**overrides) -> dict:
    base = {"models": [{"name": "m", "checkpoints": {"paths": ["/nonexistent/step_1"]}}], "tasks": ["arc_easy"]}
    return {**base, **overrides}


# --- validation ----------------------------------------------------------------------------------


def test_error_names_the_field_path_and_the_expectation():
    data = _config(models=[{"name": "m", "checkpoints": [{"repo": "tiiuae/dense-1b-arch1", "subfolders": [{"name": "iter_1", "step": "soon"}]}]}])
    with pytest.raises(SweepConfigError) as error:
        validate_config(data, "sweep.yaml")
    message = str(error.value)
    assert message.startswith("sweep.yaml: invalid sweep definition")
    assert "models.0.checkpoints.0.subfolders.subfolders.0.step: Input should be a valid integer" in message
    assert "'soon'" in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_config(tasks=[]), "tasks: List should have at least 1 item"),
        (_config(engine={"lm": "gpt"}), "engine.lm: Input should be 'e2lm_vllm' or 'hf'"),
        (_config(engine={"gpu_memory_utilisation": 0.5}), "engine.gpu_memory_utilisation: Extra inputs are not permitted"),
        (_config(models=[{"name": "m", "checkpoints": [{"repo": "x"}]}]), "models.0.checkpoints.0: expected a checkpoint source"),
        (
            _config(models=[{"name": "m", "checkpoints": [{"repo": "x", "subfolder_template": "iter_{step}"}]}]),
            "expected `subfolders`, or both `subfolder_template` and `steps`",
        ),
        (_config(models=[{"name": "m", "checkpoints": {"paths": ["a"]}}] * 2), "duplicates: ['m']"),
        (_config(max_attempts=0), "max_attempts: Input should be greater than or equal to 1"),
    ],
)
def test_invalid_configs_are_rejected_with_the_field(data, expected):
    with pytest.raises(SweepConfigError, match=None) as error:
        validate_config(data)
    assert expected in str(error.value)


def test_yaml_file_errors(tmp_path):
    with pytest.raises(SweepConfigError, match="sweep config not found"):
        load_sweep_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(SweepConfigError, match="not valid YAML"):
        load_sweep_config(bad)
    bad.write_text("- just a list")
    with pytest.raises(SweepConfigError, match="expected a mapping"):
        load_sweep_config(bad)


def test_flags_alone_need_checkpoints_and_tasks():
    with pytest.raises(SweepConfigError, match="--checkpoints and --tasks"):
        config_from_flags()
    with pytest.raises(SweepConfigError, match="--tasks"):
        config_from_flags(checkpoints=["/x/step_1"])


# --- checkpoint discovery ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "step"),
    [("iter_0002000", 2000), ("step_000300", 300), ("checkpoint-500", 500), ("final", None), ("v2-base", None), ("latest", None), ("step1000-unsharded", None), ("step1000", 1000)],
)
def test_step_from_trailing_number(name, step):
    assert step_from_name(name) == step


def test_local_glob_reads_steps_from_config_then_folder_name(tmp_path):
    _folder(tmp_path / "run", "step_000300")
    _folder(tmp_path / "run", "step_000100", e2lm={"step": 7, "tokens": 7.5e6})  # the config wins
    _folder(tmp_path / "run", "step_000200")
    config = config_from_flags(checkpoints=[str(tmp_path / "run" / "step_*")], tasks="t1, t2", limit=4)
    family = config.models[0]
    assert family.name == "run"  # the parent folder names the family
    checkpoints = resolve_checkpoints(family)
    assert [(c.step, Path(c.id).name, c.tokens) for c in checkpoints] == [
        (7, "step_000100", 7.5e6),
        (200, "step_000200", None),
        (300, "step_000300", None),
    ]
    assert checkpoints[0].model_args() == {"pretrained": str(tmp_path / "run" / "step_000100")}
    assert [t.name for t in config.tasks] == ["t1", "t2"] and config.limit == 4


def test_explicit_paths_steps_and_tokens_per_step(tmp_path):
    folder = _folder(tmp_path, "final")
    data = {
        "models": [
            {
                "name": "m",
                "tokens_per_step": 1000,
                "checkpoints": [{"paths": [{"name": str(folder), "step": 42}, str(tmp_path / "absent_9")]}],
            }
        ],
        "tasks": ["t"],
    }
    checkpoints = resolve_checkpoints(validate_config(data).models[0])
    # A missing explicit folder is kept: the worker reports it as a failed checkpoint.
    assert [(c.step, c.tokens, Path(c.id).name) for c in checkpoints] == [(9, 9000.0, "absent_9"), (42, 42000.0, "final")]


def test_unusable_local_sources_fail_at_discovery(tmp_path):
    _folder(tmp_path, "final")
    no_step = validate_config(_config(models=[{"name": "m", "checkpoints": {"paths": [str(tmp_path / "final")]}}]))
    with pytest.raises(SweepConfigError, match="no training step for .*final"):
        resolve_checkpoints(no_step.models[0])
    empty_glob = validate_config(_config(models=[{"name": "m", "checkpoints": {"paths": [str(tmp_path / "nope_*")]}}]))
    with pytest.raises(SweepConfigError, match="matches no folder"):
        resolve_checkpoints(empty_glob.models[0])


def test_hf_revisions_and_subfolders_need_no_network():
    data = _config(
        models=[
            {"name": "rev", "checkpoints": {"repo": "org/model", "revisions": ["step1000", {"name": "main", "step": 5000}]}},
            {
                "name": "dense-1b-arch1",
                "tokens_per_step": 4_194_304,
                "checkpoints": {
                    "repo": "tiiuae/dense-1b-arch1",
                    "subfolder_template": "iter_{step:07d}",
                    "steps": {"start": 2000, "stop": 54000, "every": 2000},
                },
            },
        ]
    )
    config = validate_config(data)
    revisions = resolve_checkpoints(config.models[0])
    assert [(c.id, c.step, c.revision) for c in revisions] == [("org/model@step1000", 1000, "step1000"), ("org/model@main", 5000, "main")]
    e2lm = resolve_checkpoints(config.models[1])
    assert len(e2lm) == 27
    assert (e2lm[0].id, e2lm[0].step, e2lm[0].tokens) == ("tiiuae/dense-1b-arch1/iter_0002000", 2000, 2000 * 4_194_304)
    assert e2lm[-1].model_args() == {"pretrained": "tiiuae/dense-1b-arch1", "subfolder": "iter_0054000"}


# --- example configs, hash, plan -----------------------------------------------------------------


def test_e2lm_example_covers_27_checkpoints_x_3_sizes_x_2_architectures():
    config = load_sweep_config(EXAMPLES / "e2lm_dense.yaml")
    checkpoints = [c for family in config.models for c in resolve_checkpoints(family)]
    assert len(config.models) == 6 and len(checkpoints) == 6 * 27
    assert {c.subfolder for c in checkpoints} == {f"iter_{s:07d}" for s in range(2000, 54001, 2000)}


def test_ladder_example_validates():
    config = load_sweep_config(EXAMPLES / "ladder.yaml")
    assert config.engine.lm == "e2lm_vllm" and [t.name for t in config.tasks]


def test_config_hash_is_stable_and_ignores_execution_fields():
    data = _config(limit=4, engine={"dtype": "float32", "seed": 1})
    reordered = {"engine": {"seed": 1, "dtype": "float32"}, "limit": 4, **{k: v for k, v in _config().items()}}
    assert config_hash(validate_config(data)) == config_hash(validate_config(reordered))
    assert config_hash(validate_config(data)) == config_hash(validate_config({**data, "output": "elsewhere", "workers": 8}))
    assert config_hash(validate_config(data)) != config_hash(validate_config({**data, "limit": 5}))
    assert len(config_hash(validate_config(data))) == 12


# Hashes of main before the engine section became `config.EngineSettings` (commit 1e227c5): the
# cell hash names each part file, so a rerun of an unchanged config must find the same ones done.
PINNED = {
    "dense.config_hash": "75698965ee51",
    "dense.cell_hashes": ["6dc3b3546c6a", "a1a8a9bec80d", "ed0a140c0c18", "f0e28c517e57", "f3f0245966c5"],
    "dense.engine_keys": ["1ad97fc80e3b"],
    "ladder.cell_hashes": ["232c2a3945b4", "50b8971ee293", "af19b9c3b6c3", "ef524e9a8332"],
    "variant.config_hash": "9a4d78bfe080",
    "variant.cell_hashes": ["3a98f22642ac", "871c1dd907f2", "9717f4f34fe2", "c3dcadd8b171"],
    "flags.cell_hashes": ["2d11a4b65a1a", "8b09d07c0546", "998acbc8432b", "e8231aea6a84"],
    "minimal.config_hash": "8b46e8c7b069",
}


def test_hashes_of_unchanged_configs_are_those_of_the_first_engine_section(tmp_path):
    dense = load_sweep_config(EXAMPLES / "e2lm_dense.yaml")
    plan = build_plan(dense, tmp_path / "dense")
    found = {
        "dense.config_hash": config_hash(dense),
        "dense.cell_hashes": sorted({cell.cell_hash for cell in plan.cells}),
        "dense.engine_keys": sorted({unit.engine_key for unit in plan.units}),
    }
    step = _folder(tmp_path / "run", "step_5")
    ladder = yaml.safe_load((EXAMPLES / "ladder.yaml").read_text())
    ladder["models"][0]["checkpoints"] = {"paths": [str(step)]}
    ladder_config = validate_config(ladder)
    found["ladder.cell_hashes"] = sorted({cell.cell_hash for cell in build_plan(ladder_config, tmp_path / "o").cells})
    # every field of the first section set, a family tokenizer and family args
    engine = {"lm": "e2lm_vllm", "backend": "vllm", "dtype": "float32", "enforce_eager": True, "batch_size": 8, "seed": 7,
              "max_model_len": 512, "tensor_parallel_size": 1, "extra": {"max_num_seqs": 16}}  # fmt: skip
    family = {"name": "f", "tokenizer": "/tok", "model_args": {"check_weights": False}}
    variant = {**ladder, "engine": engine, "models": [{**family, "checkpoints": {"paths": [str(step)]}}]}
    found["variant.cell_hashes"] = sorted({cell.cell_hash for cell in build_plan(validate_config(variant), tmp_path / "o").cells})
    found["variant.config_hash"] = config_hash(validate_config({**variant, "models": [{**family, "checkpoints": {"paths": ["/p/step_5"]}}]}))
    flags = config_from_flags(base=ladder_config, lm="hf", model_args={"dtype": "float32"}, limit=3)
    found["flags.cell_hashes"] = sorted({cell.cell_hash for cell in build_plan(flags, tmp_path / "o").cells})
    found["minimal.config_hash"] = config_hash(validate_config({"models": [{"name": "m", "checkpoints": {"paths": ["/p/step_1"]}}], "tasks": ["arc_easy"]}))
    assert found == PINNED


def test_engine_section_is_the_model_args_schema(tmp_path):
    step = _folder(tmp_path / "run", "step_5")
    engine = {"check_weights": False, "engine_kwargs": {"max_num_seqs": 8}, "enforce_eager": None}
    config = validate_config(_config(models=[{"name": "m", "checkpoints": {"paths": [str(step)]}}], engine=engine))
    (unit,) = build_plan(config, tmp_path / "o").units
    # the settings given reach the lm as they would from lm_eval's flat model args, and only those:
    # the defaults are `EngineSettings`' alone (none injected by the sweep); `enforce_eager: null` is
    # unset (the lm's default), as in the first sweeps
    flat = {"check_weights": False, "max_num_seqs": 8, "pretrained": str(step)}
    assert unit.model_args() == ModelArgs.from_kwargs(flat)
    assert unit.model_args().overrides() == flat
    assert config_hash(config) != config_hash(validate_config(_config(models=config.model_dump()["models"])))
    with pytest.raises(SweepConfigError, match=r"engine.dtype: Value error, dtype must be one of \['auto', "):
        validate_config(_config(engine={"dtype": "float8"}))


def test_task_yaml_path_gives_its_task_name_and_is_loaded_from_its_file():
    config = validate_config(_config(tasks=[str(TASKS_DIR / "sweep_arc_easy.yaml")]))
    (task,) = cell_tasks(config, TaskResolver(include_paths_of(config)))
    assert (task.name, task.source) == ("sweep_arc_easy", str((TASKS_DIR / "sweep_arc_easy.yaml").resolve()))


def test_plan_resumes_at_cell_granularity(tmp_path):
    for step in (1, 2):
        _folder(tmp_path / "run", f"step_{step}")
    config = config_from_flags(checkpoints=[str(tmp_path / "run" / "step_*")], tasks="sweep_arc_easy,sweep_arc_letter", include_path=[str(TASKS_DIR)], limit=2)
    output = tmp_path / "out"
    plan = build_plan(config, output)
    assert (len(plan.cells), len(plan.done), len(plan.units)) == (4, 0, 2)
    # Finish one cell the way the runner does; only the three others are left.
    from e2lm_vllm.sweep.tables import write_cell
    from e2lm_vllm.sweep.types import CellResult, UnitResult

    result = CellResult(key=plan.cells[0].key, metrics=[{"task": "sweep_arc_easy", "metric": "acc", "filter": "none", "value": 0.5}])
    write_cell(plan.cells[0], result, UnitResult("x", [result], 1.0, "vllm", {}, 1, "h"), output, engine_share=1.0)
    again = build_plan(config, output)
    assert [c.key for c in again.done] == [plan.cells[0].key]
    assert [len(u.cells) for u in again.units] == [1, 2]
    assert len(build_plan(config, output, force=True).missing) == 4
    # Another limit is another result: every cell is missing again.
    assert len(build_plan(config_from_flags(base=config, limit=3), output).missing) == 4


def test_flags_override_a_config_file(tmp_path):
    _folder(tmp_path / "run", "step_5")
    config_file = tmp_path / "sweep.yaml"
    config_file.write_text(yaml.safe_dump(_config(models=[{"name": "fam", "checkpoints": {"paths": [str(tmp_path / "run" / "step_*")]}}])))
    config = config_from_flags(base=load_sweep_config(config_file), tasks="x,y", output=str(tmp_path / "o"), lm="hf", model_args={"dtype": "float32"})
    assert [t.name for t in config.tasks] == ["x", "y"] and config.output == str(tmp_path / "o")
    assert config.engine.lm == "hf" and config.engine.extra == {"dtype": "float32"}
    assert config.models[0].name == "fam"



def test_consolidation_labels_cells_with_the_current_token_schedule(tmp_path):
    """Tokens label a checkpoint (not in the cell hash): a corrected schedule relabels cells already written."""
    import pandas as pd

    from e2lm_vllm.sweep.tables import consolidate, write_cell
    from e2lm_vllm.sweep.types import CellResult, UnitResult

    for step in (1000, 2000):
        (tmp_path / "run" / f"step_{step}").mkdir(parents=True)
    output = tmp_path / "out"

    def plan_with(tokens_per_step: float):
        data = {
            "models": [{"name": "m", "checkpoints": {"paths": [str(tmp_path / "run" / "step_*")]}, "tokens_per_step": tokens_per_step}],
            "tasks": ["sweep_arc_easy"],
            "include_paths": [str(TASKS_DIR)],
            "output": str(output),
        }
        return build_plan(validate_config(data), output)

    old = plan_with(1.0)
    for cell in old.missing:
        result = CellResult(key=cell.key, metrics=[{"task": "sweep_arc_easy", "metric": "acc", "filter": "none", "value": 0.5}])
        write_cell(cell, result, UnitResult("x", [result], 1.0, "vllm", {}, 1, "h"), output, engine_share=1.0)
    consolidate(old, output)
    assert sorted(pd.read_parquet(output / "metrics.parquet").tokens) == [1000.0, 2000.0]
    corrected = plan_with(4.0)
    assert not corrected.missing  # nothing to recompute
    consolidate(corrected, output)
    assert sorted(pd.read_parquet(output / "metrics.parquet").tokens) == [4000.0, 8000.0]


def test_data_parallel_size_is_refused_in_a_sweep() -> None:
    with pytest.raises((SweepConfigError, ValueError), match="one engine per worker"):
        config_from_flags(checkpoints=["x"], tasks="arc_easy", model_args={"data_parallel_size": 2}, output="/tmp/x")


def _flags(*argv: str):
    import argparse

    from e2lm_vllm.sweep import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


# `--model-args` are read as `lm_eval --model_args` reads them (`settings.parse_model_args`); before,
# the sweep read them as YAML scalars. For the values both read alike, cell hashes and engine keys are
# those of main before (computed there from the same flags).
MODEL_ARGS_FLAG = "dtype=float32,max_model_len=512,enforce_eager=false,gpu_memory_utilization=0.5,seed=0,check_weights=False,backend=vllm,max_num_seqs=8,tokenizer=/tok"
PINNED_MODEL_ARGS_FLAG = {"cells": ["7ddd9f657293", "afbd60d181ae"], "engine": ["6a429fcbac8a"]}


def test_model_args_flag_keeps_the_hashes_it_had(tmp_path):
    from e2lm_vllm.sweep import cli

    step = _folder(tmp_path / "run", "step_5")
    argv = ["--checkpoints", str(step), "--model-name", "m", "--tasks", "sweep_arc_easy,sweep_arc_letter"]
    argv += ["--include-path", str(TASKS_DIR), "--output", str(tmp_path / "o"), "--model-args", MODEL_ARGS_FLAG]
    plan = build_plan(cli.build_config(_flags(*argv)), tmp_path / "o")
    found = {"cells": sorted({cell.cell_hash for cell in plan.cells}), "engine": sorted({unit.engine_key for unit in plan.units})}
    assert found == PINNED_MODEL_ARGS_FLAG


def test_a_model_arg_typo_fails_on_the_driver_before_ray_starts(tmp_path, capsys):
    """`--model-args max_modl_len=512` is found when the config is built, not on a worker once Ray runs."""
    import time

    import ray

    from e2lm_vllm.sweep import cli

    step = _folder(tmp_path / "run", "step_5")
    argv = ["--checkpoints", str(step), "--tasks", "arc_easy", "--output", str(tmp_path / "o"), "--model-args", "max_modl_len=512"]
    expected = r"model args of family 'run': unknown e2lm_vllm model arg\(s\): max_modl_len\. Valid: .*max_model_len"
    with pytest.raises(SweepConfigError, match=expected):
        cli.build_config(_flags(*argv))
    started = time.monotonic()
    assert cli.main(argv) == 2
    assert not ray.is_initialized() and time.monotonic() - started < 30
    error = capsys.readouterr().err
    assert error.startswith("e2lm-vllm sweep: command-line flags: invalid sweep definition") and "max_modl_len" in error, error


def test_a_family_cannot_relocate_its_weights_in_model_args(tmp_path):
    family = {"name": "m", "checkpoints": {"paths": ["/p/step_1"]}, "model_args": {"subfolder": "iter_1"}}
    with pytest.raises(SweepConfigError, match=r"model args of family 'm': subfolder is where the weights are"):
        validate_config(_config(models=[family]))
