"""Eval curves in the trackers pre-training teams already read: W&B, TensorBoard, MLflow.

A sweep (``--log-to``, ``log_to:``) or ``e2lm-vllm log OUTPUT`` pushes the output folder's cells
into each tracker: ``spec`` parses the targets, ``points`` turns metric rows into named values at a
training step, ``ledger`` (``OUTPUT/trackers.json``) keeps each run's id and what it already holds,
``push`` is the hook the sweep calls (it queues each push for a background thread per target, so no
tracker holds the sweep), and one module per tracker speaks its API.
``e2lm-vllm log`` is ``e2lm_vllm.sweep.log`` (it takes the sweep's output lock).

May import atomic, results and quality; never the sweep (which imports it), the lm or the engine.
"""
