"""Side-by-side comparison of the backends' measurements: ratios, agreement, targets, markdown."""

from __future__ import annotations

from typing import Any

from bench.backends import REFERENCE_BACKEND
from bench.workloads import WORKLOADS

# The targets (benchmark, not timed tests).
MAX_COMPUTED_OVER_TRIE_FEW_SHOT = 1.10
MIN_SPEEDUP_FEW_SHOT = {"vllm": 5.0, "hf": 3.0}
MIN_SPEEDUP_ZERO_SHOT = {"vllm": 1.0, "hf": 1.0}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def agreement(
    ours: dict[str, list[list[Any]]], reference: dict[str, list[list[Any]]]
) -> dict[str, float | int | None]:
    """Max |log-likelihood difference| and greedy-flag agreement over the requests both scored."""
    differences = []
    greedy_equal = 0
    for key, pairs in ours.items():
        for (logprob, greedy), (reference_logprob, reference_greedy) in zip(pairs, reference.get(key, [])):
            differences.append(abs(logprob - reference_logprob))
            greedy_equal += greedy == reference_greedy
    if not differences:
        return {"compared_requests": 0, "max_abs_logprob_diff": None, "greedy_agreement": None}
    return {
        "compared_requests": len(differences),
        "max_abs_logprob_diff": max(differences),
        "greedy_agreement": greedy_equal / len(differences),
    }


