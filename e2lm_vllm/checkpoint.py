"""Resolve `pretrained` + `revision` + `subfolder` to a local checkpoint folder.

vLLM loads a folder; the E2LM checkpoints live in subfolders of one HF repo (`iter_0002000` of
`tiiuae/dense-500m-arch1`), so a repo checkpoint is fetched (only its subfolder) into the HF cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# config.json keys that describe where a checkpoint came from, not what the network is: two
# checkpoints that differ only in these share an engine (our ladder writes `e2lm`: step, tokens).
CHECKPOINT_METADATA_KEYS = frozenset({"e2lm", "_name_or_path", "transformers_version"})


class CheckpointMismatchError(ValueError):
    """A checkpoint whose architecture or tokenizer differs from the engine's: it cannot be swapped in."""


@dataclass(frozen=True)
class LocalCheckpoint:
    model_path: Path
    tokenizer_path: Path


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).exists() for name in TOKENIZER_FILES)


def resolve_checkpoint(
    pretrained: str, *, revision: str | None = None, subfolder: str | None = None, tokenizer: str | None = None
) -> LocalCheckpoint:
    """The local folders holding the weights and the tokenizer of a checkpoint.

    A checkpoint subfolder without tokenizer files uses the tokenizer of its repo root, as the
    E2LM repos ship one tokenizer for all iterations.
    """
    root = Path(pretrained).expanduser()
    if root.is_dir():
        if revision:
            raise ValueError(f"revision={revision!r} given for the local folder {root}: revisions are for HF repos")
    elif root.exists():
        raise ValueError(f"pretrained={pretrained!r} is a file; expected a checkpoint folder or an HF repo id")
    elif pretrained.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"checkpoint folder not found: {pretrained}")
    else:
        from huggingface_hub import snapshot_download

        patterns = None if not subfolder else [f"{subfolder}/*", *TOKENIZER_FILES, "special_tokens_map.json"]
        try:
            root = Path(snapshot_download(pretrained, revision=revision, allow_patterns=patterns))
        except Exception as error:  # noqa: BLE001 - hub errors (offline, unknown repo, bad id) all mean "not found"
            raise FileNotFoundError(
                f"pretrained={pretrained!r} is neither a local checkpoint folder nor a Hugging Face repo that "
                f"could be fetched ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
            ) from None
    model_path = root / subfolder if subfolder else root
    if not model_path.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {model_path}")
    if not (model_path / "config.json").exists():
        raise FileNotFoundError(
            f"no config.json in checkpoint folder {model_path}: not a Hugging Face checkpoint "
            f"(the folder holds {', '.join(sorted(child.name for child in model_path.iterdir())[:8]) or 'nothing'})"
        )
    if tokenizer:
        tokenizer_path = Path(tokenizer).expanduser()
        if not tokenizer_path.is_dir():
            raise FileNotFoundError(f"tokenizer folder not found: {tokenizer}")
    else:
        tokenizer_path = model_path if _has_tokenizer(model_path) else root
    return LocalCheckpoint(model_path=model_path.resolve(), tokenizer_path=tokenizer_path.resolve())


def config_without_provenance(config: dict[str, Any]) -> dict[str, Any]:
    """config.json's keys that describe the network, without those that say where it came from."""
    return {k: v for k, v in config.items() if k not in CHECKPOINT_METADATA_KEYS}


def swap_signature(checkpoint: LocalCheckpoint) -> str:
    """What two checkpoints must share for one engine to score both with only new weights.

    The model's config.json without provenance keys (architecture, sizes, dtype, tied embeddings,
    rope, vocabulary) and the tokenizer files' bytes.
    """
    config = json.loads((checkpoint.model_path / "config.json").read_text())
    digest = hashlib.sha256()
    digest.update(json.dumps(config_without_provenance(config), sort_keys=True).encode())
    for name in TOKENIZER_FILES:
        path = checkpoint.tokenizer_path / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


# --- non-finite weights ---------------------------------------------------------------------------


class NonFiniteError(FloatingPointError):
    """A checkpoint whose weights or scores hold NaN or inf: a result about that checkpoint, never a number.

    Recorded once as a failure of kind ``non_finite`` (retrying gives the same answer).
    """

    kind = "non_finite"


class NonFiniteWeightsError(NonFiniteError):
    """A weight tensor of the checkpoint holds NaN or inf; the message names the first such tensor."""


