"""The scoring engine: types, the request planner, the `ScoringEngine` protocol, vLLM's engine and N of them on Ray.

May import the standard library, vLLM, `e2lm_vllm.checkpoint`, `e2lm_vllm.settings` and `e2lm_vllm.cluster` (`ray_init`, `worker_secrets`); never `lm`, `sweep` or `quality`."""
