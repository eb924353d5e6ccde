"""Shared, expensive fixtures: the prepared real model, tiny random models of its architectures, ladders.

The model cache lives in the repo's ignored ``.cache/`` (``E2LM_VLLM_HOME`` is set for the whole
session, subprocesses included), so a fresh clone pays the GGUF conversion (~1 min) once and a
developer's later runs pay nothing.

Scoring work is the suite's budget on a CPU without AVX512 (vLLM ~7x slower per token there, engine
starts not slower): tests of mechanics (swaps, sweep faults, placement, watch, resume, trackers) run on
the tiny models; the real SmolLM2 only where real text or real-model numbers are the point. The prefill
tokens every engine of the session computed (Ray workers and CLIs included, through the engine's token
ledger) are reported per test at the end of the run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from e2lm_vllm.engine.vllm_engine import TOKEN_LEDGER_VARIABLE
from e2lm_vllm.offline import set_offline_defaults

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_HOME = REPO_ROOT / ".cache" / "test-home"
# Seeds of the tiny models: the ladder's random init uses seed 0, so its last rung (the tiny model) differs.
TINY_SEED = 1


# -- prefill tokens computed per test (the scoring work), from the engines' token ledger -------------

# Models at most this wide are the tiny ones (64): their tokens cost ~1/40 of SmolLM2-135M's (576 wide).
TINY_MAX_HIDDEN_SIZE = 128
_tokens_by_test: dict[str, tuple[int, int]] = {}  # nodeid -> (tokens on real-size models, on tiny ones)


def _ledger_totals() -> tuple[int, int]:
    real = tiny = 0
    try:
        with open(os.environ[TOKEN_LEDGER_VARIABLE]) as ledger:
            for line in ledger:
                tokens, hidden_size = (int(field) for field in line.split())
                if hidden_size <= TINY_MAX_HIDDEN_SIZE:
                    tiny += tokens
                else:
                    real += tokens
    except (KeyError, OSError):
        pass
    return real, tiny


def pytest_configure(config):
    # Before any fixture: Ray clusters and subprocesses started later inherit it.
    if TOKEN_LEDGER_VARIABLE not in os.environ:
        handle, path = tempfile.mkstemp(prefix="e2lm-token-ledger-", suffix=".txt")
        os.close(handle)
        os.environ[TOKEN_LEDGER_VARIABLE] = path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    real, tiny = _ledger_totals()
    yield
    real_after, tiny_after = _ledger_totals()
    _tokens_by_test[item.nodeid] = (real_after - real, tiny_after - tiny)


def pytest_terminal_summary(terminalreporter):
    scored = sorted(((counts, nodeid) for nodeid, counts in _tokens_by_test.items() if any(counts)), reverse=True)
    if not scored:
        return
    terminalreporter.section("prefill tokens computed by vLLM engines per test (setup, call, teardown)")
    terminalreporter.write_line(f"{'real-size':>9} {'tiny':>9}")
    for (real, tiny), nodeid in scored:
        terminalreporter.write_line(f"{real:>9} {tiny:>9} {nodeid}")
    real_total, tiny_total = (sum(counts[i] for counts, _ in scored) for i in (0, 1))
    terminalreporter.write_line(f"{real_total:>9} {tiny_total:>9} in all")


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


@pytest.fixture(scope="session")
def tiny_llama_path(smollm2_path: Path, e2lm_home: Path) -> Path:
    """SmolLM2's architecture and tokenizer, 2 layers of width 64, random weights (seed `TINY_SEED`)."""
    from e2lm_vllm.models.tiny import write_tiny_model

    return write_tiny_model(smollm2_path, e2lm_home / "tiny" / "smollm2-135m", seed=TINY_SEED)


@pytest.fixture(scope="session")
def tiny_gemma3_path(e2lm_home: Path) -> Path:
    """Gemma 3's architecture (a sliding and a full attention layer) and tokenizer, random weights."""
    from e2lm_vllm.models.prepare import prepare_model
    from e2lm_vllm.models.tiny import write_tiny_model

    return write_tiny_model(prepare_model("gemma3-270m"), e2lm_home / "tiny" / "gemma3-270m", seed=TINY_SEED)


@pytest.fixture(scope="session")
def tiny_ladder_dirs(tiny_llama_path: Path, e2lm_home: Path) -> list[Path]:
    """Three checkpoints of the tiny Llama (steps 0, 1000, 2000): for sweeps whose mechanics are tested."""
    from e2lm_vllm.models.ladder import write_ladder

    return write_ladder(tiny_llama_path, 3, e2lm_home / "ladders" / "tiny-smollm2-135m-3", seed=0)


@pytest.fixture(scope="module")
def engine_in_this_process():
    """As in a sweep worker: the engine core runs in the test's own process (starts faster, one process)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        yield


# -- one vLLM engine and one HFLM on the real model, shared by consecutive modules of one MAX_LENGTH ---
# (engine start dominates on 2 cores). Held from the first module that asks for one until a module that
# does not use it, so at most one of each is alive and no module needs another to have run first.

_held: dict[str, tuple[int, object]] = {}  # fixture name -> (max_length, lm)


def _max_length(item_or_request) -> int:
    return getattr(item_or_request.module, "MAX_LENGTH", 512)


def _held_lm(name: str, max_length: int, build):
    held = _held.get(name)
    if held is not None and held[0] == max_length:
        return held[1]
    _release(name)
    lm = build()
    _held[name] = (max_length, lm)
    return lm


def _release(name: str) -> None:
    held = _held.pop(name, None)
    if held is not None and hasattr(held[1], "shutdown"):
        held[1].shutdown()


def _module_uses(item, name: str, max_length: int) -> bool:
    same_module = [other for other in item.session.items if other.module is item.module]
    return _max_length(item) == max_length and any(name in other.fixturenames for other in same_module)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    if nextitem is not None and nextitem.module is item.module:
        return
    for name, (max_length, _) in list(_held.items()):
        if nextitem is None or not _module_uses(nextitem, name, max_length):
            _release(name)


@pytest.fixture(scope="module")
def vllm_lm(request, smollm2_path):
    """`e2lm_vllm` on the real model, float32, with the module's `MAX_LENGTH` (default 512)."""
    from e2lm_vllm.lm import E2LMVLLM

    max_length = _max_length(request)
    return _held_lm(
        "vllm_lm",
        max_length,
        lambda: E2LMVLLM(pretrained=str(smollm2_path), dtype="float32", max_model_len=max_length, backend="vllm"),
    )


@pytest.fixture(scope="module")
def hf_lm(request, smollm2_path):
    """lm-eval's own HFLM on the same model and context length: the parity reference."""
    from e2lm_vllm.lm import E2LMVLLM

    max_length = _max_length(request)
    args = {"pretrained": str(smollm2_path), "dtype": "float32", "max_model_len": max_length, "backend": "hf", "batch_size": 8}
    return _held_lm("hf_lm", max_length, lambda: E2LMVLLM.create_from_arg_obj(args))
