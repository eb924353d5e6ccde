"""One running sweep per output folder: a lease in a lock file naming its owner, renewed by a heartbeat.

``output_lock(folder)`` creates ``folder/sweep.lock`` with ``O_CREAT | O_EXCL`` (atomic: of two
sweeps started at once, one gets it), writes its owner (host, pid, start time, and what tells its
pid space apart: the kernel's boot id and the pid namespace), and a thread touches the file every
``heartbeat_s`` while the sweep runs; the lock is removed on exit.

A second sweep finding the lock decides who is gone:

- an owner in its own pid space (same host, boot and pid namespace) is checked by pid: gone (or the
  pid reused by another process) is taken over at once with a warning, alive is refused;
- any other owner (another host, or another container that shares this hostname, where a pid means
  nothing here) is refused while its heartbeat is fresh, and taken over once the file has not been
  touched for ``STALE_HEARTBEATS`` of its intervals (a killed sweep or a lost node). Hosts that
  share an output folder must keep their clocks within that margin (NTP does);
- an empty or unreadable lock file (a sweep killed between creating and writing it) is taken over
  once ``MALFORMED_GRACE_S`` old, and refused until then.

Refusals raise ``SweepLockedError``, naming who holds the lock and when it becomes stale.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
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
HEARTBEAT_S = 10.0  # how often the owner touches its lock file
# An owner whose lock file is untouched for this many of its heartbeats is gone: one missed beat
# is a busy filesystem, six (a minute by default) is a dead process or node.
STALE_HEARTBEATS = 6
# An empty or unreadable lock file older than this is a dead sweep's: a live one writes its owner
# within milliseconds of creating the file.
MALFORMED_GRACE_S = 60.0


class SweepLockedError(SweepConfigError):
    """The output folder is held by another sweep (the message names its host, pid and start time)."""


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]": one per container
    except OSError:
        return None


@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    started: str  # ISO 8601, UTC
    pid_start: str | None = None  # the process's start tick (Linux /proc): tells a reused pid apart
    token: str = ""
    boot_id: str | None = None  # with host and pid_ns: whose pids can be checked from here
    pid_ns: str | None = None
    heartbeat_s: float = HEARTBEAT_S

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"

    def same_pid_space(self) -> bool:
        """True when this process sees the owner's pids: same host, same boot, same pid namespace."""
        return (
            self.host == socket.gethostname()
            and self.boot_id is not None
            and self.pid_ns is not None
            and (self.boot_id, self.pid_ns) == (_boot_id(), _pid_namespace())
        )

    @property
    def stale_after_s(self) -> float:
        return STALE_HEARTBEATS * self.heartbeat_s


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
    """True only when provably dead: in this pid space, and its pid gone or now another process."""
    if not owner.same_pid_space():
        return False
    if not _pid_alive(owner.pid):
        return True
    current = _pid_start(owner.pid)
    return owner.pid_start is not None and current is not None and current != owner.pid_start


