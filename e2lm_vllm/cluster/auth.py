"""Ray token auth as this machine's environment sets it up, and the one line that fixes a mismatch.

Ray (2.5x-2.60, `ray/_private/authentication/authentication_token_setup.py`) decides token auth
differently per entry point:

- a new local `ray.init()` (our local `e2lm-vllm sweep`, hence `make demo`) turns token auth on
  when RAY_AUTH_MODE is unset and writes ~/.ray/auth_token if no token exists;
- `ray start --head` turns it on when RAY_AUTH_MODE is unset and a token exists (RAY_AUTH_TOKEN,
  RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), and refuses to start with RAY_AUTH_MODE=token and none;
- `ray job submit` and `ray.init(address=...)` send the token only when RAY_AUTH_MODE=token.

So after any local sweep, a head started from the same shell requires a token that `ray job submit`
does not send. Reading files and variables only: no Ray import, nothing started.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MODE, TOKEN, TOKEN_PATH = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
ENABLE = "export RAY_AUTH_MODE=token"
GENERATE = "ray get-auth-token --generate >/dev/null"
REMOTE = "export RAY_AUTH_TOKEN=<the head's token: `ray get-auth-token` there>"


class RayAuthError(ConnectionError):
    """A driver could not join a Ray cluster, and a token it did not send explains it: the message names the fix."""


@dataclass(frozen=True)
class RayAuthState:
    mode: str | None  # RAY_AUTH_MODE, lower-case; None when unset
    token_from: str | None  # where Ray would read a token: RAY_AUTH_TOKEN, or a file; None: no token
    default_file: Path  # ~/.ray/auth_token

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None, home: Path | None = None) -> RayAuthState:
        environ = os.environ if environ is None else environ
        default_file = (home or Path.home()) / ".ray" / "auth_token"
        # Ray's own order: the variable, then the path variable, then the default file.
        token_from = None
        if environ.get(TOKEN, "").strip():
            token_from = TOKEN
        elif environ.get(TOKEN_PATH) and Path(environ[TOKEN_PATH]).expanduser().is_file():
            token_from = environ[TOKEN_PATH]
        elif default_file.is_file():
            token_from = str(default_file)
        mode = environ.get(MODE)
        return cls(mode.strip().lower() if mode is not None else None, token_from, default_file)

    @property
    def facts(self) -> str:
        mode = "RAY_AUTH_MODE unset" if self.mode is None else f"RAY_AUTH_MODE={self.mode}"
        if self.token_from == str(self.default_file):
            return f"{self.default_file} present, {mode}"
        token = "no token" if self.token_from is None else f"token from {self.token_from}"
        return f"{self.default_file} {'present' if self.default_file.is_file() else 'absent'}, {mode}, {token}"

    @property
    def mismatch(self) -> bool:
        """True when `ray start --head` here and `ray job submit` here disagree (or the head cannot start)."""
        return (self.mode is None and self.token_from is not None) or (self.mode == "token" and self.token_from is None)

    @property
    def fix(self) -> str | None:
        """The one line that makes every Ray command of the README work here; None when nothing is needed."""
        if self.mode == "token":
            return None if self.token_from else GENERATE
        if self.mode is None:
            # No token yet: consistent today, broken after the first local sweep writes one.
            return ENABLE if self.token_from else f"{ENABLE}; {GENERATE}"
        return None  # disabled (or a mode we do not know): an explicit choice, left alone

    def describe(self) -> str:
        """One line for `e2lm-vllm doctor`: the state, what it does to the README's commands, the fix."""
        if self.mode == "token" and self.token_from:
            effect = "ok: `ray start` and `ray job submit` both use token auth"
        elif self.mode == "token":
            effect = "MISMATCH: `ray start --head` refuses to start and `ray job submit` has no token to send"
        elif self.mode is None and self.token_from:
            effect = "MISMATCH: `ray start --head` turns token auth on, `ray job submit` sends no token (AuthenticationError)"
        elif self.mode is None:
            effect = "ok until a local sweep (make demo) writes ~/.ray/auth_token; then `ray job submit` fails"
        else:
            effect = "token auth off here; a head with token auth refuses `ray job submit`"
        if self.mode not in (None, "token"):  # off on purpose: how to turn it on, not a fix
            return f"{self.facts}: {effect}. To turn it on: {ENABLE}" + ("" if self.token_from else f"; {GENERATE}")
        return f"{self.facts}: {effect}" + (f". Fix: {self.fix}" if self.fix else "")


def connect_error_message(address: str, state: RayAuthState | None = None) -> str | None:
    """What a sweep driver says when `ray.init(address=...)` fails; None when a token cannot be missing.

    Ray's own error is `ConnectionError: Failed to connect to Ray cluster at ...` after ~20 s of
    retries, the auth reason only in C++ log lines: the driver names the fix itself.
    """
    state = state or RayAuthState.read()
    if state.mode == "token" and state.token_from is None:
        return (
            f"cannot connect to the Ray cluster at {address}: RAY_AUTH_MODE=token but no token was found "
            f"(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, {state.default_file}). "
            f"Fix: {REMOTE}; on the head's own machine: {GENERATE}"
        )
    if state.mode is None:
        token = f"the token in {state.token_from}" if state.token_from else "RAY_AUTH_TOKEN, set to the head's token"
        return (
            f"cannot connect to the Ray cluster at {address}. If its head has token auth (Ray's default once "
            f"{state.default_file} exists), this driver sent no token: RAY_AUTH_MODE is unset. "
            f"Fix: {ENABLE} (Ray then sends {token}), and rerun"
        )
    return None  # auth off on purpose, or on with a token: the cause is elsewhere