def _safetensors_shards(model_dir: Path) -> list[Path]:
    """The checkpoint's safetensors files: those its index names (in order), else every one in the folder."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    return sorted(model_dir.glob("*.safetensors"))


# Trainer files next to the weights that are not weights (vLLM's `filter_files_not_needed_for_inference`).
_NOT_WEIGHT_FILES = frozenset({"training_args.bin", "optimizer.bin", "optimizer.pt", "scheduler.pt", "scaler.pt"})


def _torch_shards(model_dir: Path) -> list[Path]:
    """The PyTorch weight files that vLLM and HF load when there is no safetensors file: those of
    ``pytorch_model.bin.index.json``, else every ``*.bin``, else every ``*.pt`` (vLLM's order)."""
    index = model_dir / "pytorch_model.bin.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    for pattern in ("*.bin", "*.pt"):
        files = sorted(path for path in model_dir.glob(pattern) if path.name not in _NOT_WEIGHT_FILES)
        if files:
            return files
    return []


def _tensors(shard: Path) -> Iterator[tuple[str, Any]]:
    """(name, tensor) of each tensor in a weight file, one at a time where the format allows."""
    if shard.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
        return
    import torch

    # weights_only: a checkpoint is data, never code to run. mmap: tensors are read as they are
    # summed, not all at once; a file in torch's legacy (pre-zip) format cannot be mapped.
    try:
        state = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        state = torch.load(shard, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"{shard} holds a {type(state).__name__}, not a state dict of weight tensors")
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor):
            yield str(name), tensor


def _first_non_finite(model_dir: Path) -> tuple[Path, str, str] | None:
    """(file, tensor name, "NaN" / "inf") of the first non-finite weight tensor, None if all are finite."""
    import torch

    for shard in _safetensors_shards(model_dir) or _torch_shards(model_dir):
        for name, tensor in _tensors(shard):
            if not tensor.is_floating_point():
                continue
            total = tensor.sum(dtype=torch.float64 if tensor.dtype == torch.float64 else torch.float32)
            if not bool(torch.isfinite(total)) and not bool(torch.isfinite(tensor).all()):
                return shard, name, "NaN" if bool(torch.isnan(tensor).any()) else "inf"
    return None


def first_non_finite_tensor(model_dir: str | os.PathLike) -> str | None:
    """The name of the first weight tensor holding NaN or inf, or None when every weight is finite.

    Reads every floating-point tensor of the files vLLM and HF load (the safetensors shards,
    memory-mapped, in index order; without any, the PyTorch ``.bin`` (or ``.pt``) files, through
    ``torch.load(weights_only=True, mmap=True)``), tensors in file order, once: a float32 sum per
    tensor, finite unless some element is NaN or inf (IEEE arithmetic never turns either back into
    a finite number), then ``torch.isfinite`` on a tensor whose sum is not, since a sum of large
    finite values can overflow. About one pass over the bytes (docs/measurements.md#weight-scan).
    """
    found = _first_non_finite(Path(model_dir))
    return None if found is None else found[1]


def check_finite_weights(model_dir: str | os.PathLike) -> None:
    """Raise ``NonFiniteWeightsError`` naming the first non-finite weight tensor of the checkpoint in ``model_dir``."""
    found = _first_non_finite(Path(model_dir))
    if found is not None:
        shard, name, what = found
        raise NonFiniteWeightsError(
            f"checkpoint {model_dir} holds {what} in weight tensor {name} (file {shard.name}): "
            "a diverged checkpoint, not evaluated"
        )


class CheckpointError(ValueError):
    """A checkpoint that cannot be evaluated as given (found before any engine starts)."""


def check_tokenizer_fits(tokenizer: Any, config: Any, checkpoint: LocalCheckpoint) -> None:
    """The tokenizer's ids must index the model's embedding: a larger vocabulary is an error."""
    vocab_size = getattr(getattr(config, "text_config", None) or config, "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > int(vocab_size):
        raise CheckpointError(
            f"the tokenizer in {checkpoint.tokenizer_path} has {len(tokenizer)} tokens but the model in "
            f"{checkpoint.model_path} has an embedding of {vocab_size} (config.json vocab_size): token ids "
            f"{vocab_size} and above have no embedding. Use the checkpoint's own tokenizer (drop tokenizer=...) "
            f"or one with the same vocabulary"
        )
