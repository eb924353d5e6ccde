"""`lm_eval --model e2lm_vllm`: lm-eval's `TemplateLM` on a vLLM engine, exact against lm-eval's HFLM.

Tokenization, truncation, rolling windows and generation post-processing follow lm-eval's HF model
step by step (reusing its helpers), so the two backends see the same tokens; only the forward
passes run on an engine (`e2lm_vllm.engine.protocol.ScoringEngine`, vLLM's in `e2lm_vllm.engine.vllm_engine`),
planned by `e2lm_vllm.engine.planner` so that shared prefixes are computed once.

`E2LMVLLM(...)` is always the model on vLLM. lm-eval builds models through `create_from_arg_string`
and `create_from_arg_obj`, which dispatch on `backend` (`build_lm`): `backend=hf` (or `auto` where
vLLM does not import, with a warning) gives lm-eval's own `HFLM` on the same args with the same
NaN/inf checks (`e2lm_vllm.hf_checked`), the parity reference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from typing import Any, get_args

from lm_eval import utils as lm_utils
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    Collator,
    _add_special_kwargs,
    handle_stop_sequences,
    has_bos_prefix,
    maybe_truncate,
    normalize_gen_kwargs,
    postprocess_generated_text,
    resolve_max_length,
)
from lm_eval.utils import warning_once
from tqdm import tqdm

from e2lm_vllm.checkpoint import (
    CheckpointMismatchError,
    check_finite_weights,
    check_tokenizer_fits,
    resolve_checkpoint,
    swap_signature,
)
from e2lm_vllm.engine.planner import plan_scoring
from e2lm_vllm.engine.protocol import ScoringEngine
from e2lm_vllm.engine.types import ScoreRequest, ScoringPlan
from e2lm_vllm.settings import (
    EngineSettings,
    LmName,
    ModelArgs,
    ModelArgsError,
    cuda_available,
    engine_environment,
    engine_kwargs,
    parse_model_args,
)

logger = logging.getLogger(__name__)

# Requests planned together: large enough that a few-shot block is primed once for many questions,
# small enough that the primed prefixes are still in the KV cache when their readers run.
PLAN_CHUNK_REQUESTS = 512
# vLLM scores a prompt of up to max_model_len tokens and must emit one token after it; HFLM's
# window is max_length + 1 tokens (it drops the last from its input). The engine needs both.
ENGINE_EXTRA_POSITIONS = 2
# Per-request sampling seeds stay below this (vLLM seeds a torch generator with them).
SEED_MODULUS = 2**31
SAMPLING_WARNING = (
    "e2lm_vllm: sampled generation (temperature > 0) runs through vLLM's sampler with a per-request seed "
    "derived from the model's seed (or gen_kwargs seed), the request and its repeat index: reruns repeat, "
    "but the samples are not those of lm-eval's HF model. Greedy generation is exact."
)


def vllm_import_error() -> str | None:
    """Why vLLM does not import here (``ImportError: ...``), or None when it does."""
    try:
        import vllm  # noqa: F401
    except Exception as error:  # noqa: BLE001 - a broken install is as unusable as a missing one
        return f"{type(error).__name__}: {error}"
    return None


def vllm_importable() -> bool:
    return vllm_import_error() is None


def build_hf_lm(args: ModelArgs) -> Any:
    """lm-eval's own HFLM with the same checkpoint and context length, and the checks of the vLLM
    path (`e2lm_vllm.hf_checked.CheckedHFLM`): the parity reference, and ``backend=hf``."""
    from e2lm_vllm.hf_checked import CheckedHFLM

    kwargs: dict[str, Any] = {
        "pretrained": args.pretrained,
        "dtype": args.dtype,
        "device": args.device or ("cuda" if cuda_available() else "cpu"),
        "batch_size": args.batch_size,
        "trust_remote_code": args.trust_remote_code,
    }
    optional = {
        "revision": args.revision,
        "subfolder": args.subfolder,
        "tokenizer": args.tokenizer,
        "max_length": args.max_model_len,
        "add_bos_token": args.add_bos_token,
        "max_batch_size": args.max_batch_size,
        "prefix_token_id": args.prefix_token_id,
        "think_end_token": args.think_end_token,
        "enable_thinking": args.enable_thinking,
        "chat_template_args": args.chat_template_args or None,
        "use_fast_tokenizer": False if args.tokenizer_mode == "slow" else None,
    }
    if args.truncation_side != "left":
        raise ModelArgsError(f"truncation_side={args.truncation_side!r} needs backend=vllm: lm-eval's HF model cuts left")
    kwargs.update({key: value for key, value in optional.items() if value is not None})
    return CheckedHFLM(check_weights=args.check_weights, **kwargs)


def resolve_backend(args: EngineSettings) -> str:
    """``vllm`` or ``hf``: the backend `build_lm` gives these args.

    ``auto`` is vLLM when it imports, else HF with a warning naming the import error; ``vllm`` where
    vLLM does not import is an error naming it (never a silent run on another backend).
    """
    if args.backend == "hf":
        return "hf"
    error = vllm_import_error()
    if error is None:
        return "vllm"
    if args.backend == "vllm":
        raise ModelArgsError(
            f"backend=vllm, but vLLM does not import here ({error}); fix the install (`e2lm-vllm doctor` "
            "checks it) or pass backend=hf for lm-eval's HF model"
        )
    logger.warning(
        "e2lm_vllm: backend=auto and vLLM does not import here (%s): running lm-eval's HF model instead "
        "(backend=hf; results say backend hf). Pass backend=vllm to make this an error",
        error,
    )
    return "hf"


def build_lm(args: ModelArgs, lm: LmName = "e2lm_vllm") -> TemplateLM:
    """The lm-eval model for these args: `E2LMVLLM`, or lm-eval's `HFLM` (checked) for ``backend=hf``
    or ``lm="hf"`` (a sweep's `engine.lm`)."""
    if lm not in get_args(LmName):
        raise ModelArgsError(f"unknown lm {lm!r}: expected one of {', '.join(get_args(LmName))}")
    if lm == "e2lm_vllm" and resolve_backend(args) == "vllm":
        return E2LMVLLM(args)
    return build_hf_lm(args)


def sampling_seeds(arguments: list[tuple[str, dict]], model_seed: int) -> list[int]:
    """One seed per generation request: from the base seed (gen_kwargs `seed`, else the model's), the
    request, and its repeat index (a task's `repeats` lists a request N times), so that reruns repeat
    and repeats differ."""
    seen: dict[str, int] = {}
    seeds = []
    for context, gen_kwargs in arguments:
        base = gen_kwargs.get("seed", model_seed) if isinstance(gen_kwargs, dict) else model_seed
        key = json.dumps([base, context, gen_kwargs], sort_keys=True, default=str)
        repeat = seen.get(key, 0)
        seen[key] = repeat + 1
        digest = hashlib.sha256(f"{key}\x00{repeat}".encode()).digest()
        seeds.append(int.from_bytes(digest[:8], "big") % SEED_MODULUS)
    return seeds


@register_model("e2lm_vllm")
class E2LMVLLM(TemplateLM):
    """lm-eval model on vLLM with prefix-aware exact scoring. See `e2lm_vllm.settings.ModelArgs`."""

    def __init__(self, args: ModelArgs | None = None, /, **kwargs: Any) -> None:
        """``E2LMVLLM(pretrained=..., dtype=...)`` (lm-eval's flat model args) or ``E2LMVLLM(model_args)``."""
        super().__init__()
        import transformers

        from e2lm_vllm.engine.vllm_engine import VLLMEngine

        if args is not None and kwargs:
            raise TypeError("E2LMVLLM takes a ModelArgs or keyword model args, not both")
        self.args = args if args is not None else ModelArgs.from_kwargs(kwargs)
        if self.args.backend == "hf":
            raise ModelArgsError(
                "E2LMVLLM runs on vLLM; backend=hf is lm-eval's HFLM: build it with "
                "E2LMVLLM.create_from_arg_obj(...) or e2lm_vllm.lm.build_lm(ModelArgs(...))"
            )
        error = vllm_import_error()
        if error is not None:
            raise ModelArgsError(
                f"E2LMVLLM needs vLLM, which does not import here ({error}); backend=hf (or create_from_arg_obj "
                "with backend=auto) runs lm-eval's HFLM instead"
            )
        self.checkpoint = resolve_checkpoint(
            self.args.pretrained,
            revision=self.args.revision,
            subfolder=self.args.subfolder,
            tokenizer=self.args.tokenizer,
        )
        if self.args.check_weights:  # a diverged checkpoint is an error, never a score
            check_finite_weights(self.checkpoint.model_path)
        tokenizer_kwargs: dict[str, Any] = {
            "use_fast": self.args.tokenizer_mode != "slow",
            "trust_remote_code": self.args.trust_remote_code,
        }
        if self.args.add_bos_token is not None:
            tokenizer_kwargs["add_bos_token"] = self.args.add_bos_token
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(self.checkpoint.tokenizer_path), **tokenizer_kwargs
        )
        self.add_bos_token = self.args.add_bos_token
        config = transformers.AutoConfig.from_pretrained(
            str(self.checkpoint.model_path), trust_remote_code=self.args.trust_remote_code
        )
        check_tokenizer_fits(self.tokenizer, config, self.checkpoint)
        model_limit = resolve_max_length(config, self.tokenizer)
        if self.args.max_model_len and self.args.max_model_len > model_limit:
            raise ModelArgsError(
                f"max_model_len={self.args.max_model_len} is above the model's limit of {model_limit} positions "
                f"(config.json of {self.checkpoint.model_path}); use at most {model_limit - ENGINE_EXTRA_POSITIONS}, "
                f"or leave it unset"
            )
        # HFLM's window is max_length + 1 tokens; the engine must hold it (see ENGINE_EXTRA_POSITIONS).
        self._max_length = min(self.args.max_model_len or model_limit, model_limit - ENGINE_EXTRA_POSITIONS)
        if self.args.max_model_len and self.args.max_model_len > self._max_length:
            logger.warning(
                "e2lm_vllm: max_model_len=%d lowered to %d: the engine needs %d positions beyond it",
                self.args.max_model_len, self._max_length, ENGINE_EXTRA_POSITIONS,
            )
        on_cpu = not cuda_available()
        cpus = len(os.sched_getaffinity(0))
        llm_kwargs = engine_kwargs(
            self.args,
            model_path=str(self.checkpoint.model_path),
            tokenizer_path=str(self.checkpoint.tokenizer_path),
            max_model_len=self._max_length + ENGINE_EXTRA_POSITIONS,
            on_cpu=on_cpu,
        )
        self.engine: ScoringEngine
        if self.args.data_parallel_size > 1:
            from e2lm_vllm.engine.data_parallel import DataParallelEngine

            size = self.args.data_parallel_size
            per_engine = max(1, cpus // size)
            environment = engine_environment(on_cpu=on_cpu, cpu_count=per_engine)
            self.engine = DataParallelEngine(llm_kwargs, environment, size=size, cpus_per_engine=per_engine)
        else:
            self.engine = VLLMEngine(llm_kwargs, engine_environment(on_cpu=on_cpu, cpu_count=cpus))
        self.swap_signature = swap_signature(self.checkpoint)
        self.truncated_requests = 0
        # Weight-independent work, kept for the life of this lm (one tokenizer, max_length and block
        # size), so that a sweep that swaps checkpoints pays it once per model family: the tokens of
        # each (context, continuation) pair, and the plan of each chunk of tokenized requests.
        self._pair_tokens: dict[tuple[str, str], tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._plans: dict[tuple[ScoreRequest, ...], ScoringPlan] = {}
        self._stop_tokens: dict[tuple[str, ...], list[int]] = {}
        # Seconds spent tokenizing, planning and in the engine; the sweep reports them per checkpoint.
        self.timings: Counter[str] = Counter()

    def load_checkpoint(self, pretrained: str, *, revision: str | None = None, subfolder: str | None = None) -> list[str]:
        """Score another checkpoint of the same model family: only the engine's weights change.

        Raises `CheckpointMismatchError` when its architecture, dtype or tokenizer differ (a new lm
        is needed then). Returns the modules the engine refreshed beyond vLLM's reload (tied heads).
        """
        checkpoint = resolve_checkpoint(pretrained, revision=revision, subfolder=subfolder, tokenizer=self.args.tokenizer)
        if self.args.check_weights:
            check_finite_weights(checkpoint.model_path)
        signature = swap_signature(checkpoint)
        if signature != self.swap_signature:
            raise CheckpointMismatchError(
                f"{checkpoint.model_path} is not of the family of {self.checkpoint.model_path} "
                "(config.json or tokenizer differ): it needs an engine of its own"
            )
        refreshed = self.engine.swap_weights(str(checkpoint.model_path))
        self.checkpoint = checkpoint
        self.args = self.args.model_copy(update={"pretrained": pretrained, "revision": revision, "subfolder": subfolder})
        return refreshed

    def shutdown(self) -> None:
        """Free the engine (a long-lived process builds the next lm only after)."""
        self.engine.shutdown()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> TemplateLM:
        return cls.create_from_arg_obj(parse_model_args(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> TemplateLM:
        """lm-eval's entry point: an `E2LMVLLM`, or lm-eval's `HFLM` for ``backend=hf`` (`build_lm`)."""
        extra = {key: value for key, value in (additional_config or {}).items() if value is not None}
        return build_lm(ModelArgs.from_kwargs({**extra, **arg_dict}))

    # -- tokenization, as lm-eval's HFLM ---------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.args.prefix_token_id is not None:
            return self.args.prefix_token_id
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self.args.max_gen_toks

    # -- chat templates, as lm-eval's HFLM (its own methods, on our tokenizer) -------------------

    @property
    def tokenizer_name(self) -> str:
        from lm_eval.models.huggingface import HFLM

        return HFLM.tokenizer_name.fget(self)

    @property
    def chat_template_args(self) -> dict[str, Any]:
        """What HFLM passes to `tokenizer.apply_chat_template`: chat_template_args, plus enable_thinking if set."""
        extra = {} if self.args.enable_thinking is None else {"enable_thinking": self.args.enable_thinking}
        return {**self.args.chat_template_args, **extra}

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        from lm_eval.models.huggingface import HFLM

        return HFLM.apply_chat_template(self, chat_history, add_generation_prompt)

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kwargs: Any
    ) -> list[int]:
        special_tokens_kwargs = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special_tokens_kwargs["add_special_tokens"] = False
        encoding = self.tokenizer.encode(string, **special_tokens_kwargs)
        if left_truncate_len:
            encoding = encoding[-left_truncate_len:]
        return encoding

    def _generation_context_tokens(self, context: str) -> list[int]:
        """Context tokens as HFLM's `tok_batch_encode` makes them for generation."""
        special: dict[str, bool] = {}
        if has_bos_prefix(context, getattr(self.tokenizer, "bos_token", None)):
            special = {"add_special_tokens": False}
        elif self.add_bos_token is not None:
            special = {"add_special_tokens": self.add_bos_token}
        return self.tokenizer(context, **special)["input_ids"]

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """HFLM's split of a request into tokens (lm-eval's own), computed once per lm."""
        tokens = self._pair_tokens.get((context, continuation))
        if tokens is None:
            started = time.perf_counter()
            context_tokens, continuation_tokens = super()._encode_pair(context, continuation)
            tokens = self._pair_tokens[(context, continuation)] = (tuple(context_tokens), tuple(continuation_tokens))
            self.timings["tokenize"] += time.perf_counter() - started
        return list(tokens[0]), list(tokens[1])

    def _plan(self, requests: tuple[ScoreRequest, ...]) -> ScoringPlan:
        """The plan of one chunk; pure in the tokens, max_length and block size, so computed once per lm."""
        plan = self._plans.get(requests)
        if plan is None:
            started = time.perf_counter()
            plan = self._plans[requests] = plan_scoring(
                list(requests), max_length=self.max_length, block_size=self.engine.block_size
            )
            self.timings["plan"] += time.perf_counter() - started
        return plan

    # -- loglikelihood ---------------------------------------------------------------------------

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if self.args.enable_thinking:
            tasks = sorted({request.task_name for request in requests if request.task_name})
            raise ValueError(
                "enable_thinking=True is not compatible with loglikelihood tasks (as in lm-eval's hf and vllm "
                f"models); use generative tasks only. Triggered by task(s): {', '.join(tasks)}"
            )
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str] | None, list[int], list[int]]],
        disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        for key, _, continuation in requests:
            if not continuation:
                # lm-eval's HFLM asserts the same: an empty continuation has nothing to score.
                raise ValueError(f"empty continuation for the request {key!r}: nothing to score")
        # Sorting by the whole token sequence puts requests that share prefixes next to each other,
        # so one chunk holds a few-shot block with many of its questions and all of their choices.
        collator = Collator(requests, sort_fn=lambda request: request[1] + request[2])
        chunks = list(collator.get_batched(n=PLAN_CHUNK_REQUESTS))
        plans = [
            self._plan(tuple(ScoreRequest(tuple(context), tuple(continuation)) for _, context, continuation in chunk))
            for chunk in chunks
        ]
        self.truncated_requests += sum(plan.num_truncated for plan in plans)
        results: list[tuple[float, bool]] = []
        with tqdm(total=len(requests), disable=disable_tqdm, desc="e2lm_vllm loglikelihood") as bar:
            # All chunks at once: one engine runs them in order, `data_parallel_size` engines share them.
            started = time.perf_counter()
            scored_chunks = self.engine.run_plans(plans, progress=bar.update)
            self.timings["engine"] += time.perf_counter() - started
        for chunk, scored in zip(chunks, scored_chunks):
            for (key, _, _), result in zip(chunk, scored):
                answer = (result.logprob, result.is_greedy)
                results.append(answer)
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
        return collator.get_original(results)

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Disjoint rolling windows exactly as lm-eval's HFLM makes them; all windows scored at once."""
        windows: list[tuple[None, list[int], list[int]]] = []
        window_counts: list[int] = []
        for (string,) in (request.args for request in requests):
            document_windows = [
                lm_utils.make_disjoint_window(window)
                for window in lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            windows.extend((None, context, continuation) for context, continuation in document_windows)
            window_counts.append(len(document_windows))
        scored = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals: list[float] = []
        offset = 0
        for request, count in zip(requests, window_counts):
            total = sum(logprob for logprob, _ in scored[offset : offset + count])
            offset += count
            totals.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # -- generation ------------------------------------------------------------------------------

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Greedy: exact against lm-eval's HFLM. Sampled (temperature > 0): vLLM's sampler, seeded per request."""
        arguments = [request.args for request in requests]
        seeds = sampling_seeds(arguments, self.args.seed)
        collator = Collator(
            [(context, gen_kwargs, seed) for (context, gen_kwargs), seed in zip(arguments, seeds)],
            sort_fn=lambda item: (-len(self.tok_encode(item[0])), item[0]),
            group_by="gen_kwargs",
            group_fn=lambda item: item[1],
        )
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        results: list[str] = []
        with tqdm(total=len(requests), disable=disable_tqdm, desc="e2lm_vllm generate_until") as bar:
            for chunk in collator.get_batched(n=0):
                contexts, all_gen_kwargs, chunk_seeds = zip(*chunk)
                gen_kwargs = normalize_gen_kwargs(dict(all_gen_kwargs[0]), self.max_gen_toks)
                until = handle_stop_sequences(gen_kwargs.pop("until", None), eos=eos)
                max_gen_toks = int(gen_kwargs.pop("max_gen_toks"))
                if self.max_length - max_gen_toks <= 0:
                    raise ValueError(f"max_gen_toks={max_gen_toks} leaves no room in max_length={self.max_length}")
                prompts = [
                    maybe_truncate(
                        self._generation_context_tokens(context), max_gen_toks, self.max_length,
                        side=self.args.truncation_side, verbose=False,
                    )[0]
                    for context in contexts
                ]  # fmt: skip
                # The engine has no tokenizer, so it learns EOS from us (HF's generate stops there too).
                # With think_end_token, task stops may occur inside the thinking: only EOS stops the
                # engine, stops are applied after the thinking is cut (as lm-eval's vllm model does).
                stops = () if self.args.think_end_token is not None else tuple(until)
                stop_token_ids = sorted({self.eot_token_id, *self._stop_token_ids(stops)})
                started = time.perf_counter()
                # Every other gen_kwarg is a sampling parameter, greedy included, as in lm-eval's vllm model.
                options = {key: value for key, value in gen_kwargs.items() if key not in ("do_sample", "seed")}
                if float(gen_kwargs.get("temperature") or 0.0) > 0.0:
                    warning_once(logger, SAMPLING_WARNING)
                    generations = self.engine.generate_sampled(
                        prompts, max_tokens=max_gen_toks, stop_token_ids=stop_token_ids, seeds=chunk_seeds,
                        options=options,
                    )  # fmt: skip
                else:
                    options.pop("temperature", None)
                    generations = self.engine.generate_greedy(
                        prompts, max_tokens=max_gen_toks, stop_token_ids=stop_token_ids, options=options
                    )
                self.timings["engine"] += time.perf_counter() - started
                for context, tokens in zip(contexts, generations):
                    text = self._generated_text(tokens, until)
                    results.append(text)
                    self.cache_hook.add_partial("generate_until", (context, all_gen_kwargs[0]), text)
                    bar.update(1)
        return collator.get_original(results)

    def _generated_text(self, tokens: list[int], until: list[str]) -> str:
        """HFLM's post-processing: a numeric think_end_token is a token id (keep the tokens after its
        last occurrence), any other is text (`postprocess_generated_text` keeps what follows it)."""
        think_end = self.args.think_end_token
        if think_end is not None and think_end.isdigit():
            marks = [index for index, token in enumerate(tokens) if token == int(think_end)]
            if marks:
                tokens = tokens[marks[-1] + 1 :]
            return postprocess_generated_text(self.tok_decode(tokens).lstrip(), stop=until, think_end_token=None)
        return postprocess_generated_text(self.tok_decode(tokens), stop=until, think_end_token=think_end)

    def _stop_token_ids(self, until: tuple[str, ...]) -> list[int]:
        """Tokens whose text contains a stop sequence: generation may stop right after them.

        HFLM cuts the decoded text at the first stop sequence, so everything after such a token is
        discarded anyway; stopping there only saves work. Stop sequences spanning several tokens are
        still cut by `postprocess_generated_text`, as in HFLM. Cached on the instance (a method
        `lru_cache` would keep every lm a long-lived sweep worker drops alive).
        """
        if until not in self._stop_tokens:
            stops = [term for term in until if term]
            vocabulary = range(len(self.tokenizer)) if stops else range(0)
            self._stop_tokens[until] = [
                token
                for token, text in zip(vocabulary, self.tokenizer.batch_decode([[t] for t in vocabulary]))
                if any(term in text for term in stops)
            ]
        return self._stop_tokens[until]

    # -- engine statistics -----------------------------------------------------------------------

    def engine_stats(self) -> dict[str, int]:
        stats = dict(self.engine.stats.__dict__)
        stats["truncated_requests"] = self.truncated_requests
        return stats
