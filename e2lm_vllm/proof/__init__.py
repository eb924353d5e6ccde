"""Proof tools: the parity check against lm-eval's own backends, the HF reference, and `doctor` (this machine's verdict).

May import the engine (through its `ScoringEngine` protocol), lm, models, taskdata and the top-level modules; only cli imports it."""