def _parse_owner(text: str) -> LockOwner:
    """The owner in a lock file's text; ValueError when it is none (empty, torn, not ours)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    known = {f.name for f in dataclasses.fields(LockOwner)}
    # Fields of a later version are ignored; those of an earlier one take their defaults.
    owner = LockOwner(**{key: value for key, value in data.items() if key in known})
    if not isinstance(owner.pid, int) or not isinstance(owner.heartbeat_s, (int, float)) or owner.heartbeat_s <= 0:
        raise ValueError("pid or heartbeat_s of the wrong type")
    return owner


def _read_owner(path: Path) -> LockOwner | None:
    """The owner written in ``path``; None when it is absent. Raises ValueError when unreadable."""
    # The owner writes its line right after creating the file: retry briefly before calling it corrupt.
    for attempt in range(5):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            return _parse_owner(text)
        except (ValueError, TypeError):
            if attempt == 4:
                raise ValueError(f"unreadable lock file content {text[:200]!r}") from None
            time.sleep(0.1)
    return None  # unreachable


def _age_s(path: Path) -> float | None:
    """Seconds since ``path`` was last touched (its owner's last heartbeat); None when it is gone."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return None


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


def _take_over(path: Path, stale: LockOwner | None, owner: LockOwner, stale_age_s: float | None) -> bool:
    """Replace the stale lock by ours, unless another process got there first or it came alive (then False).

    ``stale`` is the owner we judged gone (None: the file was unreadable); ``stale_age_s``, when
    the judgement was its heartbeat, the age it must still have.
    """
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
        age = _age_s(path)
        if stale_age_s is not None and age is not None and age < stale_age_s:
            return False  # a heartbeat came in since we looked: alive after all
        path.unlink(missing_ok=True)
        return _create(path, owner)
    finally:
        guard.unlink(missing_ok=True)


def _new_owner(heartbeat_s: float) -> LockOwner:
    return LockOwner(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        pid_start=_pid_start(os.getpid()),
        token=uuid.uuid4().hex,
        boot_id=_boot_id(),
        pid_ns=_pid_namespace(),
        heartbeat_s=heartbeat_s,
    )


def acquire(folder: str | os.PathLike, heartbeat_s: float = HEARTBEAT_S) -> LockOwner:
    """Take the lock of ``folder`` (created if needed) for this process; see the module docstring.

    Only takes it: ``output_lock`` also keeps the heartbeat going, which a holder must do to keep it.
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    owner = _new_owner(heartbeat_s)
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
            age = _age_s(path)
            if age is None:
                continue  # released meanwhile
            if age < MALFORMED_GRACE_S:
                raise SweepLockedError(
                    f"output {folder} is locked by {path}, which cannot be read ({error}); it is taken as a dead "
                    f"sweep's once {MALFORMED_GRACE_S:.0f} s old (now {age:.0f} s): try again then, or delete it now "
                    "if no sweep is running on this folder"
                ) from None
            if _take_over(path, None, owner, MALFORMED_GRACE_S):
                log.warning("output %s: taking over the lock file %s, unreadable for %.0f s (%s)", folder, path, age, error)
                return owner
        else:
            if holder is None:
                continue  # released between our create and our read: try again (the holder is gone)
            if owner_is_dead(holder):
                if _take_over(path, holder, owner, None):
                    log.warning(
                        "output %s: taking over the lock of a sweep that is no longer running (%s)", folder, holder.describe()
                    )
                    return owner
            elif holder.same_pid_space():
                raise SweepLockedError(
                    f"output {folder} is in use by another sweep ({holder.describe()}; running). "
                    f"Wait for it to finish or choose another output; if that sweep is dead, delete {path}"
                )
            else:
                age = _age_s(path)
                if age is None:
                    continue
                if age < holder.stale_after_s:
                    where = "on another host" if holder.host != owner.host else "in another container of this host"
                    raise SweepLockedError(
                        f"output {folder} is in use by another sweep ({holder.describe()}; {where}, last heartbeat "
                        f"{age:.0f} s ago). Wait for it to finish or choose another output; its lock is taken over "
                        f"once it misses heartbeats for {holder.stale_after_s:.0f} s (if that sweep is dead, delete {path})"
                    )
                if _take_over(path, holder, owner, holder.stale_after_s):
                    log.warning(
                        "output %s: taking over the lock of a sweep with no heartbeat for %.0f s (%s)",
                        folder,
                        age,
                        holder.describe(),
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


class Heartbeat:
    """Touches the lock file every ``owner.heartbeat_s`` in a daemon thread while the lock is held.

    If the file is no longer the owner's (taken over while this process was frozen past the stale
    bound), it says so as an error, once, and stops touching it: the other sweep owns the folder now.
    """

    def __init__(self, path: Path, owner: LockOwner):
        self.path, self.owner = path, owner
        self.stopped = threading.Event()
        self.lost = False
        self.thread = threading.Thread(target=self._run, name=f"sweep-lock-heartbeat {path}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(self.owner.heartbeat_s):
            try:
                current = _read_owner(self.path)
            except ValueError:
                current = None
            if current is None or current.token != self.owner.token:
                self.lost = True
                log.error(
                    "output %s: this sweep's lock %s was taken over by another sweep (or removed); results written "
                    "from now on may mix with that sweep's. Stop one of them.",
                    self.path.parent,
                    self.path,
                )
                return
            try:
                os.utime(self.path)
            except OSError as error:  # a full or flaky filesystem: try again at the next beat
                log.warning("output %s: could not renew the lock %s: %s", self.path.parent, self.path, error)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


@contextmanager
def output_lock(folder: str | os.PathLike, heartbeat_s: float = HEARTBEAT_S) -> Iterator[LockOwner]:
    """Hold the lock of the output ``folder`` for the ``with`` block, its heartbeat renewed meanwhile."""
    owner = acquire(folder, heartbeat_s)
    heartbeat = Heartbeat(Path(folder) / LOCK_NAME, owner)
    try:
        yield owner
    finally:
        heartbeat.stop()
        release(folder, owner)
