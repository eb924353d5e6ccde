"""Eval curves in W&B, TensorBoard and MLflow: `spec` parses the targets, `points` names metric rows at a training step, `ledger` (OUTPUT/trackers.json) keeps what each run holds, `push` is the sweep's hook (it queues; a thread per target pushes, so no tracker holds the sweep), one module per tracker.

May import atomic, results and quality; never the sweep (which imports it), the lm or the engine.
"""
