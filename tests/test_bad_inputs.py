"""Every bad input in docs/bad_inputs.md gives exactly the message that table shows. No engine, no Ray.

Each case below is one row of the table (its first column is the case id). The table is checked
against the cases both ways: a row without a case, a case without a row, or a message that
differs, fails. Rows whose test lives in another file name that test, which must exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from e2lm_vllm.sweep.cells import build_plan
from e2lm_vllm.sweep.checkpoints import resolve_checkpoints
from e2lm_vllm.sweep.config import config_from_flags, load_sweep_config, validate_config

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bad_inputs.md"
MODEL = {"name": "m", "checkpoints": {"repo": "org/m", "subfolder_template": "iter_{step}", "steps": [2000, 4000]}}
RAMPUP = {"kind": "rampup", "global_batch_size": 1024, "seq_length": 4096, "rampup_start": 256, "rampup_increment": 256, "rampup_samples": 4882812}


def _config(**overrides):
    return validate_config({"models": [MODEL], "tasks": ["arc_easy"], **overrides}, "sweep.yaml")


def _family(**fields):
    return _config(models=[{**MODEL, **fields}])


def _yaml_file(tmp: Path, text: str):
    (tmp / "sweep.yaml").write_text(text)
    return load_sweep_config(tmp / "sweep.yaml")


def _resolve(tmp: Path, source: dict):
    return resolve_checkpoints(_config(models=[{"name": "m", "checkpoints": source}]).models[0])


def _stepped_folder(tmp: Path, step) -> str:
    (tmp / "step_5").mkdir()
    (tmp / "step_5" / "config.json").write_text(json.dumps({"e2lm": {"step": step}}))
    return str(tmp / "step_5")


def _sweep_flags(*argv: str):
    import argparse

    from e2lm_vllm.sweep import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.build_config(parser.parse_args(argv))


def _plan(tmp: Path, tasks):
    return build_plan(_config(tasks=tasks), tmp / "out")


def _in_ray_job(tmp: Path):
    import os

    from e2lm_vllm.sweep.runner import run_sweep

    os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"] = "{}"
    try:
        return run_sweep(_config(output="results/x"))
    finally:
        del os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"]


def _locked_from_another_host(tmp: Path):
    from e2lm_vllm.sweep.lock import LOCK_NAME, acquire

    (tmp / "out").mkdir()
    owner = {"host": "gpu-node-7", "pid": 4242, "started": "2026-01-01T00:00:00+00:00", "pid_start": None, "token": "t"}
    (tmp / "out" / LOCK_NAME).write_text(json.dumps(owner))
    return acquire(tmp / "out")


def _cell_results(results: dict, task: str):
    from e2lm_vllm.sweep.rows import check_cell_results

    return check_cell_results({"results": results}, task)


def _model_args(**kwargs):
    from e2lm_vllm.settings import ModelArgs

    return ModelArgs.from_kwargs({"pretrained": "x", **kwargs})


def _without_vllm(tmp: Path, backend: str):
    """`backend` where `import vllm` really fails (as with a broken install): `None` in sys.modules."""
    import sys
    from unittest.mock import patch

    from e2lm_vllm.lm import resolve_backend
    from e2lm_vllm.settings import ModelArgs

    with patch.dict(sys.modules, {"vllm": None}):
        return resolve_backend(ModelArgs(pretrained="x", backend=backend))


def _checkpoint(tmp: Path, pretrained: str, **kwargs):
    from e2lm_vllm.checkpoint import resolve_checkpoint

    (tmp / "file.bin").write_text("")
    (tmp / "empty").mkdir(exist_ok=True)
    (tmp / "ckpt").mkdir(exist_ok=True)
    (tmp / "ckpt" / "config.json").write_text("{}")
    return resolve_checkpoint(pretrained.replace("DIR", str(tmp)), **kwargs)


def _diverged(tmp: Path):
    import torch
    from safetensors.torch import save_file

    from e2lm_vllm.checkpoint import check_finite_weights

    folder = tmp / "step_001000"
    folder.mkdir()
    up = torch.zeros(8, 4)
    up[3, 1] = float("nan")
    save_file({"model.layers.0.mlp.down_proj.weight": torch.zeros(4, 8), "model.layers.0.mlp.up_proj.weight": up}, folder / "model.safetensors")
    return check_finite_weights(folder)


def _score(tmp: Path, what: str):
    import pandas as pd

    from e2lm_vllm.quality.api import prepare_table
    from e2lm_vllm.quality.table import load_results

    if what == "missing":
        return load_results(tmp / "nope")
    if what == "folder":
        return load_results(tmp)
    table = pd.DataFrame({"model": ["m", "m"], "step": [1, 2], "task": ["arc_easy"] * 2, "metric": ["acc"] * 2, "value": [0.3, 0.4]})
    return prepare_table(table, tasks=["arc_challenge"])


def _ray_connect(tmp: Path, mode: str | None):
    """The sweep driver's message when `ray.init(address=...)` fails, with ``tmp`` as HOME (the real
    failure on a real head: tests/test_readme_ray.py)."""
    from e2lm_vllm.cluster.auth import RayAuthError, RayAuthState, connect_error_message

    if mode is None:  # a local sweep ran: ~/.ray/auth_token exists
        (tmp / ".ray").mkdir()
        (tmp / ".ray" / "auth_token").write_text("0" * 64)
    state = RayAuthState.read({} if mode is None else {"RAY_AUTH_MODE": mode}, home=tmp)
    raise RayAuthError(connect_error_message("HEAD:6379", state))


# id -> what raises, given a fresh folder; the message has that folder written as DIR.
CASES: dict[str, Callable[[Path], object]] = {
    "config-not-found": lambda tmp: load_sweep_config(tmp / "missing.yaml"),
    "config-not-yaml": lambda tmp: _yaml_file(tmp, "models: [unclosed"),
    "config-not-a-mapping": lambda tmp: _yaml_file(tmp, "- just a list"),
    "config-typo": lambda tmp: _config(engine={"gpu_memory_utilisation": 0.5}),
    "config-lm": lambda tmp: _config(engine={"lm": "gpt"}),
    "config-no-tasks": lambda tmp: _config(tasks=[]),
    "config-attempts": lambda tmp: _config(max_attempts=0),
    "config-source": lambda tmp: _config(models=[{"name": "m", "checkpoints": [{"repo": "x"}]}]),
    "config-template-without-steps": lambda tmp: _config(models=[{"name": "m", "checkpoints": {"repo": "x", "subfolder_template": "iter_{step}"}}]),
    "config-step-type": lambda tmp: _config(models=[{"name": "m", "checkpoints": {"repo": "x", "subfolders": [{"name": "iter_1", "step": "soon"}]}}]),
    "config-duplicate-family": lambda tmp: _config(models=[MODEL, MODEL]),
    "config-checkpoint-timeout": lambda tmp: _config(checkpoint_timeout_s=0),
    "flag-checkpoint-timeout": lambda tmp: _sweep_flags("--checkpoints", str(tmp / "step_1"), "--tasks", "t", "--checkpoint-timeout-s", "0"),
    "flag-model-arg-unknown": lambda tmp: _sweep_flags("--checkpoints", str(tmp / "step_1"), "--model-name", "m", "--tasks", "t", "--model-args", "max_modl_len=512"),
    "flags-missing": lambda tmp: config_from_flags(),
    "tokens-kind": lambda tmp: _family(token_schedule={"kind": "ramp"}),
    "tokens-both": lambda tmp: _family(tokens_per_step=1, token_schedule=RAMPUP),
    "tokens-rampup-field": lambda tmp: _family(token_schedule={k: v for k, v in RAMPUP.items() if k != "seq_length"}),
    "tokens-rampup-batches": lambda tmp: _family(token_schedule={**RAMPUP, "rampup_increment": 300}),
    "tokens-list-step": lambda tmp: resolve_checkpoints(_family(token_schedule={"kind": "list", "tokens": {2000: 2.1e9}}).models[0]),
    "checkpoint-glob": lambda tmp: _resolve(tmp, {"paths": [str(tmp / "step_*")]}),
    "checkpoint-no-step": lambda tmp: (tmp / "final").mkdir() or _resolve(tmp, {"paths": [str(tmp / "final")]}),
    "checkpoint-step-type": lambda tmp: _resolve(tmp, {"paths": [_stepped_folder(tmp, "soon")]}),
    "checkpoint-revision-no-step": lambda tmp: _resolve(tmp, {"repo": "org/m", "revisions": ["main"]}),
    "task-yaml-missing": lambda tmp: _plan(tmp, [str(tmp / "my_task.yaml")]),
    "task-yaml-no-name": lambda tmp: (tmp / "t.yaml").write_text(yaml.safe_dump({"dataset_path": "x"})) and _plan(tmp, [str(tmp / "t.yaml")]),
    "task-twice": lambda tmp: _plan(tmp, ["arc_easy", "arc_easy"]),
    "task-unknown": lambda tmp: _plan(tmp, ["arc_easyy"]),
    "task-tag-and-member": lambda tmp: _plan(tmp, ["ai2_arc", "arc_easy"]),
    "metric-non-finite": lambda tmp: _cell_results({"arc_easy": {"acc,none": 0.25, "acc_norm,none": float("nan")}}, "arc_easy"),
    "metric-none": lambda tmp: _cell_results({"arc_easy": {"acc,none": 0.25}}, "ai2_arc"),
    "output-relative-in-ray-job": _in_ray_job,
    "output-locked-elsewhere": _locked_from_another_host,
    "model-arg-unknown": lambda tmp: _model_args(dtpye="float32"),
    "model-arg-type": lambda tmp: _model_args(max_model_len="long"),
    "model-arg-dtype": lambda tmp: _model_args(dtype="fp8"),
    "model-arg-backend": lambda tmp: _model_args(backend="tpu"),
    "model-arg-other-weights": lambda tmp: _model_args(model="/runs/other/step_1000"),
    "model-arg-load-format": lambda tmp: _model_args(load_format="dummy"),
    "model-arg-hf-overrides": lambda tmp: _model_args(hf_overrides="{'num_hidden_layers': 2}"),
    "config-refused-engine-arg": lambda tmp: _config(engine={"extra": {"load_format": "dummy"}}),
    "backend-vllm-not-importable": lambda tmp: _without_vllm(tmp, "vllm"),
    "pretrained-not-found": lambda tmp: _checkpoint(tmp, "DIR/nope"),
    "pretrained-file": lambda tmp: _checkpoint(tmp, "DIR/file.bin"),
    "pretrained-revision-local": lambda tmp: _checkpoint(tmp, "DIR/ckpt", revision="main"),
    "pretrained-no-config": lambda tmp: _checkpoint(tmp, "DIR/empty"),
    "tokenizer-not-found": lambda tmp: _checkpoint(tmp, "DIR/ckpt", tokenizer=str(tmp / "tok")),
    "checkpoint-nan-weights": _diverged,
    "ray-auth-mode-unset": lambda tmp: _ray_connect(tmp, None),
    "ray-auth-token-missing": lambda tmp: _ray_connect(tmp, "token"),
    "score-missing": lambda tmp: _score(tmp, "missing"),
    "score-no-metrics": lambda tmp: _score(tmp, "folder"),
    "score-unknown-task": lambda tmp: _score(tmp, "task"),
}


def _message(case: str, tmp: Path) -> str:
    with pytest.raises(Exception) as error:
        CASES[case](tmp)
    return str(error.value).replace(str(tmp), "DIR")


def _doc_rows() -> dict[str, tuple[str, str]]:
    """id -> (test reference, message) of each row of the table in docs/bad_inputs.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        if not line.startswith("| `") or line.startswith("| `id"):
            continue
        cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        case, test, message = cells[0].strip("`"), cells[-2].strip("`"), cells[-1]
        lines = [re.sub(r"^`` ?| ?``$", "", part.strip()) for part in message.split("<br>")]
        rows[case] = (test, "\n".join(lines))
    return rows


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, tmp_path):
    rows = _doc_rows()
    assert case in rows, f"docs/bad_inputs.md has no row `{case}`"
    assert _message(case, tmp_path) == rows[case][1]


def test_every_row_of_the_table_is_tested():
    for case, (test, _) in _doc_rows().items():
        if case in CASES:
            assert test == f"test_bad_inputs.py::test_bad_input[{case}]", case
        else:
            file, name = test.split("::")
            assert re.search(rf"^def {re.escape(name.split('[')[0])}\(", (REPO / "tests" / file).read_text(), re.M), test
