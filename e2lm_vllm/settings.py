"""Model arguments of `--model e2lm_vllm`, validated with pydantic, and the engine defaults.

This module is the one place that says what an argument means and what its default is; the
lm-eval model, the parity command, the sweep and the benchmark all build their engines from it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import Self

logger = logging.getLogger(__name__)

# vLLM on CPU: `gpu_memory_utilization` is a fraction of *CPU* RAM and its default (0.9) fails to
# start; an explicit KV-cache size also skips the warm-up pass used to size it
# (docs/measurements.md#engine-start).
CPU_KV_CACHE_BYTES = 1 << 30
# Prefix-cache granularity. CPU attention needs a multiple of 32; smaller blocks let more of a
# shared prefix be reused (the tail of a prefix shorter than a block is recomputed).
CPU_BLOCK_SIZE = 32
GPU_BLOCK_SIZE = 16
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9

# The engine's sampling seed unless the model args set one (`EngineSettings.seed`).
DEFAULT_SEED = 1234
# The context length doctor, the demo, bench and ladder_eval run at: the benchmark's (the long story
# document rolls over 2 windows). `EngineSettings.max_model_len` itself defaults to the model's.
DEFAULT_MAX_MODEL_LEN = 2048

# vLLM's CPU engine keeps one core per worker for its scheduler process: on a small machine that is
# half the compute (docs/measurements.md#vllm-on-small-cpus), while the scheduler waits during
# forward passes. Larger machines keep vLLM's default.
SMALL_CPU_MACHINE_CORES = 4

# A long-lived sweep worker keeps vLLM's engine core in its own process: a new engine (the first, or
# one for another model family) then skips spawning and importing a second process
# (docs/measurements.md#engine-start), and the worker's memory is one process to watch.
LONG_LIVED_WORKER_ENVIRONMENT = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@dataclasses.dataclass(frozen=True)
class RefusedArg:
    """A model arg that `e2lm_vllm` refuses: one of lm-eval's `vllm` model it does not implement (yet),
    or a vLLM engine arg that would make the engine load other weights or another config than the
    checkpoint that `pretrained` names (and that the weight scan and tokenizer checks read).

    `default` is lm-eval's (or vLLM's) default for it: passing that value changes nothing and is accepted.
    """

    default: Any
    reason: str


_LORA_REASON = (
    "LoRA adapters are not applied by e2lm_vllm's engine; merge the adapter into the weights "
    "(peft: `PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(folder)`) "
    "and pass that folder as pretrained=..."
)

_OTHER_WEIGHTS_REASON = (
    "the engine would load other weights than the checkpoint that pretrained=... names, which is the one "
    "checked for NaN/inf and whose tokenizer is checked; pass that checkpoint's folder as pretrained=..."
)
_OTHER_CONFIG_REASON = (
    "the engine would build the model from another config than the checkpoint's config.json, which the "
    "tokenizer checks and the weight-swap signature read; write the config you want into a copy of the "
    "checkpoint folder and pass that folder as pretrained=..."
)

# The one place that says which model args are refused, and why: lm-eval's `vllm` model args that we
# do not implement, and vLLM engine args that would score something else than the checkpoint named.
# Every other arg of `lm_eval.models.vllm_causallms.VLLM.__init__` is a `ModelArgs` field with
# lm-eval's meaning (tests/test_lm_eval_compat.py walks the live signature), every other vLLM
# `EngineArgs` field passes through (judged harmless: `served_model_name` is a label; `revision`,
# `tokenizer` and `tokenizer_mode` are our own args, applied to the checks and the engine alike;
# `quantization` is lm-eval's), and docs/lm_eval_compat.md lists them all.
REFUSED_VLLM_ARGS: dict[str, RefusedArg] = {
    "lora_local_path": RefusedArg(None, _LORA_REASON),
    "max_lora_rank": RefusedArg(16, _LORA_REASON),
    "tokenizer_revision": RefusedArg(
        None,
        "the tokenizer is read from a local folder: download the revision you want "
        "(`huggingface-cli download REPO --revision REV --local-dir DIR`) and pass tokenizer=DIR",
    ),
    # vLLM engine args, at vLLM's defaults.
    "model": RefusedArg(None, _OTHER_WEIGHTS_REASON),
    "model_weights": RefusedArg("", _OTHER_WEIGHTS_REASON),
    "load_format": RefusedArg(
        "auto",
        "the engine would not read the checkpoint's safetensors (else .bin) files, the ones checked for NaN/inf "
        "(dummy: random weights; pt, gguf, ...: other files); leave it at auto",
    ),
    "hf_config_path": RefusedArg(None, _OTHER_CONFIG_REASON),
    "config_format": RefusedArg("auto", _OTHER_CONFIG_REASON),
    "hf_overrides": RefusedArg(None, _OTHER_CONFIG_REASON),
}

# Args lm-eval's `vllm` model accepts and ignores with a warning; we do the same.
IGNORED_ARGS: dict[str, str] = {
    "swap_space": "swap_space is no longer supported by vLLM; ignoring it (as lm-eval's vllm model does)",
}

# The lm-eval models that load `ModelArgs`: ours (on vLLM unless `backend=hf`), or lm-eval's own HF
# model with the checks of the vLLM path (`e2lm_vllm.hf_checked`); a sweep's `engine.lm` picks one.
LmName = Literal["e2lm_vllm", "hf"]

# lm-eval's name for the context length (its `vllm` and `hf` models take either, not both).
MAX_LENGTH_ALIAS = "max_length"


class ModelArgsError(ValueError):
    """A `--model_args` value that is unknown or of the wrong type; the message lists the valid ones."""


def parse_model_args(text: str | None) -> dict[str, Any]:
    """`key=value,key=value` as `lm_eval --model_args` reads it, for every command that takes model args
    (`lm_eval`, `e2lm-vllm sweep`, `doctor`, `parity`): lm-eval's own typing of each value (true/false,
    none, ints, floats, '...' or "..." for a string), so one string means the same everywhere.
    An item without `=` is an error (lm-eval would read it as an empty value)."""
    from lm_eval.utils import handle_arg_string

    args: dict[str, Any] = {}
    for item in filter(None, (text or "").strip().split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ModelArgsError(f"expected key=value in model args, got {item!r}")
        args[key.strip()] = handle_arg_string(value)
    return args


class EngineSettings(BaseModel):
    """How a checkpoint is loaded and scored: every model arg except where the weights are.

    The one schema of engine settings: `ModelArgs` adds the checkpoint's location to it, the sweep's
    `engine:` section (`sweep.config.SweepEngineSettings`) adds which lm-eval model loads it, and the
    benchmark gives its backends one of these. A setting left unset keeps the default declared here
    (`overrides` lists the ones that were set).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokenizer: str | None = Field(None, description="tokenizer folder or repo id (default: pretrained)")
    dtype: str = Field("auto", description="weights dtype: auto, float32, bfloat16, float16")
    max_model_len: int | None = Field(None, gt=1, description="context length in tokens (lm-eval's max_length)")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="fraction of accelerator memory (on CPU: of RAM) for weights + KV cache"
    )
    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(
        1, ge=1, description="engines for one lm-eval run, each a Ray actor with tensor_parallel_size GPUs (lm-eval's name)"
    )
    enforce_eager: bool = Field(True, description="skip graph capture: faster start, right for scoring")
    seed: int = DEFAULT_SEED
    backend: Literal["auto", "vllm", "hf"] = "auto"
    add_bos_token: bool | None = Field(None, description="as lm-eval's HF model: None keeps the tokenizer's default")
    trust_remote_code: bool = False
    check_weights: bool = Field(
        True, description="refuse a checkpoint with NaN/inf weights before scoring it (one read of the weights)"
    )
    max_gen_toks: int = Field(256, gt=0, description="default generation budget when a task sets none")
    device: str | None = Field(None, description="HF backend only; default cpu when no CUDA is present")
    batch_size: int | str = Field(1, description="HF backend batch size; the vLLM engine schedules itself")
    max_batch_size: int | None = Field(
        None, gt=0, description="vLLM: max_num_seqs unless that is given (as lm-eval's vllm model); HF: its cap"
    )
    tokenizer_mode: Literal["auto", "slow"] = Field("auto", description="slow: the slow (Python) HF tokenizer")
    prefix_token_id: int | None = Field(None, ge=0, description="token before an empty context (default BOS, else EOS)")
    truncation_side: Literal["left", "right", "middle"] = Field(
        "left", description="how a too-long generation context is cut (loglikelihood always keeps its end)"
    )
    enable_thinking: bool | None = Field(None, description="passed to the chat template (generation tasks only)")
    chat_template_args: dict[str, Any] = Field(default_factory=dict, description="extra chat-template variables")
    think_end_token: str | None = Field(
        None, description="generations keep only the text after its last occurrence (a digit string: a token id)"
    )
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="other vLLM EngineArgs")

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        allowed = {"auto", "float32", "float", "bfloat16", "float16", "half"}
        if value not in allowed:
            raise ValueError(f"dtype must be one of {sorted(allowed)}")  # the error formatter adds (got ...)
        return value

    @field_validator("chat_template_args", mode="before")
    @classmethod
    def _parse_dict(cls, value: Any) -> Any:
        """`chat_template_args={'enable_thinking': False}` arrives from the CLI as a string."""
        if isinstance(value, str):
            import ast

            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise ValueError(f"expected a dict literal, got {value!r}") from None
        return {} if value is None else value

    @field_validator("engine_kwargs")
    @classmethod
    def _no_refused_engine_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Settings built directly (a sweep's `engine_kwargs:`, the benchmark) skip `ModelArgs.from_kwargs`."""
        refused = [reason for key, item in value.items() if (reason := refusal(key, item)) is not None]
        if refused:
            raise ValueError("; ".join(refused))
        return {key: item for key, item in value.items() if key not in REFUSED_VLLM_ARGS}

    @model_validator(mode="after")
    def _thinking_needs_its_end_token(self) -> EngineSettings:
        if self.enable_thinking and self.think_end_token is None:
            raise ValueError(
                "enable_thinking=True needs think_end_token (e.g. think_end_token=</think>), as in lm-eval's "
                "hf and vllm models: the answer is the text after it"
            )
        return self

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Self:
        """Split lm-eval's flat `key=value` arguments into ours and vLLM pass-through engine args.

        An unknown key that is not a vLLM `EngineArgs` field either is an error listing the valid keys.
        `EngineSettings.from_kwargs` reads settings without a checkpoint (a sweep's, whose checkpoints
        come from its `checkpoints:`); `ModelArgs.from_kwargs` also reads where the weights are.
        """
        kwargs = _without_refused_and_ignored(kwargs)
        if kwargs.get(MAX_LENGTH_ALIAS) is not None and kwargs.get("max_model_len") is not None:
            raise ModelArgsError("give max_length or max_model_len, not both (they are the same: the context length)")
        own = set(cls.model_fields) - {"engine_kwargs"}
        known = {key: value for key, value in kwargs.items() if key in own and value is not None}
        rest = {key: value for key, value in kwargs.items() if key not in own}
        if MAX_LENGTH_ALIAS in rest:
            length = rest.pop(MAX_LENGTH_ALIAS)
            if length is not None:
                known["max_model_len"] = length
        if rest:
            engine_fields = vllm_engine_arg_names()
            unknown = sorted(key for key in rest if key not in engine_fields)
            if unknown:
                valid = ", ".join(sorted(own))
                hint = "any vLLM EngineArgs field" if engine_fields else "(vLLM is not installed: no engine args)"
                raise ModelArgsError(
                    f"unknown e2lm_vllm model arg(s): {', '.join(unknown)}. Valid: {valid}; or {hint}"
                )
            known["engine_kwargs"] = rest
        try:
            return cls(**known)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, item['loc'])) or 'args'}: {item['msg']} (got {item.get('input')!r})"
                for item in error.errors()
            )
            raise ModelArgsError(f"invalid e2lm_vllm model args: {problems}") from None

    def located(self, pretrained: str, *, revision: str | None = None, subfolder: str | None = None) -> ModelArgs:
        """These settings for the checkpoint at `pretrained` (`revision`, `subfolder`), not validated again:
        a sweep validates its settings once, on the driver, and its workers only add each checkpoint."""
        settings = {name: getattr(self, name) for name in EngineSettings.model_fields}
        location = {"pretrained": pretrained, "revision": revision, "subfolder": subfolder}
        given = (self.model_fields_set & set(settings)) | {name for name, value in location.items() if value is not None}
        return ModelArgs.model_construct(_fields_set=given, **settings, **location)

    def overrides(self) -> dict[str, Any]:
        """The settings that were given, as lm-eval's flat model args (`ModelArgs.from_kwargs` reads
        them back): vLLM engine args at the top level; unset settings keep their defaults."""
        given = self.model_dump(exclude_unset=True)
        engine_args = given.pop("engine_kwargs", {})
        return {**given, **engine_args}


