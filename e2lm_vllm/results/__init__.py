"""Results storage: the one schema of every table we write, and atomic Parquet I/O.

Imports no other e2lm_vllm package (pyarrow, and the module e2lm_vllm.atomic); the sweep writes and reads its tables through it."""

from e2lm_vllm.results.schema import FAILURES_SCHEMA, METRICS_SCHEMA, SAMPLES_SCHEMA
from e2lm_vllm.results.store import ResultsWriteError, read_table, write_table_atomic

__all__ = ["METRICS_SCHEMA", "SAMPLES_SCHEMA", "FAILURES_SCHEMA", "ResultsWriteError", "read_table", "write_table_atomic"]