def workload_rows(backends: dict[str, dict[str, Any]], workload: str) -> list[dict[str, Any]]:
    """One row per backend for `workload`, with ratios to `e2lm_vllm` and agreement with `hf`."""
    measured = {name: run["workloads"][workload] for name, run in backends.items() if workload in run.get("workloads", {})}
    reference = measured.get(REFERENCE_BACKEND)
    agreement_reference = "hf" if "hf" in measured else REFERENCE_BACKEND
    rows = []
    for backend, data in measured.items():
        tokens = data["tokens"]
        counters = data.get("vllm_counters", {})
        if backend == "hf":
            # HF computes every position it is fed (padding included): no cache.
            computed = data.get("hf_model_positions")
            computed_source = "HF model positions fed (incl. padding)"
        else:
            computed = counters.get("computed_prefill_tokens")
            computed_source = "vllm:request_prefill_kv_computed_tokens"
        row: dict[str, Any] = {
            "workload": workload,
            "backend": backend,
            "scoring_seconds": data["scoring_seconds"],
            "evaluate_seconds": data["evaluate_seconds"],
            "requests": tokens["requests"],
            "requests_per_second": _ratio(tokens["requests"], data["scoring_seconds"]),
            "prompt_tokens_submitted": tokens["submitted_tokens"],
            "engine_prompt_tokens": counters.get("engine_prompt_tokens"),
            "engine_requests": counters.get("engine_requests"),
            "computed_prefill_tokens": computed,
            "computed_prefill_source": computed_source,
            "cached_prefill_tokens": counters.get("cached_prefill_tokens"),
            "trie_tokens": tokens["trie_tokens"],
            "block_floor_tokens": tokens.get("block_floor_tokens"),
            "gpu_block_floor_tokens": tokens.get("gpu_block_floor_tokens"),
            "truncated_requests": tokens["truncated_requests"],
            "computed_over_trie": _ratio(computed, tokens["trie_tokens"]),
            "block_floor_over_trie": _ratio(tokens.get("block_floor_tokens"), tokens["trie_tokens"]),
            "acc": data["scores"].get("acc"),
            "acc_norm": data["scores"].get("acc_norm"),
            "documents": data["scores"].get("documents"),
        }
        if "e2lm_engine_stats" in data:
            row["borrowed_rows"] = data["e2lm_engine_stats"].get("borrowed_rows")
            row["decoded_rows"] = data["e2lm_engine_stats"].get("decoded_rows")
        if reference is not None:
            row["scoring_seconds_over_e2lm"] = _ratio(data["scoring_seconds"], reference["scoring_seconds"])
            reference_computed = reference.get("vllm_counters", {}).get("computed_prefill_tokens")
            row["computed_over_e2lm"] = _ratio(computed, reference_computed)
        if backend != agreement_reference and agreement_reference in measured:
            row["agreement_with"] = agreement_reference
            row |= agreement(data["loglikelihoods"], measured[agreement_reference]["loglikelihoods"])
        rows.append(row)
    return rows


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of the issue, its measured value and whether it is met."""
    checks = []
    by_key = {(row["workload"], row["backend"]): row for row in rows}
    for workload_name in sorted({row["workload"] for row in rows}, key=list(WORKLOADS).index):
        few_shot = WORKLOADS[workload_name].few_shot
        ours = by_key.get((workload_name, REFERENCE_BACKEND))
        if ours is None:
            continue
        if few_shot:
            value = ours["computed_over_trie"]
            checks.append({
                "workload": workload_name,
                "target": f"computed prefill / trie tokens <= {MAX_COMPUTED_OVER_TRIE_FEW_SHOT}",
                "value": value,
                "met": value is not None and value <= MAX_COMPUTED_OVER_TRIE_FEW_SHOT,
            })
        minimum = MIN_SPEEDUP_FEW_SHOT if few_shot else MIN_SPEEDUP_ZERO_SHOT
        for other, needed in minimum.items():
            row = by_key.get((workload_name, other))
            if row is None:
                continue
            speedup = row["scoring_seconds_over_e2lm"]
            checks.append({
                "workload": workload_name,
                "target": f"scoring >= {needed:g}x faster than lm-eval {other}",
                "value": speedup,
                "met": speedup is not None and speedup >= needed,
            })
    return checks


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    lines = [
        f"Benchmark ({report['mode']} run, {report['created']}): SmolLM2-135M float32, max length "
        f"{report['settings']['max_model_len']}, vLLM {report['versions'].get('vllm')} eager, KV cache "
        f"{report['settings']['kv_cache_memory_bytes'] >> 20} MiB, block size {report['settings']['block_size']}, "
        f"{report['machine']['cpus']} CPUs (load average {_fmt(report['machine']['load_average_start'][0])} at start).",
        "Scoring seconds = time inside lm-eval's `loglikelihood` calls (engine start apart, below). "
        "Speedup = backend's scoring seconds / `e2lm_vllm`'s. Computed prefill: vLLM's "
        "`request_prefill_kv_computed_tokens`; for `hf`, positions fed to the model (padding included). "
        "Trie = distinct prefixes of all prompts (each shared prefix computed once). Block floor = the "
        "same on a cache of whole blocks, one prompt per request: each prompt recomputes the partial block "
        "after what it shares (one-token continuations read from one decode step can go below it); "
        "at this run's block size, and at 16, the block size of vLLM's GPU backends.",
        "",
        "| workload | backend | scoring s | req/s | speedup of e2lm_vllm | requests | prompt tokens submitted "
        "| prefill computed | trie-optimal | block floor | block floor @16 (GPU) | computed / trie | acc | acc_norm | max \\|Δ logprob\\| vs hf |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            "| " + " | ".join([
                row["workload"],
                row["backend"],
                _fmt(row["scoring_seconds"], 1),
                _fmt(row["requests_per_second"], 2),
                _fmt(row.get("scoring_seconds_over_e2lm"), 2) + "x" if row.get("scoring_seconds_over_e2lm") else "–",
                _fmt(row["requests"]),
                _fmt(row["prompt_tokens_submitted"]),
                _fmt(row["computed_prefill_tokens"]),
                _fmt(row["trie_tokens"]),
                _fmt(row.get("block_floor_tokens")),
                _fmt(row.get("gpu_block_floor_tokens")),
                _fmt(row["computed_over_trie"], 2),
                _fmt(row["acc"], 4),
                _fmt(row["acc_norm"], 4),
                _fmt(row.get("max_abs_logprob_diff"), 6) if row.get("agreement_with") == "hf" else "–",
            ]) + " |"
        )
    lines += ["", "| backend | engine/model start s |", "|---|---:|"]
    for backend, start in report["start_seconds"].items():
        lines.append(f"| {backend} | {_fmt(start, 1)} |")
    if report["targets"]:
        lines += ["", "| target | workload | measured | met |", "|---|---|---:|---|"]
        for check in report["targets"]:
            lines.append(f"| {check['target']} | {check['workload']} | {_fmt(check['value'], 2)} | {_fmt(check['met'])} |")
    if report.get("failures"):
        lines += ["", "Failed backends: " + ", ".join(f"{name} ({why})" for name, why in report["failures"].items())]
    return "\n".join(lines) + "\n"
