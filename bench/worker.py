"""One backend, all workloads, in its own process: `python -m bench.worker` (started by `bench.run`).

Writes its measurements as JSON after every workload, so a crash loses nothing already measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from e2lm_vllm.offline import set_offline_defaults

# Before vLLM is imported: the engine core in this process (both vLLM backends alike), offline.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
set_offline_defaults()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# vLLM's CPU worker drops torch to 1 thread "for serving" unless OMP_NUM_THREADS is set; HF uses
# every core. All backends get every core, so only the scoring strategy differs.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))


def run_backend(
    backend: str, workload_names: list[str], *, quick: bool, model_path: str, include_path: str, output: Path
) -> dict[str, Any]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from bench.backends import BUILDERS, SETTINGS, settings_record, shutdown, vllm_counters_of
    from bench.measure import ScoringProbe, account_tokens, counter_deltas, sample_scores
    from bench.workloads import WORKLOADS

    settings = SETTINGS
    recorded = settings_record(settings)
    report: dict[str, Any] = {
        "backend": backend,
        "settings": recorded,
        "load_average_before": list(os.getloadavg()),
        "workloads": {},
    }
    started = time.perf_counter()
    lm = BUILDERS[backend](model_path, settings)
    report["start_seconds"] = time.perf_counter() - started
    probe = ScoringProbe(lm)
    counters = vllm_counters_of(backend, lm)
    task_manager = TaskManager(include_path=include_path)
    try:
        for name in workload_names:
            workload = WORKLOADS[name]
            probe.reset()
            counters_before = counters() if counters is not None else None
            e2lm_before = dict(lm.engine.stats.__dict__) if backend == "e2lm_vllm" else None
            evaluate_started = time.perf_counter()
            results = simple_evaluate(
                model=lm,
                tasks=list(workload.tasks),
                num_fewshot=workload.num_fewshot,
                limit=workload.limit_for(quick),
                log_samples=True,
                task_manager=task_manager,
                bootstrap_iters=0,
            )
            evaluate_seconds = time.perf_counter() - evaluate_started
            scores, loglikelihoods = sample_scores(results["samples"])
            tokens = account_tokens(probe.token_pairs, int(lm.max_length), recorded["block_size"])
            measured: dict[str, Any] = {
                "scoring_seconds": probe.scoring_seconds,
                "evaluate_seconds": evaluate_seconds,
                "tokens": tokens.__dict__,
                "scores": scores,
                "loglikelihoods": loglikelihoods,
            }
            if counters_before is not None:
                measured["vllm_counters"] = counter_deltas(counters_before, counters())
            if e2lm_before is not None:
                after = lm.engine.stats.__dict__
                measured["e2lm_engine_stats"] = {key: after[key] - e2lm_before[key] for key in after}
            if backend == "hf":
                measured["hf_model_positions"] = probe.model_positions
            report["workloads"][name] = measured
            report["load_average_after"] = list(os.getloadavg())
            output.write_text(json.dumps(report))
            print(
                f"[bench] {backend} {name}: {tokens.requests} requests, scoring {probe.scoring_seconds:.1f} s",
                flush=True,
            )
    finally:
        shutdown(backend, lm)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("backend")
    parser.add_argument("--workloads", required=True, help="comma-separated workload names")
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--include-path", required=True)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(f"[bench] {args.backend} on {platform.node()} python {sys.version.split()[0]}", flush=True)
    run_backend(
        args.backend,
        args.workloads.split(","),
        quick=args.quick,
        model_path=args.model_path,
        include_path=args.include_path,
        output=args.output,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
