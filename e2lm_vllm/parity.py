"""`e2lm-vllm parity`: the proof that the numbers are right.

Runs the same lm-eval tasks (same documents, same requests) through `e2lm_vllm` on vLLM and through
lm-eval's own HFLM, then compares every response and every metric.

Tolerance: float32 noise between two implementations (vLLM's CPU kernels, PyTorch's) is a few
1e-6 nats per token and adds up over a continuation, so loglikelihood responses are compared in
nats per request, with the tolerance scaled by the continuation's tokens beyond
`TOKENS_PER_TOLERANCE` (a 30-token HellaSwag ending differs by 1.25e-4 in lm-eval's own `vllm`
backend too); rolling log-likelihoods sum thousands of tokens and are compared per token. A planner
bug (a row read from the wrong place) is off by 1e-2 nats or far more.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_TOLERANCE = 1e-4
# A continuation of n tokens may differ by tolerance * max(1, n / TOKENS_PER_TOLERANCE) nats.
TOKENS_PER_TOLERANCE = 10


@dataclass
class RequestTypeParity:
    request_type: str
    n: int = 0
    max_abs_diff: float = 0.0
    mean_abs_diff: float = 0.0
    # the largest |Δ| / allowed |Δ| (see TOKENS_PER_TOLERANCE): at most 1 to pass
    max_diff_over_allowed: float = 0.0
    is_greedy_agreement: float | None = None
    identical_generations: float | None = None


@dataclass
class ParityReport:
    tasks: list[str]
    tolerance: float
    max_abs_diff: float
    metrics_equal: bool
    within_tolerance: bool
    request_types: list[RequestTypeParity] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    engine_stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.within_tolerance and self.metrics_equal


def evaluate(lm: Any, tasks: list[str], *, include_path: str | None, limit: int | None, num_fewshot: int | None) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,
        task_manager=TaskManager(include_path=include_path),
    )


def _metric_rows(results: dict) -> dict[tuple[str, str], float]:
    rows = {}
    for task, values in results["results"].items():
        for key, value in values.items():
            if key == "alias" or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            rows[(task, key)] = float(value)
    return rows


def compare(vllm_results: dict, hf_results: dict, tolerance: float, tokens_of: Any) -> ParityReport:
    """Compare two `simple_evaluate` outputs made from the same tasks and documents."""
    by_type: dict[str, dict[str, list]] = {}
    for task, vllm_samples in vllm_results["samples"].items():
        hf_by_doc = {sample["doc_id"]: sample for sample in hf_results["samples"][task]}
        output_type = vllm_results["configs"][task]["output_type"]
        bucket = by_type.setdefault(output_type, {"diffs": [], "allowed": [], "greedy": [], "generations": []})
        for sample in vllm_samples:
            reference = hf_by_doc[sample["doc_id"]]
            for ours, theirs, arguments in zip(sample["resps"], reference["resps"], sample["arguments"]):
                ours, theirs = ours[0], theirs[0]
                if output_type == "generate_until":
                    bucket["generations"].append(ours == theirs)
                elif output_type == "loglikelihood_rolling":
                    bucket["diffs"].append(abs(ours - theirs) / max(len(tokens_of(arguments[0])), 1))
                    bucket["allowed"].append(tolerance)
                else:
                    context, continuation = arguments[0], arguments[1]
                    scored = len(tokens_of(context + continuation)) - len(tokens_of(context))
                    bucket["diffs"].append(abs(ours[0] - theirs[0]))
                    bucket["allowed"].append(tolerance * max(1.0, scored / TOKENS_PER_TOLERANCE))
                    bucket["greedy"].append(ours[1] == theirs[1])
    request_types = []
    for output_type, bucket in sorted(by_type.items()):
        diffs, greedy, generations = bucket["diffs"], bucket["greedy"], bucket["generations"]
        request_types.append(
            RequestTypeParity(
                request_type=output_type,
                n=len(diffs) or len(generations),
                max_abs_diff=max(diffs, default=0.0),
                mean_abs_diff=sum(diffs) / len(diffs) if diffs else 0.0,
                max_diff_over_allowed=max((d / a for d, a in zip(diffs, bucket["allowed"])), default=0.0),
                is_greedy_agreement=sum(greedy) / len(greedy) if greedy else None,
                identical_generations=sum(generations) / len(generations) if generations else None,
            )
        )
    ours, theirs = _metric_rows(vllm_results), _metric_rows(hf_results)
    metrics = []
    metrics_equal = ours.keys() == theirs.keys()
    for key in sorted(ours.keys() | theirs.keys()):
        a, b = ours.get(key, math.nan), theirs.get(key, math.nan)
        equal = a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9 * max(1.0, abs(b))
        # perplexities are exp(sums of logprobs): equal to the tolerance of those sums, not bit for bit
        if not equal and ("perplexity" in key[1] or "bits_per_byte" in key[1]):
            equal = abs(a - b) <= tolerance * max(1.0, abs(b))
        metrics_equal = metrics_equal and equal
        metrics.append({"task": key[0], "metric": key[1], "e2lm_vllm": a, "hf": b, "equal": equal})
    max_diff = max((item.max_abs_diff for item in request_types), default=0.0)
    within = all(item.max_diff_over_allowed <= 1.0 for item in request_types)
    generations_equal = all(item.identical_generations in (None, 1.0) for item in request_types)
    return ParityReport(
        tasks=sorted(vllm_results["samples"]),
        tolerance=tolerance,
        max_abs_diff=max_diff,
        metrics_equal=metrics_equal,
        within_tolerance=within and generations_equal,
        request_types=request_types,
        metrics=metrics,
    )


def run_parity(
    model_args: dict[str, Any],
    tasks: list[str],
    *,
    include_path: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    hf_batch_size: int = 8,
) -> ParityReport:
    """Evaluate `tasks` on both backends (vLLM first, then HF, one at a time) and compare."""
    from e2lm_vllm.lm import E2LMVLLM

    vllm_lm = E2LMVLLM(**{**model_args, "backend": "vllm"})
    max_length = vllm_lm.max_length
    tokens_of = vllm_lm.tok_encode
    vllm_results = evaluate(vllm_lm, tasks, include_path=include_path, limit=limit, num_fewshot=num_fewshot)
    stats = vllm_lm.engine_stats()
    vllm_lm.engine.shutdown()
    del vllm_lm
    gc.collect()
    hf_lm = E2LMVLLM(**{**model_args, "backend": "hf", "max_model_len": max_length, "batch_size": hf_batch_size})
    hf_results = evaluate(hf_lm, tasks, include_path=include_path, limit=limit, num_fewshot=num_fewshot)
    report = compare(vllm_results, hf_results, tolerance, tokens_of)
    report.engine_stats = stats
    return report


def format_report(report: ParityReport) -> str:
    lines = [f"parity of e2lm_vllm (vLLM) against lm-eval HFLM on {', '.join(report.tasks)}", ""]
    lines.append(
        f"{'request type':<24}{'n':>6}{'max |Δ|':>12}{'mean |Δ|':>12}{'|Δ|/allowed':>13}{'is_greedy =':>13}{'same text':>11}"
    )
    for item in report.request_types:
        greedy = "-" if item.is_greedy_agreement is None else f"{item.is_greedy_agreement:.1%}"
        same = "-" if item.identical_generations is None else f"{item.identical_generations:.1%}"
        share = "-" if item.request_type == "generate_until" else f"{item.max_diff_over_allowed:.2f}"
        unit = " /tok" if item.request_type == "loglikelihood_rolling" else ""
        lines.append(
            f"{item.request_type:<24}{item.n:>6}{item.max_abs_diff:>12.2e}{item.mean_abs_diff:>12.2e}"
            f"{share:>13}{greedy:>13}{same:>11}{unit}"
        )
    lines += ["", f"{'task':<40}{'metric':<28}{'e2lm_vllm':>12}{'hf':>12}  equal"]
    for row in report.metrics:
        lines.append(
            f"{row['task']:<40}{row['metric']:<28}{row['e2lm_vllm']:>12.6g}{row['hf']:>12.6g}  {'yes' if row['equal'] else 'NO'}"
        )
    verdict = "PASS" if report.ok else "FAIL"
    lines += [
        "",
        f"{verdict}: max |Δ| = {report.max_abs_diff:.2e} nats (tolerance {report.tolerance:.0e}, "
        f"x n/{TOKENS_PER_TOLERANCE} for continuations of n > {TOKENS_PER_TOLERANCE} tokens), "
        f"metrics {'equal' if report.metrics_equal else 'DIFFER'}",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrained", required=True, help="checkpoint folder or HF repo id")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    parser.add_argument("--include-path", help="folder of extra lm-eval task YAMLs")
    parser.add_argument("--limit", type=int, help="documents per task")
    parser.add_argument("--num-fewshot", type=int)
    parser.add_argument("--model-args", default="", help="more model args, key=value,... (e.g. max_model_len=2048)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="nats (default 1e-4)")
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from lm_eval.utils import simple_parse_args_string

    from e2lm_vllm.config import ModelArgsError

    model_args = {"pretrained": args.pretrained, "dtype": args.dtype, **simple_parse_args_string(args.model_args)}
    tasks = [task for task in args.tasks.split(",") if task]
    try:
        report = run_parity(
            model_args,
            tasks,
            include_path=args.include_path,
            limit=args.limit,
            num_fewshot=args.num_fewshot,
            tolerance=args.tolerance,
            hf_batch_size=args.hf_batch_size,
        )
    except (ModelArgsError, FileNotFoundError, KeyError) as error:
        print(f"e2lm-vllm parity: {error}", file=sys.stderr)
        return 2
    if args.json:
        payload = asdict(report)
        payload["ok"] = report.ok
        print(json.dumps(payload, indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1
