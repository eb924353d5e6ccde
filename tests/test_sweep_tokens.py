"""Token schedule of a sweep's model family: constant, listed, or a Megatron batch ramp-up. Fast, no Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from e2lm_vllm.quality.tokens import iteration_to_tokens
from e2lm_vllm.sweep.checkpoints import resolve_checkpoints
from e2lm_vllm.sweep.config import SweepConfigError, load_sweep_config, validate_config

REPO = Path(__file__).resolve().parents[1]
E2LM_JSON = REPO / "data" / "e2lm" / "plot-data-combined-all.json"
E2LM_RAMPUP = {
    "kind": "rampup",
    "global_batch_size": 1024,
    "seq_length": 4096,
    "rampup_start": 256,
    "rampup_increment": 256,
    "rampup_samples": 4_882_812,
}


def _family(**fields) -> dict:
    return {
        "models": [
            {
                "name": "m",
                "checkpoints": {"repo": "org/m", "subfolder_template": "iter_{step}", "steps": [0, 2000, 8000, 54000]},
                **fields,
            }
        ],
        "tasks": ["t"],
    }


def _tokens(**fields) -> list[float | None]:
    return [c.tokens for c in resolve_checkpoints(validate_config(_family(**fields)).models[0])]


def test_shipped_e2lm_example_tokens_are_the_organisers_gtokens():
    config = load_sweep_config(REPO / "ray_jobs" / "examples" / "e2lm_dense.yaml")
    published = json.loads(E2LM_JSON.read_text())["data"]
    compared = 0
    for family in config.models:
        gtokens = dict(zip(published[family.name]["iteration"], published[family.name]["gtokens"]))
        for checkpoint in resolve_checkpoints(family):
            if checkpoint.step in gtokens:
                assert checkpoint.tokens == pytest.approx(gtokens[checkpoint.step] * 1e9, rel=1e-12), (family.name, checkpoint.step)
                compared += 1
    # 5 families with a checkpoint every 2000 steps up to 54000, dense-500m-arch1 every 4000 only
    assert compared == 5 * 27 + 13
    # the 54000-step checkpoint saw 197.6 GT, 3.5x the 56.6 GT of a constant 1024 x 1024 tokens per step
    last = resolve_checkpoints(config.models[2])[-1]
    assert (last.step, round(last.tokens / 1e9, 1)) == (54000, 197.6)


def test_rampup_uses_the_scoring_conversion():
    steps = [0, 2000, 8000, 54000]
    assert _tokens(token_schedule=E2LM_RAMPUP) == pytest.approx(iteration_to_tokens(steps), rel=1e-15)
    megatron = _tokens(token_schedule={**E2LM_RAMPUP, "method": "megatron"})
    assert megatron == pytest.approx(iteration_to_tokens(steps, method="megatron"), rel=1e-15)
    assert megatron[2] == (6358 * 256 + 1642 * 512) * 4096
    # no ramp at all: the full batch from the first step
    flat = {**E2LM_RAMPUP, "rampup_start": 1024}
    assert _tokens(token_schedule=flat) == [s * 1024 * 4096 for s in steps]


def test_constant_and_listed_schedules_and_the_old_tokens_per_step():
    steps = np.array([0, 2000, 8000, 54000], dtype=float)
    assert _tokens(tokens_per_step=1000) == list(steps * 1000)
    assert _tokens(token_schedule={"kind": "constant", "tokens_per_step": 1000}) == list(steps * 1000)
    listed = {0: 0, 2000: 2.5e9, 8000: 1e10, 54000: 2e11}
    assert _tokens(token_schedule={"kind": "list", "tokens": listed}) == [0.0, 2.5e9, 1e10, 2e11]
    assert _tokens() == [None] * 4


def test_listed_schedule_missing_a_step_names_the_listed_steps():
    with pytest.raises(SweepConfigError, match=r"no entry for step 8000 \(listed steps: 0, 2000, 54000\)"):
        _tokens(token_schedule={"kind": "list", "tokens": {0: 0, 2000: 1e9, 54000: 2e11}})


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"kind": "ramp"}, "token_schedule: Value error, expected `kind` to be one of 'constant', 'list', 'rampup', got 'ramp'"),
        ({"tokens_per_step": 5}, "expected `kind` to be one of 'constant', 'list', 'rampup', got None"),
        ({"kind": "constant", "tokens_per_step": 0}, "token_schedule.constant.tokens_per_step: Input should be greater than 0"),
        ({"kind": "list", "tokens": {}}, "token_schedule.list.tokens: Dictionary should have at least 1 item"),
        ({"kind": "list", "tokens": {2000: -1}}, "expected steps and token counts >= 0, got {2000: -1.0}"),
        ({k: v for k, v in E2LM_RAMPUP.items() if k != "seq_length"}, "token_schedule.rampup.seq_length: Field required"),
        (
            {**E2LM_RAMPUP, "rampup_increment": 300},
            "expected global_batch_size = rampup_start + k * rampup_increment for some k >= 0, got 1024 = 256 + k * 300",
        ),
        ({**E2LM_RAMPUP, "method": "hf"}, "token_schedule.rampup.method: Input should be 'e2lm' or 'megatron'"),
        ({**E2LM_RAMPUP, "batch": 4}, "token_schedule.rampup.batch: Extra inputs are not permitted"),
    ],
)
def test_invalid_token_schedules_name_the_field_and_the_valid_values(schedule, expected):
    with pytest.raises(SweepConfigError) as error:
        validate_config(_family(token_schedule=schedule))
    assert expected in str(error.value)


def test_tokens_per_step_and_token_schedule_together_are_refused():
    with pytest.raises(SweepConfigError, match="expected either `tokens_per_step` or `token_schedule`, not both"):
        validate_config(_family(tokens_per_step=1, token_schedule=E2LM_RAMPUP))
