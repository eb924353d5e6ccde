"""e2lm_vllm.atomic.write_text_atomic: whole files only, the umask's mode, no temporary file left."""

from __future__ import annotations

import os
import stat

import pytest

from e2lm_vllm.atomic import current_umask, write_text_atomic


def test_write_text_atomic(tmp_path):
    path = tmp_path / "watch.json"
    write_text_atomic(path, "old\n")
    write_text_atomic(path, "new é\n")
    assert path.read_text(encoding="utf-8") == "new é\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~current_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["watch.json"]


def test_write_text_atomic_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    path.write_text("old\n")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_text_atomic(path, "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["report.md"]
