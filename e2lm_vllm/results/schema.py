"""The results schema: the single place that says what a row of each table holds.

Long format, one row per measurement, so that scoring, plots and the curriculum builder read
any sweep without knowing which tasks it ran.
"""

from __future__ import annotations

import pyarrow as pa

# Identity of one evaluated cell: which checkpoint of which model family, on which task.
CELL_FIELDS = [
    pa.field("model", pa.string(), nullable=False),  # family name, e.g. "dense-1b-arch1"
    pa.field("checkpoint", pa.string(), nullable=False),  # path, "repo@revision" or "repo/subfolder"
    pa.field("step", pa.int64(), nullable=False),  # training step (iteration)
    pa.field("tokens", pa.float64()),  # tokens seen, when known (raw count, not billions)
    pa.field("task", pa.string(), nullable=False),
]

# metrics.parquet: one row per (model, checkpoint, step, tokens, task, metric, filter).
METRICS_SCHEMA = pa.schema(
    CELL_FIELDS
    + [
        pa.field("metric", pa.string(), nullable=False),  # "acc", "acc_norm", "word_perplexity", ...
        pa.field("filter", pa.string(), nullable=False),  # lm-eval filter name, "none" by default
        pa.field("value", pa.float64()),
        pa.field("stderr", pa.float64()),
        pa.field("n_samples", pa.int64()),
        pa.field("num_fewshot", pa.int64()),
        pa.field("eval_seconds", pa.float64()),  # wall time of the cell's evaluation, engine start excluded
        pa.field("engine_seconds", pa.float64()),  # engine start / weight load charged to this cell
        pa.field("backend", pa.string()),  # "vllm" or "hf"
        pa.field("package_version", pa.string()),
        pa.field("vllm_version", pa.string()),
        pa.field("lm_eval_version", pa.string()),
        pa.field("config_hash", pa.string()),
        # What the numbers were computed from (`e2lm_vllm.sweep.inputs`): a row traces to its task and checkpoint files.
        pa.field("task_fingerprint", pa.string()),
        pa.field("checkpoint_fingerprint", pa.string()),
        # Set when the tables are written: the checkpoint was evaluated, then deleted (its rows are kept).
        pa.field("checkpoint_deleted", pa.bool_()),
    ]
)

# samples.parquet: one row per (cell, doc) for item-level analysis (difficulty, learnability).
SAMPLES_SCHEMA = pa.schema(
    CELL_FIELDS
    + [
        pa.field("doc_id", pa.int64(), nullable=False),
        pa.field("doc_hash", pa.string()),  # lm-eval's hash of the doc, stable across runs
        pa.field("target", pa.int64()),  # gold choice index (multiple choice), else null
        pa.field("prediction", pa.int64()),  # argmax of choice logprobs (multiple choice), else null
        pa.field("correct", pa.bool_()),  # acc of this doc (multiple choice) or exact match
        pa.field("choice_logprobs", pa.list_(pa.float64())),  # sum of continuation-token logprobs per choice
        pa.field("choice_is_greedy", pa.list_(pa.bool_())),
        pa.field("choice_tokens", pa.list_(pa.int64())),  # continuation length in tokens per choice
        pa.field("choice_bytes", pa.list_(pa.int64())),  # continuation length in UTF-8 bytes per choice
        pa.field("response", pa.string()),  # generated text (generate_until tasks), else null
        # Added by the sweep: lm-eval logs one sample per (doc, filter), and generative targets are text.
        pa.field("filter", pa.string()),  # lm-eval filter of this response, "none" by default
        pa.field("target_text", pa.string()),  # gold answer as text (generate_until tasks), else null
        pa.field("checkpoint_deleted", pa.bool_()),  # as in metrics.parquet
    ]
)

# failures.parquet: one row per cell that failed after all retries.
FAILURES_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("checkpoint", pa.string(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=False),
        # "non_finite" (NaN/inf weights, scores or metrics: recorded once, never retried), "no_metrics"
        # (lm-eval gave the task no metric), or "error"
        pa.field("kind", pa.string()),
        pa.field("attempts", pa.int64()),
        pa.field("config_hash", pa.string()),
    ]
)
