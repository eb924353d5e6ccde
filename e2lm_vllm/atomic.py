"""Atomic file writes: a reader sees the whole old file or the whole new one, never half of one.

One home for the temporary-file-and-``os.replace`` pattern (``results.store.write_table_atomic``
is its Parquet form). Files get the mode ``open()`` would give them (0666 less the umask), not
``mkstemp``'s 0600. Imports nothing of e2lm_vllm; importing it is cheap.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """This process's umask, read without changing it (``os.umask`` sets it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # off Linux: read by setting, then put back at once
    os.umask(mask)
    return mask


def shared_file_mode(fd: int) -> None:
    """Give a ``tempfile.mkstemp`` file the mode ``open()`` would have: 0666 less the umask.

    mkstemp makes 0600 files, so results renamed into place would be unreadable by the teammates
    on shared storage that ``open()``'s usual 0644 (or the 0640 of umask 027) lets read them.
    """
    os.fchmod(fd, 0o666 & ~current_umask())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file in the same folder and ``os.replace``.

    A failure removes the temporary file and leaves the previous content, if any, at ``path``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        shared_file_mode(fd)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
