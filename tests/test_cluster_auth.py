"""Ray's token-auth state as `e2lm-vllm doctor` reports it: every combination, no Ray started.

Which combination breaks which command is Ray's behaviour (cluster/auth.py's docstring); the real
commands in both states that matter run in tests/test_readme_ray.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from e2lm_vllm.cluster.auth import ENABLE, GENERATE, RayAuthState
from e2lm_vllm.proof.doctor import ray_auth


def _home(tmp_path: Path, token: bool) -> Path:
    if token:  # what a local ray.init() (a local sweep, make demo) leaves
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("0" * 64)
    return tmp_path


@pytest.mark.parametrize(
    ("token", "mode", "mismatch", "fix", "says"),
    [
        (True, None, True, ENABLE, "`ray start --head` turns token auth on, `ray job submit` sends no token"),
        (True, "token", False, None, "ok: `ray start` and `ray job submit` both use token auth"),
        (False, "token", True, GENERATE, "`ray start --head` refuses to start"),
        (False, None, False, f"{ENABLE}; {GENERATE}", "ok until a local sweep (make demo) writes ~/.ray/auth_token"),
        (True, "disabled", False, None, f"token auth off here; a head with token auth refuses `ray job submit`. To turn it on: {ENABLE}"),
        (False, "disabled", False, None, f"To turn it on: {ENABLE}; {GENERATE}"),
    ],
)  # fmt: skip
def test_each_state_says_what_breaks_and_the_line_that_fixes_it(tmp_path, token, mode, mismatch, fix, says):
    state = RayAuthState.read({} if mode is None else {"RAY_AUTH_MODE": mode}, home=_home(tmp_path, token))
    assert (state.mismatch, state.fix) == (mismatch, fix)
    line = state.describe()
    assert says in line, line
    mode_text = "RAY_AUTH_MODE unset" if mode is None else f"RAY_AUTH_MODE={mode}"
    expected = f"{tmp_path}/.ray/auth_token present, {mode_text}: " if token else f"{tmp_path}/.ray/auth_token absent, {mode_text}, no token: "
    assert line.startswith(expected), line
    if fix:
        assert line.endswith(f". Fix: {fix}"), line


def test_a_token_in_the_environment_counts_as_one_in_the_file(tmp_path):
    """`ray start` reads RAY_AUTH_TOKEN too: with RAY_AUTH_MODE unset that is the same mismatch."""
    state = RayAuthState.read({"RAY_AUTH_TOKEN": "abc"}, home=tmp_path)
    assert state.token_from == "RAY_AUTH_TOKEN" and state.mismatch and state.fix == ENABLE
    assert RayAuthState.read({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}, home=tmp_path).token_from is None


def test_doctor_reports_the_state_of_this_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(_home(tmp_path, token=True)))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    report = ray_auth()
    assert report["mismatch"] and report["fix"] == ENABLE and report["mode"] is None
    assert report["line"].startswith(f"ray auth: {tmp_path}/.ray/auth_token present, RAY_AUTH_MODE unset")
