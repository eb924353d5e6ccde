"""One running sweep per output folder: a lock file naming its owner (host, pid, start time).

``output_lock(folder)`` creates ``folder/sweep.lock`` with ``O_CREAT | O_EXCL`` (atomic: of two
sweeps started at once, one gets it) and removes it on exit. A lock left by a dead owner (same
host, pid gone or reused by another process) is taken over with a warning; a live one, or one
held from another host (whose pid cannot be checked from here), is refused with
``SweepLockedError``, naming who holds it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from e2lm_vllm.sweep.config import SweepConfigError

log = logging.getLogger("e2lm_vllm.sweep")

LOCK_NAME = "sweep.lock"
# A takeover of a stale lock is itself serialised by this file; one older than this was left by a
# process killed in the few milliseconds a takeover takes, and is removed.
_TAKEOVER_TIMEOUT_S = 30.0


class SweepLockedError(SweepConfigError):
    """The output folder is held by another sweep (the message names its host, pid and start time)."""


@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    started: str  # ISO 8601, UTC
    pid_start: str | None = None  # the process's start tick (Linux /proc): tells a reused pid apart
    token: str = ""

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"


def _pid_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat), None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
    return stat[stat.rindex(")") + 2 :].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def owner_is_dead(owner: LockOwner) -> bool:
    """True only when provably dead: same host, and its pid gone or now another process."""
    if owner.host != socket.gethostname():
        return False
    if not _pid_alive(owner.pid):
        return True
    current = _pid_start(owner.pid)
    return owner.pid_start is not None and current is not None and current != owner.pid_start


def _read_owner(path: Path) -> LockOwner | None:
    """The owner written in ``path``; None when it is absent. Raises ValueError when unreadable."""
    # The owner writes its line right after creating the file: retry briefly before calling it corrupt.
    for attempt in range(5):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            return LockOwner(**json.loads(text))
        except (ValueError, TypeError):
            if attempt == 4:
                raise ValueError(f"unreadable lock file content {text[:200]!r}") from None
            time.sleep(0.1)
    return None  # unreachable


def _create(path: Path, owner: LockOwner) -> bool:
    """Create ``path`` holding ``owner``; False if it already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, (json.dumps(asdict(owner)) + "\n").encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return True


def _take_over(path: Path, stale: LockOwner, owner: LockOwner) -> bool:
    """Replace the stale lock by ours, unless another process got there first (then False)."""
    guard = path.with_name(path.name + ".takeover")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - guard.stat().st_mtime > _TAKEOVER_TIMEOUT_S:
                guard.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        time.sleep(0.05)
        return False
    os.close(fd)
    try:
        try:
            current = _read_owner(path)
        except ValueError:
            current = None
        if current is not None and current != stale:
            return False  # taken over by someone else meanwhile
        path.unlink(missing_ok=True)
        return _create(path, owner)
    finally:
        guard.unlink(missing_ok=True)


def acquire(folder: str | os.PathLike) -> LockOwner:
    """Take the lock of ``folder`` (created if needed) for this process; see the module docstring."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    owner = LockOwner(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        pid_start=_pid_start(os.getpid()),
        token=uuid.uuid4().hex,
    )
    deadline = time.monotonic() + 10.0
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if _create(path, owner):
                return owner
        except OSError as error:  # a read-only or full output folder: said before any work starts
            cause = os.strerror(error.errno) if error.errno else str(error)
            raise SweepConfigError(f"output {folder}: cannot create the lock file {path}: {cause}") from error
        try:
            holder = _read_owner(path)
        except ValueError as error:
            raise SweepLockedError(
                f"output {folder} is locked by {path}, which cannot be read ({error}); "
                "if no sweep is running on this folder, delete that file"
            ) from None
        if holder is None:
            continue  # released between our create and our read: try again (the holder is gone)
        if not owner_is_dead(holder):
            where = "running" if holder.host == owner.host else "on another host, not checkable from here"
            raise SweepLockedError(
                f"output {folder} is in use by another sweep ({holder.describe()}; {where}). "
                f"Wait for it to finish or choose another output; if that sweep is dead, delete {path}"
            )
        if _take_over(path, holder, owner):
            log.warning(
                "output %s: taking over the lock of a sweep that is no longer running (%s)", folder, holder.describe()
            )
            return owner
        if time.monotonic() > deadline:
            raise SweepLockedError(f"output {folder}: could not take over the stale lock {path} within 10 s")


def release(folder: str | os.PathLike, owner: LockOwner) -> None:
    """Remove the lock of ``folder`` if it is still ``owner``'s (never someone else's)."""
    path = Path(folder) / LOCK_NAME
    try:
        current = _read_owner(path)
    except ValueError:
        return
    if current is not None and current.token == owner.token:
        path.unlink(missing_ok=True)


@contextmanager
def output_lock(folder: str | os.PathLike) -> Iterator[LockOwner]:
    """Hold the lock of the output ``folder`` for the ``with`` block."""
    owner = acquire(folder)
    try:
        yield owner
    finally:
        release(folder, owner)
