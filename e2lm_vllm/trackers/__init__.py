"""Eval curves in W&B, TensorBoard and MLflow: `spec` parses the targets, `points` names metric rows at a training step, `ledger` (OUTPUT/trackers.json) keeps what each run holds, `push` is the sweep's hook, one module per tracker.

May import results and quality; never the sweep (which imports it), the lm or the engine.
"""
