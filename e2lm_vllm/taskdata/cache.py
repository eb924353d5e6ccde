"""Suites with absolute data paths, built once into a cache folder: lm-eval's ``include_path``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

from e2lm_vllm.taskdata.readers import RAW_FOLDERS, REPO_ROOT, TaskDataError, data_root
from e2lm_vllm.taskdata.suites import SAMPLES_DATA_REF, SAMPLES_DIR, build_full_suite, write_suite
from e2lm_vllm.taskdata.templates import TEMPLATES_FILE

SuiteKind = Literal["full", "samples"]
# Bump when the normalised format changes: cached full suites rebuild. (A change of the converter's
# code or of the templates rebuilds them too: both are in the fingerprint.)
FORMAT_VERSION = 1
STALE_BUILD_SECONDS = 24 * 3600
GENERATOR_FILES = (*sorted(Path(__file__).parent.glob("*.py")), TEMPLATES_FILE)


def _cache_root() -> Path:
    """``$E2LM_TASKS_CACHE``; else ``.cache/e2lm_tasks`` of a checkout; else (an installed wheel, whose
    REPO_ROOT is site-packages) ``tasks`` in e2lm-vllm's user cache folder, beside the prepared models."""
    configured = os.environ.get("E2LM_TASKS_CACHE")
    if configured:
        return Path(configured)
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT / ".cache" / "e2lm_tasks"
    from e2lm_vllm.models.prepare import e2lm_home

    return e2lm_home() / "tasks"


def _fingerprint(kind: SuiteKind, sources: list[Path]) -> str:
    digest = hashlib.sha256(f"{kind}:{FORMAT_VERSION}".encode())
    for path in GENERATOR_FILES:
        digest.update(path.read_bytes())
    for path in sorted(sources):
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def include_path_for(kind: SuiteKind = "full", data: str | os.PathLike[str] | None = None) -> str:
    """Folder to pass as lm-eval's ``include_path`` for the ``full`` or ``samples`` suite.

    Both are written (once, then reused while the sources are unchanged) into a cache folder
    (:func:`_cache_root`) with absolute data paths, so lm-eval can run them from any directory.
    ``full`` converts the raw data folder (:func:`data_root`); ``samples`` points at the bundled
    files in ``SAMPLES_DIR / "data"`` (package data: an installed wheel has them).
    """
    if kind == "full":
        root = data_root(data)
        sources = [p for folder in RAW_FOLDERS for p in (root / folder).rglob("*") if p.is_file()]
    elif kind == "samples":
        sources = [p for p in (SAMPLES_DIR / "data").rglob("*") if p.is_file()]
        if not sources:
            raise TaskDataError(f"no sample data in {SAMPLES_DIR / 'data'}; run `python -m e2lm_vllm.taskdata samples`")
    else:
        raise TaskDataError(f"unknown suite {kind!r}; expected 'full' or 'samples'")
    final = _cache_root() / f"{kind}-{_fingerprint(kind, sources)}"
    if (final / "manifest.json").exists():
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=final.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the suite is shared by every process of the user
    try:
        if kind == "full":
            write_suite(build_full_suite(root, str(staging.parent / final.name / "data")), staging)
        else:
            _write_samples_yaml_only(staging, str(SAMPLES_DIR / "data"))
        (staging / "manifest.json").write_text(json.dumps({"kind": kind, "format": FORMAT_VERSION}) + "\n")
        try:
            staging.rename(final)
        except OSError:  # another process finished first: its copy is identical
            if not (final / "manifest.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Builds of older sources or converter versions; kept a day in case a running job still reads one.
    for stale in final.parent.glob(f"{kind}-*"):
        if stale != final and time.time() - stale.stat().st_mtime > STALE_BUILD_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    return str(final)


def _write_samples_yaml_only(out_dir: Path, data_ref: str) -> None:
    """The committed sample YAMLs with their checkout-relative ``SAMPLES_DATA_REF`` replaced by ``data_ref``."""
    for path in SAMPLES_DIR.rglob("*"):
        if path.is_file() and (path.suffix == ".yaml" or path.name.endswith("_yaml")):
            target = out_dir / path.relative_to(SAMPLES_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text(encoding="utf-8").replace(f" {SAMPLES_DATA_REF}/", f" {data_ref}/"))