class ModelArgs(EngineSettings):
    """Arguments of the `e2lm_vllm` lm-eval model (`--model_args key=value,...`): where the weights
    are, and the `EngineSettings` to load them with."""

    pretrained: str = Field(description="local folder or HF repo id of the checkpoint")
    revision: str | None = Field(None, description="HF revision (branch, tag or commit)")
    subfolder: str | None = Field(None, description="checkpoint subfolder inside the repo, e.g. iter_0002000")


def _same_value(given: Any, default: Any) -> bool:
    return given == default or str(given) == str(default)


def refusal(key: str, value: Any) -> str | None:
    """Why `key=value` is refused (`REFUSED_VLLM_ARGS`), or None when it is not: not in the table, or
    given at its default (which changes nothing)."""
    refused = REFUSED_VLLM_ARGS.get(key)
    if refused is None or value is None or value == {} or _same_value(value, refused.default):
        return None
    return f"e2lm_vllm does not support {key}={value!r}: {refused.reason}"


def _without_refused_and_ignored(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` less the refused args given at lm-eval's default and the ignored ones; a refused arg
    given at any other value is an error saying why and what to use instead."""
    kept = {}
    for key, value in kwargs.items():
        if key in REFUSED_VLLM_ARGS:
            reason = refusal(key, value)
            if reason is not None:
                raise ModelArgsError(reason)
        elif key in IGNORED_ARGS:
            logger.warning("e2lm_vllm: %s", IGNORED_ARGS[key])
        else:
            kept[key] = value
    return kept


def vllm_engine_arg_names() -> frozenset[str]:
    """Field names of vLLM's `EngineArgs`, or nothing when vLLM is not importable."""
    try:
        from vllm.engine.arg_utils import EngineArgs
    except Exception:  # noqa: BLE001 - any import failure means "no vLLM here"
        return frozenset()
    return frozenset(field.name for field in dataclasses.fields(EngineArgs))


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def engine_kwargs(
    args: EngineSettings, *, model_path: str, tokenizer_path: str, max_model_len: int, on_cpu: bool
) -> dict[str, Any]:
    """The keyword arguments of `vllm.LLM` for these settings: our defaults, then the user's.

    `model_path` is the checkpoint already resolved to a local folder (revision and subfolder applied).
    """
    kwargs: dict[str, Any] = {
        "model": model_path,
        "tokenizer": tokenizer_path,
        "dtype": args.dtype,
        "max_model_len": max_model_len,
        "tensor_parallel_size": args.tensor_parallel_size,
        "enforce_eager": args.enforce_eager,
        "seed": args.seed,
        "trust_remote_code": args.trust_remote_code,
        # Prefix caching is the point: every shared prefix is computed once.
        "enable_prefix_caching": True,
        # We tokenize with the HF tokenizer exactly as lm-eval's HF model does and decode ourselves;
        # without a tokenizer, vLLM also never detokenizes prompt-logprob rows it did not compute.
        "skip_tokenizer_init": True,
        # Counters of computed vs cached prefill tokens (the benchmark reads them).
        "disable_log_stats": False,
        "block_size": CPU_BLOCK_SIZE if on_cpu else GPU_BLOCK_SIZE,
        # Worker methods for in-place weight swaps (engine.vllm_engine.VLLMEngine.swap_weights).
        "worker_extension_cls": "e2lm_vllm.engine.vllm_engine.WeightSwapExtension",
    }
    if args.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
    elif on_cpu:
        kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    else:
        kwargs["gpu_memory_utilization"] = DEFAULT_GPU_MEMORY_UTILIZATION
    if args.max_batch_size is not None:  # as lm-eval's vllm model: max_num_seqs wins when both are given
        kwargs["max_num_seqs"] = args.max_batch_size
    kwargs.update(args.engine_kwargs)
    return {key: value for key, value in kwargs.items() if value is not None}


def engine_environment(*, on_cpu: bool, cpu_count: int | None) -> dict[str, str]:
    """Environment defaults vLLM reads when its engine starts; a value the user set wins."""
    # vLLM logs to stdout by default, into lm-eval's result tables and our --json output.
    environment = {"VLLM_LOGGING_STREAM": "ext://sys.stderr"}
    if on_cpu and (cpu_count or 1) <= SMALL_CPU_MACHINE_CORES:
        environment["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return environment
