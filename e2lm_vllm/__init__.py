"""e2lm-vllm: exact, prefix-aware lm-evaluation-harness scoring on vLLM, checkpoint sweeps on Ray,
and E2LM benchmark-quality metrics.

Importing this package is cheap: vLLM, torch and Ray are imported only by the modules that need them.
Layers, lowest first: settings, checkpoint, cluster -> engine -> lm -> trackers -> sweep -> curriculum, cli; no import cycle
at any depth (`make lint`). Each package's docstring says what it may import.
"""

__version__ = "0.1.0"
