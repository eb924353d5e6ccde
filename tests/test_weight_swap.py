"""Weight swaps beyond SmolLM2's tied head: a second architecture (Gemma 3) and an untied model.

For each family: an engine on checkpoint A swaps to B and back. B's probe scores after the swap
must equal those of a fresh engine on B, and A's after the round trip those it had at the start,
within `SWAP_TOLERANCE` (1e-6). The second checkpoint is the first with every tensor
moved by seeded noise (1% of its own spread), so a stale module shows up as a difference of nats.

Both run on the tiny random models of these architectures (tests/conftest.py): a swap's exactness is
a matter of which modules hold derived state, not of the model's size or training.

- Gemma 3 (`gemma3-270m`): tied `lm_head`, other norms and attention than Llama; the refresh must
  name `lm_head`.
- SmolLM2 untied: `tie_word_embeddings: false` and an `lm_head.weight` of its own, unlike the
  embedding; nothing is shared, so the refresh names nothing and vLLM's reload alone must be exact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from e2lm_vllm.sweep.swapcheck import SWAP_TOLERANCE, compare, probe_scores

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.usefixtures("engine_in_this_process")]

MAX_LENGTH = 256


def _write_checkpoint(source: Path, target: Path, *, untie: bool = False, noise_seed: int | None = None) -> Path:
    """`source` copied to `target`; optionally untied (own lm_head) and moved by seeded noise."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(str(source / "model.safetensors"))
    generator = torch.Generator().manual_seed(noise_seed or 0)
    if untie:
        config = json.loads((target / "config.json").read_text())
        config["tie_word_embeddings"] = False
        (target / "config.json").write_text(json.dumps(config, indent=2))
        embedding = tensors["model.embed_tokens.weight"]
        # A head of its own: the embedding plus noise of its size, so that a tied fallback would show.
        tensors["lm_head.weight"] = embedding + 0.5 * embedding.std() * torch.randn(embedding.shape, generator=generator)
    if noise_seed is not None:
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and tensor.numel() > 1:
                tensors[name] = tensor + 0.01 * tensor.std() * torch.randn(tensor.shape, generator=generator)
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(target / "model.safetensors"))
    return target


def _lm(path: Path):
    from e2lm_vllm.lm import E2LMVLLM

    return E2LMVLLM(pretrained=str(path), dtype="float32", max_model_len=MAX_LENGTH, backend="vllm")


def _swap_round_trip(first: Path, second: Path) -> dict:
    """Probe scores: A fresh, B after a swap, A after swapping back, B fresh; the modules refreshed."""
    lm = _lm(first)
    try:
        fresh_first = probe_scores(lm)
        refreshed = lm.load_checkpoint(str(second))
        swapped_second = probe_scores(lm)
        lm.load_checkpoint(str(first))
        back_first = probe_scores(lm)
    finally:
        lm.engine.shutdown()
    lm = _lm(second)
    try:
        fresh_second = probe_scores(lm)
    finally:
        lm.engine.shutdown()
    return {
        "fresh_first": fresh_first,
        "swapped_second": swapped_second,
        "back_first": back_first,
        "fresh_second": fresh_second,
        "refreshed": refreshed,
    }


def _assert_exact(scores: dict) -> None:
    to_second = compare("second", scores["swapped_second"], scores["fresh_second"])
    back = compare("first", scores["back_first"], scores["fresh_first"])
    assert to_second.max_difference <= SWAP_TOLERANCE, to_second
    assert back.max_difference <= SWAP_TOLERANCE, back
    # The checkpoints differ, so equal scores are not the same weights scored twice.
    assert compare("moved", scores["fresh_first"], scores["fresh_second"]).max_difference > 0.01


def test_gemma3_swaps_exactly(tiny_gemma3_path: Path, tmp_path: Path) -> None:
    moved = _write_checkpoint(tiny_gemma3_path, tmp_path / "gemma3-moved", noise_seed=1)
    scores = _swap_round_trip(tiny_gemma3_path, moved)
    _assert_exact(scores)
    assert "lm_head" in scores["refreshed"]


def test_untied_model_swaps_exactly(tiny_llama_path: Path, tmp_path: Path) -> None:
    first = _write_checkpoint(tiny_llama_path, tmp_path / "untied-a", untie=True, noise_seed=None)
    second = _write_checkpoint(first, tmp_path / "untied-b", noise_seed=2)
    scores = _swap_round_trip(first, second)
    _assert_exact(scores)
    assert scores["refreshed"] == []  # nothing is shared: vLLM's reload alone is exact
