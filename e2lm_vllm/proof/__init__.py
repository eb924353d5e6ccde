"""Proof tools: the parity check against lm-eval's own backends, the HF reference, and `doctor` (this machine's verdict).

May import lm (and through it the engine), cluster, models, taskdata and the top-level modules; no module imports it (the CLI runs it by name)."""
