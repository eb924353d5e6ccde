"""`make bench`: lm-eval `hf`, lm-eval `vllm` and `e2lm_vllm` side by side on fixed real workloads."""
