"""Atomic Parquet reads and writes: an interrupted writer never leaves a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class ResultsWriteError(OSError):
    """A results file could not be written (disk full, read-only folder, ...); the old file, if any, is unchanged.

    Keeps the cause's ``errno``; the message names the file and the cause.
    """


def _write_error(path: Path, error: OSError) -> ResultsWriteError:
    cause = os.strerror(error.errno) if error.errno else str(error)  # the chained error keeps the details
    failure = ResultsWriteError(f"cannot write {path}: {cause} (nothing written there; earlier results intact)")
    failure.errno = error.errno  # str(failure) stays the message above
    return failure


def write_table_atomic(table: pa.Table, path: str | os.PathLike, schema: pa.Schema | None = None) -> Path:
    """Write ``table`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    Either the whole new file is at ``path`` or the previous content is: a failure (full disk,
    read-only folder) removes the temporary file and raises ``ResultsWriteError`` naming ``path``.
    """
    path = Path(path)
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        pq.write_table(table, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, ResultsWriteError):
            raise _write_error(path, error) from error
        raise
    return path


def read_table(path: str | os.PathLike, schema: pa.Schema | None = None) -> pa.Table:
    """Read a Parquet file or a folder of Parquet files; an absent path gives an empty table of ``schema``."""
    path = Path(path)
    if not path.exists():
        if schema is None:
            raise FileNotFoundError(path)
        return schema.empty_table()
    table = pq.read_table(path)
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    return table
