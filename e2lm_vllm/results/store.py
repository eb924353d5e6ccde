"""Atomic Parquet reads and writes: an interrupted writer never leaves a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from e2lm_vllm.atomic import shared_file_mode


class ResultsWriteError(OSError):
    """A results file could not be written (disk full, read-only folder, ...); the old file, if any, is unchanged.

    Keeps the cause's ``errno``; the message names the file and the cause.
    """


def _write_error(path: Path, error: OSError) -> ResultsWriteError:
    cause = os.strerror(error.errno) if error.errno else str(error)  # the chained error keeps the details
    failure = ResultsWriteError(f"cannot write {path}: {cause} (nothing written there; earlier results intact)")
    failure.errno = error.errno  # str(failure) stays the message above
    return failure


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns in its order; columns a file written by an older version lacks are null."""
    for schema_field in schema:
        if schema_field.name not in table.column_names:
            table = table.append_column(schema_field, pa.nulls(table.num_rows, type=schema_field.type))
    return table.select(schema.names).cast(schema)


def write_table_atomic(
    table: pa.Table, path: str | os.PathLike, schema: pa.Schema | None = None, metadata: dict[bytes, bytes] | None = None
) -> Path:
    """Write ``table`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    Either the whole new file is at ``path`` or the previous content is: a failure (full disk,
    read-only folder) removes the temporary file and raises ``ResultsWriteError`` naming ``path``.
    ``metadata`` goes into the file's footer (read back with ``pq.read_metadata``, without the rows).
    The file's mode follows the umask (``shared_file_mode``), as a file written in place would.
    """
    path = Path(path)
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            shared_file_mode(fd)
        finally:
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
        table = conform(table, schema)
    return table
