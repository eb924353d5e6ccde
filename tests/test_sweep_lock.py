"""One running sweep per output folder (e2lm_vllm/sweep/lock.py). Fast, no Ray, no engine."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from e2lm_vllm.sweep import runner
from e2lm_vllm.sweep.config import SweepConfigError, config_from_flags
from e2lm_vllm.sweep.lock import (
    LOCK_NAME,
    MALFORMED_GRACE_S,
    LockOwner,
    SweepLockedError,
    acquire,
    output_lock,
    release,
)

REPO = Path(__file__).resolve().parents[1]

# Takes the lock of argv[1], says so, and holds it until killed (or for argv[2] seconds).
_HOLDER = textwrap.dedent(
    """
    import sys, time
    from e2lm_vllm.sweep.lock import output_lock
    with output_lock(sys.argv[1]) as owner:
        print("locked", owner.pid, owner.started, flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of ``tmp_path / 'out'``: (process, pid, started)."""
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / "out"), "120"], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        word, pid, started = process.stdout.readline().split()
        assert word == "locked" and int(pid) == process.pid
        yield process, int(pid), started
    finally:
        process.kill()
        process.wait()


def test_lock_file_names_the_owner_and_is_removed_on_exit(tmp_path):
    with output_lock(tmp_path / "out") as owner:
        written = json.loads((tmp_path / "out" / LOCK_NAME).read_text())
        assert (written["host"], written["pid"]) == (socket.gethostname(), os.getpid())
        assert written["started"] == owner.started and written["started"].endswith("+00:00")
    assert not (tmp_path / "out" / LOCK_NAME).exists()
    with output_lock(tmp_path / "out"):  # free again
        pass


def test_a_live_sweep_in_another_process_is_refused_with_its_identity(tmp_path, holder):
    process, pid, started = holder
    with pytest.raises(SweepLockedError) as error:
        with output_lock(tmp_path / "out"):
            pass
    message = str(error.value)
    assert isinstance(error.value, SweepConfigError)  # the CLI prints it and exits 2
    assert f"output {tmp_path / 'out'} is in use by another sweep (host {socket.gethostname()}, pid {pid}, started {started}; running)" in message
    assert f"if that sweep is dead, delete {tmp_path / 'out' / LOCK_NAME}" in message
    assert process.poll() is None  # the holder is untouched


def test_the_lock_of_a_killed_sweep_is_taken_over_with_a_warning(tmp_path, holder, caplog):
    process, pid, started = holder
    process.send_signal(signal.SIGKILL)  # dies without releasing: a stale lock is left
    process.wait()
    assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["pid"] == pid
    with caplog.at_level(logging.WARNING, logger="e2lm_vllm.sweep"):
        with output_lock(tmp_path / "out") as owner:
            assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["token"] == owner.token
    assert f"taking over the lock of a sweep that is no longer running (host {socket.gethostname()}, pid {pid}, started {started})" in caplog.text


def _plant(folder: Path, owner: LockOwner) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(asdict(owner)))


def test_a_reused_pid_is_stale_and_another_hosts_lock_is_refused(tmp_path):
    mine = acquire(tmp_path / "probe")
    release(tmp_path / "probe", mine)
    # Same host, our own (live) pid, but another process start time: the pid was reused.
    _plant(tmp_path / "reused", replace(mine, pid_start="1", token="old"))
    with output_lock(tmp_path / "reused") as owner:
        assert owner.token != "old"
    # Another host: its pid means nothing here, so its fresh lock is refused (taken over only once its heartbeat stops).
    _plant(tmp_path / "remote", replace(mine, host="gpu-node-7", pid=999_999_999, token="remote"))
    with pytest.raises(SweepLockedError, match=r"in use by another sweep \(host gpu-node-7, pid 999999999, started .*; on another host, last heartbeat 0 s ago\)"):
        acquire(tmp_path / "remote")
    assert json.loads((tmp_path / "remote" / LOCK_NAME).read_text())["token"] == "remote"


def _age(path: Path, seconds: float) -> None:
    """Make ``path`` look last touched ``seconds`` ago: a heartbeat missed for that long."""
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.mark.parametrize("content", ["", "garbage", "[1]", '{"host": "h"}'])
def test_an_unreadable_lock_is_refused_then_taken_over_once_old(tmp_path, content, caplog):
    """An empty or torn lock file (a sweep killed between creating and writing it) blocks only for the grace period."""
    lock = tmp_path / "out" / LOCK_NAME
    (tmp_path / "out").mkdir()
    lock.write_text(content)
    with pytest.raises(SweepLockedError, match=r"cannot be read .*taken as a dead sweep's once 60 s old \(now 0 s\): try again then, or delete it now if no sweep is running"):
        acquire(tmp_path / "out")
    _age(lock, MALFORMED_GRACE_S + 5)
    with caplog.at_level(logging.WARNING, logger="e2lm_vllm.sweep"):
        with output_lock(tmp_path / "out") as owner:
            assert json.loads(lock.read_text())["token"] == owner.token
    assert f"taking over the lock file {lock}, unreadable for 65 s" in caplog.text
    assert not lock.exists()


def test_release_leaves_other_owners_alone(tmp_path):
    owner = acquire(tmp_path / "mine")
    _plant(tmp_path / "mine", replace(owner, token="someone-else"))
    release(tmp_path / "mine", owner)
    assert (tmp_path / "mine" / LOCK_NAME).exists()


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


@pytest.mark.parametrize("other", ["container", "old-format"])
def test_a_lock_from_another_pid_space_on_this_hostname_lives_by_its_heartbeat(tmp_path, other, caplog):
    """Containers sharing a hostname: the holder's pid means nothing here (dead here, alive there).
    Its lock is refused while its heartbeat is fresh, and taken over once it stops."""
    if other == "container":  # same hostname and boot, another pid namespace
        mine = acquire(tmp_path / "probe")
        release(tmp_path / "probe", mine)
        holder = replace(mine, pid=_dead_pid(), pid_ns="pid:[1]", token="theirs")
        _plant(tmp_path / "out", holder)
    else:  # as a version without pid-space fields wrote it: its pid cannot be trusted either
        fields = {"host": socket.gethostname(), "pid": _dead_pid(), "started": "2026-01-01T00:00:00+00:00", "pid_start": None, "token": "theirs"}
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / LOCK_NAME).write_text(json.dumps(fields))
        holder = LockOwner(**fields)
    with pytest.raises(SweepLockedError, match=r"in another container of this host, last heartbeat 0 s ago\).*taken over once it misses heartbeats for 60 s"):
        acquire(tmp_path / "out")
    _age(tmp_path / "out" / LOCK_NAME, holder.stale_after_s - 5)  # late, not yet stale
    with pytest.raises(SweepLockedError):
        acquire(tmp_path / "out")
    _age(tmp_path / "out" / LOCK_NAME, holder.stale_after_s + 5)
    with caplog.at_level(logging.WARNING, logger="e2lm_vllm.sweep"):
        owner = acquire(tmp_path / "out")
    assert owner.token != "theirs" and json.loads((tmp_path / "out" / LOCK_NAME).read_text())["token"] == owner.token
    assert f"taking over the lock of a sweep with no heartbeat for 65 s ({holder.describe()})" in caplog.text


def test_the_holder_renews_its_heartbeat_and_notices_a_takeover(tmp_path, caplog):
    lock = tmp_path / "out" / LOCK_NAME
    with caplog.at_level(logging.ERROR, logger="e2lm_vllm.sweep"):
        with output_lock(tmp_path / "out", heartbeat_s=0.1) as owner:
            assert json.loads(lock.read_text())["heartbeat_s"] == 0.1
            _age(lock, 100)
            time.sleep(0.5)
            assert time.time() - lock.stat().st_mtime < 1.0, "the heartbeat did not touch the lock file"
            _plant(tmp_path / "out", replace(owner, token="usurper"))  # taken over while we were frozen
            time.sleep(0.5)
            assert json.loads(lock.read_text())["token"] == "usurper"  # left to its new owner
    assert "was taken over by another sweep" in caplog.text
    assert json.loads(lock.read_text())["token"] == "usurper"  # release did not remove someone else's


def test_of_many_sweeps_taking_over_one_stale_lock_exactly_one_wins(tmp_path):
    mine = acquire(tmp_path / "probe")
    release(tmp_path / "probe", mine)
    _plant(tmp_path / "out", replace(mine, pid=_dead_pid(), started="2020-01-01T00:00:00+00:00", token="dead"))
    racers = [
        subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "out"), "5"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [racer.communicate(timeout=60) for racer in racers]
    winners = [out for out, _ in results if out.startswith("locked")]
    losers = [err for out, err in results if not out.startswith("locked")]
    assert len(winners) == 1, results
    assert all("is in use by another sweep" in err for err in losers), losers


def test_run_sweep_holds_the_lock_before_anything_else(tmp_path, holder, monkeypatch):
    def no_ray(*args, **kwargs):
        raise AssertionError("the sweep went on to evaluate (and would start Ray)")

    monkeypatch.setattr(runner.SweepSession, "evaluate", no_ray)
    (tmp_path / "run" / "step_1").mkdir(parents=True)
    config = config_from_flags(checkpoints=[str(tmp_path / "run" / "step_1")], tasks="t", output=str(tmp_path / "out"))
    with pytest.raises(SweepLockedError, match=f"pid {holder[1]}"):
        runner.run_sweep(config, progress=False)
    assert not (tmp_path / "out" / "runs.jsonl").exists()
