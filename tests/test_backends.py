"""What you name is what runs: the backend asked for (or the fallback, said aloud), and no engine arg
that loads other weights or another config than the checkpoint that is checked. No engine, no model.

`import vllm` is made to fail for real (``None`` in ``sys.modules``: Python refuses the import), as
with a broken install. The NaN/inf checks of the HF backend are in tests/test_nonfinite.py.
"""

from __future__ import annotations

import logging
import sys
from unittest.mock import patch

import pytest
from pydantic import ValidationError

from e2lm_vllm.lm import resolve_backend
from e2lm_vllm.settings import REFUSED_VLLM_ARGS, EngineSettings, ModelArgs, ModelArgsError, vllm_engine_arg_names
from e2lm_vllm.sweep.config import SweepConfigError, validate_config

MODEL = {"name": "m", "checkpoints": {"repo": "org/m", "subfolder_template": "iter_{step}", "steps": [2000]}}


def test_auto_without_vllm_falls_back_to_hf_saying_why_at_warning(caplog):
    with patch.dict(sys.modules, {"vllm": None}), caplog.at_level(logging.WARNING, logger="e2lm_vllm.lm"):
        assert resolve_backend(ModelArgs(pretrained="x")) == "hf"
        assert resolve_backend(ModelArgs(pretrained="x", backend="hf")) == "hf"
        with pytest.raises(ModelArgsError, match=r"backend=vllm, but vLLM does not import here \(ModuleNotFoundError"):
            resolve_backend(ModelArgs(pretrained="x", backend="vllm"))
    (record,) = [record for record in caplog.records if record.name == "e2lm_vllm.lm"]  # backend=hf: no warning
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "e2lm_vllm: backend=auto and vLLM does not import here (ModuleNotFoundError: import of vllm halted; "
        "None in sys.modules): running lm-eval's HF model instead (backend=hf; results say backend hf). "
        "Pass backend=vllm to make this an error"
    )


def test_with_vllm_auto_is_vllm_without_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="e2lm_vllm.lm"):
        assert resolve_backend(ModelArgs(pretrained="x")) == "vllm"
    assert not caplog.records


def test_every_refused_engine_arg_is_a_vllm_engine_arg_refused_everywhere_but_at_its_default():
    """`lm_eval --model_args`, settings built directly (`engine_kwargs`), a sweep's `engine.extra` and a
    family's `model_args` all refuse them; at vLLM's default they change nothing and are accepted."""
    engine_fields = vllm_engine_arg_names()
    for name in ("model", "model_weights", "load_format", "hf_config_path", "config_format", "hf_overrides"):
        assert name in engine_fields and name in REFUSED_VLLM_ARGS, name
        reason = REFUSED_VLLM_ARGS[name].reason
        other = {"num_hidden_layers": 2} if name == "hf_overrides" else "/runs/other"
        with pytest.raises(ModelArgsError, match="e2lm_vllm does not support") as error:
            ModelArgs.from_kwargs({"pretrained": "x", name: other})
        assert reason in str(error.value)
        with pytest.raises(ValidationError, match="e2lm_vllm does not support"):
            EngineSettings(engine_kwargs={name: other})
        for where in ({"engine": {"extra": {name: other}}}, {"engine": {"engine_kwargs": {name: other}}}):
            with pytest.raises(SweepConfigError, match="e2lm_vllm does not support"):
                validate_config({"models": [MODEL], "tasks": ["arc_easy"], **where}, "sweep.yaml")
        with pytest.raises(SweepConfigError, match=r"models\.0\.model_args: Value error, e2lm_vllm does not support"):
            validate_config({"models": [{**MODEL, "model_args": {name: other}}], "tasks": ["arc_easy"]}, "sweep.yaml")
        default = REFUSED_VLLM_ARGS[name].default
        assert name not in ModelArgs.from_kwargs({"pretrained": "x", name: default}).engine_kwargs
        assert EngineSettings(engine_kwargs={name: default}).engine_kwargs == {}
    # Judged harmless, so passed through: a label, and what runs the same weights faster.
    assert ModelArgs.from_kwargs({"pretrained": "x", "served_model_name": "m", "max_num_seqs": 8}).engine_kwargs == {
        "served_model_name": "m", "max_num_seqs": 8,
    }  # fmt: skip
