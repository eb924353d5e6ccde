"""Shared, expensive fixtures: the prepared real model and a small synthetic ladder.

The model cache lives in the repo's ignored ``.cache/`` (``E2LM_VLLM_HOME`` is set for the whole
session, subprocesses included), so a fresh clone pays the GGUF conversion (~1 min) once and a
developer's later runs pay nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from e2lm_vllm.offline import set_offline_defaults

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_HOME = REPO_ROOT / ".cache" / "test-home"


@pytest.fixture(scope="session", autouse=True)
def e2lm_home() -> Path:
    """E2LM_VLLM_HOME for this session: tests never write to the user's cache."""
    TEST_HOME.mkdir(parents=True, exist_ok=True)
    os.environ["E2LM_VLLM_HOME"] = str(TEST_HOME)
    set_offline_defaults()
    return TEST_HOME


@pytest.fixture(scope="session")
def smollm2_path(e2lm_home: Path) -> Path:
    """Prepared SmolLM2-135M: float32 HF folder (config.json, model.safetensors, tokenizer)."""
    from e2lm_vllm.models.prepare import prepare_model

    return prepare_model("smollm2-135m")


@pytest.fixture(scope="session")
def ladder_dirs(smollm2_path: Path, e2lm_home: Path) -> list[Path]:
    """Three synthetic SmolLM2 checkpoints (steps 0, 1000, 2000), the last one the real weights."""
    from e2lm_vllm.models.ladder import write_ladder

    return write_ladder("smollm2-135m", 3, e2lm_home / "ladders" / "smollm2-135m-3", seed=0)


@pytest.fixture(scope="module")
def engine_in_this_process():
    """As in a sweep worker: the engine core runs in the test's own process (starts faster, one process)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        yield


# -- one vLLM engine and one HFLM per engine-test module (engine start dominates on 2 cores) -------


@pytest.fixture(scope="module")
def vllm_lm(request, smollm2_path):
    """`e2lm_vllm` on the real model, float32, with the module's `MAX_LENGTH` (default 512)."""
    from e2lm_vllm.lm import E2LMVLLM

    max_length = getattr(request.module, "MAX_LENGTH", 512)
    lm = E2LMVLLM(pretrained=str(smollm2_path), dtype="float32", max_model_len=max_length, backend="vllm")
    yield lm
    lm.shutdown()


@pytest.fixture(scope="module")
def hf_lm(request, smollm2_path):
    """lm-eval's own HFLM on the same model and context length: the parity reference."""
    from e2lm_vllm.lm import E2LMVLLM

    max_length = getattr(request.module, "MAX_LENGTH", 512)
    args = {"pretrained": str(smollm2_path), "dtype": "float32", "max_model_len": max_length, "backend": "hf", "batch_size": 8}
    return E2LMVLLM.create_from_arg_obj(args)
