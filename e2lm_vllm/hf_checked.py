"""lm-eval's HF model with the checks of the vLLM path, so that `backend=hf` is no less careful.

`backend=hf` (and `auto` where vLLM does not import), a sweep's `lm: hf` and the parity reference
all build `CheckedHFLM` (`e2lm_vllm.lm.build_hf_lm`): lm-eval's own `HFLM`, unchanged in what it
computes, plus what `E2LMVLLM` checks:

- NaN/inf weights (`check_finite_weights`, before the model is loaded) and a tokenizer larger than
  the embedding (`check_tokenizer_fits`) refuse the checkpoint;
- a loglikelihood (so also a rolling window) that comes out NaN or inf raises `NonFiniteScoreError`.

Both errors are the `NonFiniteError` kinds of the vLLM path, so a sweep records a diverged checkpoint
as a failure of kind ``non_finite`` on either backend, never as an argmax-of-NaN accuracy.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from lm_eval.models.huggingface import HFLM

from e2lm_vllm.checkpoint import check_finite_weights, check_tokenizer_fits, resolve_checkpoint
from e2lm_vllm.engine.types import NonFiniteScoreError, describe_prompt


class _HeldAnswers:
    """A cache hook that keeps lm-eval's answers until they are checked (`replay` passes them on)."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, Any, Any]] = []

    def add_partial(self, attr: str, req: Any, res: Any) -> None:
        self.answers.append((attr, req, res))

    def replay(self, hook: Any) -> None:
        for attr, req, res in self.answers:
            hook.add_partial(attr, req, res)


class CheckedHFLM(HFLM):
    """lm-eval's `HFLM` (same keyword args) that refuses diverged checkpoints and non-finite scores."""

    def __init__(self, *, check_weights: bool = True, **kwargs: Any) -> None:
        # The folder HF loads; a tokenizer given as a repo id stays HF's business (as in lm-eval).
        checkpoint = resolve_checkpoint(kwargs["pretrained"], revision=kwargs.get("revision"), subfolder=kwargs.get("subfolder"))
        if check_weights:  # before the model is loaded: a diverged checkpoint costs one read, no load
            check_finite_weights(checkpoint.model_path)
        super().__init__(**kwargs)
        tokenizer = kwargs.get("tokenizer")
        if isinstance(tokenizer, str) and Path(tokenizer).expanduser().is_dir():
            checkpoint = dataclasses.replace(checkpoint, tokenizer_path=Path(tokenizer).expanduser().resolve())
        check_tokenizer_fits(self.tokenizer, self.config, checkpoint)

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str] | None, list[int], list[int]]],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        """HFLM's scores, each checked finite; rolling windows come through here too.

        HFLM hands each answer to lm-eval's cache as it computes it (`--use_cache` stores it at
        once): they are held back until all are checked, so a rerun never reads a NaN from the cache.
        """
        hook, held = self.cache_hook, _HeldAnswers()
        self.cache_hook = held
        try:
            results = super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self.cache_hook = hook
        for (_, context, continuation), (logprob, _) in zip(requests, results):
            if not math.isfinite(logprob):
                shown = ", ".join(str(token) for token in continuation[:8])
                raise NonFiniteScoreError(
                    f"log-probability {logprob} of the {len(continuation)}-token continuation [{shown}"
                    f"{', ...' if len(continuation) > 8 else ''}] after {describe_prompt(context)}"
                )
        held.replay(hook)
        return results
