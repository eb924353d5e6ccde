"""Who can read what a sweep writes: results follow the umask, the submission zip is the owner's only.

Fast: no engine, no Ray. The umask is process-wide, so each case runs in a subprocess of its own.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Writes a results table, text the way watch.json is written (e2lm_vllm.atomic), and a submission zip under umask argv[2].
_WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    os.umask(int(sys.argv[2], 8))
    from e2lm_vllm.curriculum.submission import write_private_zip
    from e2lm_vllm.results.schema import FAILURES_SCHEMA
    from e2lm_vllm.results.store import write_table_atomic
    from e2lm_vllm.atomic import write_text_atomic
    out = Path(sys.argv[1])
    write_table_atomic(FAILURES_SCHEMA.empty_table(), out / "failures.parquet")
    write_text_atomic(out / "watch.json", "{}")
    write_private_zip(out / "submission.zip", {"metadata.yaml": "hf_token: x"})
    """
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o000])
def test_results_follow_the_umask_and_the_submission_stays_private(tmp_path, umask):
    subprocess.run([sys.executable, "-c", _WRITER, str(tmp_path), f"{umask:o}"], cwd=REPO, check=True, env=os.environ)
    expected = 0o666 & ~umask  # what open() gives: 0644 under 022, 0640 under 027
    assert oct(_mode(tmp_path / "failures.parquet")) == oct(expected)
    assert oct(_mode(tmp_path / "watch.json")) == oct(expected)
    assert oct(_mode(tmp_path / "submission.zip")) == oct(0o600)  # it holds the HF token
    assert sorted(p.name for p in tmp_path.iterdir()) == ["failures.parquet", "submission.zip", "watch.json"]  # no temp left


def test_a_submission_zip_is_ignored_by_git():
    for path in ("submission.zip", "runs/x/submission.zip"):
        checked = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO)
        assert checked.returncode == 0, f"{path} is not git-ignored"
