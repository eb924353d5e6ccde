"""Compare prompt log-probabilities of vLLM (CPU, float32) and HF on prepared/ladder folders.

    python scripts/vllm_hf_logprobs.py FOLDER [FOLDER ...]

Prints, per folder, the max |vLLM - HF| over every prompt token of 3 prompts, in nats.
One engine at a time (each folder's engine is shut down before the next starts).
"""

from __future__ import annotations

import gc
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

PROMPTS = [
    "The capital of France is Paris, and the capital of Germany is",
    "Question: Which gas do plants absorb from the air?\nAnswer: carbon dioxide",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)",
]


def hf_logprobs(folder: str) -> list[list[float]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
            out.append((ids[0].tolist(), logprobs.gather(1, ids[0, 1:, None])[:, 0].tolist()))
    return out


def vllm_logprobs(folder: str, token_ids: list[list[int]]) -> list[list[float]]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=folder, dtype="float32", enforce_eager=True, max_model_len=2048, seed=0)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    results = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in token_ids], params, use_tqdm=False)
    out = []
    for ids, result in zip(token_ids, results):
        out.append([entry[token].logprob for token, entry in zip(ids[1:], result.prompt_logprobs[1:])])
    del llm
    gc.collect()
    return out


def main() -> None:
    for folder in sys.argv[1:]:
        hf = hf_logprobs(folder)
        vllm = vllm_logprobs(folder, [ids for ids, _ in hf])
        max_delta = max(abs(a - b) for (_, hf_row), vllm_row in zip(hf, vllm) for a, b in zip(hf_row, vllm_row))
        tokens = sum(len(row) for _, row in hf)
        print(json.dumps({"folder": folder, "tokens": tokens, "max_abs_delta_nats": max_delta}), flush=True)


if __name__ == "__main__":
    main()
