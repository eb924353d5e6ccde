"""Tiny random-weight models of the embedded models' architectures, for tests of mechanics.

Weight swaps, sweep faults, retries, placement, resume and trackers need an engine of the right
architecture, not a model that reads: on a CPU without AVX512 vLLM scores SmolLM2-135M slowly
(docs/measurements.md#vllm-on-small-cpus), so the suite runs those tests on a model that costs next to nothing per token.
A tiny model keeps its source's config (architecture, attention pattern, tied head, vocabulary) and
tokenizer, with 2 layers of width 64 and one head of 64 (a head size vLLM's CPU attention supports),
and HF's own seeded init at a larger spread (`TINY_INITIALIZER_RANGE`), so that two seeds give
scores nats apart rather than a uniform distribution over the vocabulary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from e2lm_vllm.models.ladder import resolve_source, save_atomically

TINY_HIDDEN_SIZE = 64
TINY_LAYERS = 2
# Embeddings (tied head) of spread 0.1: logits of spread ~0.8 over the vocabulary after the final norm.
TINY_INITIALIZER_RANGE = 0.1
MARKER_KEY = "e2lm_tiny"


def tiny_config(source_config: dict, seed: int) -> dict:
    """``source_config`` shrunk to `TINY_LAYERS` layers of `TINY_HIDDEN_SIZE`, one query and one key/value head."""
    config = dict(source_config)
    config.update(
        hidden_size=TINY_HIDDEN_SIZE,
        intermediate_size=2 * TINY_HIDDEN_SIZE,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=TINY_HIDDEN_SIZE,
        initializer_range=TINY_INITIALIZER_RANGE,
    )
    if "layer_types" in config:  # Gemma 3: keep one layer of each attention kind (sliding, then full)
        config["layer_types"] = ["sliding_attention", "full_attention"][:TINY_LAYERS]
    if "query_pre_attn_scalar" in config:
        config["query_pre_attn_scalar"] = TINY_HIDDEN_SIZE
    config.pop("_model_name_or_path", None)
    config.pop("e2lm", None)
    # The whole recipe: a tiny model written with other sizes is rewritten, not reused.
    config[MARKER_KEY] = {
        "source": source_config.get("_model_name_or_path", ""),
        "seed": seed,
        "hidden_size": TINY_HIDDEN_SIZE,
        "layers": TINY_LAYERS,
        "initializer_range": TINY_INITIALIZER_RANGE,
    }
    return config


def write_tiny_model(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], seed: int) -> Path:
    """Write (once; kept while its recipe is the same) the tiny model of ``source`` to ``out_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source_dir = resolve_source(source)
    out = Path(out_dir)
    wanted = tiny_config(json.loads((source_dir / "config.json").read_text()), seed)
    try:
        if json.loads((out / "config.json").read_text()).get(MARKER_KEY) == wanted[MARKER_KEY]:
            return out
    except (OSError, ValueError):
        pass
    config = AutoConfig.for_model(**wanted)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(model, source_dir, out.parent, out.name)
    return out
