"""`e2lm-vllm parity`: the proof that the numbers are right.

Runs the same lm-eval tasks (same documents, same requests) through three models, one engine at a
time: `e2lm_vllm`; the reference, the same vLLM engine without prefix reuse; and lm-eval's HFLM.

**The reference** is lm-eval's own `vllm` model (`lm_eval --model vllm`), built from the `vllm.LLM`
keyword arguments our engine was started with and prefix caching off (`e2lm_vllm.proof.reference`): every
request is one whole prompt, its continuation read from vLLM's prompt logprobs. Chosen over our own
engine with prefix caching off because it shares none of our code: lm-eval's tokenization,
truncation, rolling windows, generation stops and sums, so the comparison checks all of `lm.py`, the
planner and the engine's reads of the cache, not only the cache. What is left is exactly what prefix
reuse changes: the keys and values of a prefix computed in another forward pass (other batch
shapes, so other reduction orders in the CPU kernels), and rows read from a decode step instead of a
prompt-logprob row.

**Why not HF.** vLLM and PyTorch are two implementations of the model: they differ by far more in
bfloat16 than in float32, lm-eval's `vllm` as much as ours (docs/measurements.md#why-not-against-hf).
Those are the engine's differences, not ours; a criterion against HF fails for them although
nothing is wrong, and at the tolerance they need it no longer sees a planner bug (a row read from
the wrong place is off by 1e-2 nats or far more).

**Tolerances** (`TOLERANCES`, nats per request; a continuation of n > `TOKENS_PER_TOLERANCE` tokens
may differ by tolerance x n / TOKENS_PER_TOLERANCE; rolling log-likelihoods are compared per token;
the measurements behind each: docs/measurements.md#tolerances):
- float32: 1e-4, 4x the worst measured difference per 10 tokens. That is float32 reduction-order noise: a
  prefix's keys and values computed in a forward pass of another shape (another batch) move logits
  by a few ulps, summed over a continuation's tokens; a planner bug (>= 1e-2 nats) stays 100x above it.
- bfloat16 / float16: 0.5, 1.4x the worst measured. Once a few-shot block is reused, the 16-bit
  rounding of its keys and values flips, and with native bfloat16 the kernels round differently
  with the batch shape itself, lm-eval's own `vllm` model included. So in 16 bits the engine is its
  own noise floor. It catches gross errors only (a row read from the wrong place,
  a token dropped, a few nats); metrics, which can flip between near-tied choices at this size, are
  reported, not required equal (`METRICS_MUST_MATCH`). It is float32 parity that proves the
  planner, and `e2lm-vllm doctor` runs both where bfloat16 is native.
  Sums of the same rows in another order differ by float64 rounding: a request may always differ
  by `SUM_ROUNDING` x |its log-likelihood|. Not yet measured on GPU, whose kernels change their
  reduction order with the batch shape: `e2lm-vllm doctor` is the command that finds out
  (`--tolerance` overrides).

**The distance to HF** is reported (mean and max |Δ| per request type, for `e2lm_vllm` and for the
reference) and checked: ours may be no farther from HF than the reference is, plus a slack of the
tolerance. That slack is the triangle inequality: |ours - hf| <= |ref - hf| + |ours - ref|, and
|ours - ref| is bounded by the tolerance. So this check never fails while the reference check
passes; it states the guarantee in the terms a user of lm-eval's HF backend asks for, and it catches
a report that pairs requests wrongly.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# nats per request, from the largest differences measured in each dtype (docs/measurements.md#tolerances)
TOLERANCES = {"float32": 1e-4, "bfloat16": 0.5, "float16": 0.5}
# In half precision a metric may flip between near-tied choices: reported, not required equal.
METRICS_MUST_MATCH = {"float32": True, "bfloat16": False, "float16": False}
# A continuation of n tokens may differ by tolerance * max(1, n / TOKENS_PER_TOLERANCE) nats.
TOKENS_PER_TOLERANCE = 10
# Relative float64 rounding of a sum of the same rows added in another order; equal beyond it.
SUM_ROUNDING = 1e-9
DTYPE_NAMES = {"float": "float32", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "half": "float16"}
SCORED_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice")


def tolerance_for(dtype: str) -> float:
    """The default tolerance of an engine dtype (a torch dtype or its name)."""
    name = DTYPE_NAMES.get(str(dtype).removeprefix("torch."))
    if name is None:
        raise ValueError(f"no parity tolerance for dtype {dtype!r}; pass --tolerance")
    return TOLERANCES[name]


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
class HFDistance:
    """|Δ| to lm-eval's HFLM, of `e2lm_vllm` and of the reference, for one request type."""

    request_type: str
    n: int
    max_abs_diff: float
    mean_abs_diff: float
    reference_max_abs_diff: float
    reference_mean_abs_diff: float
    # triangle-inequality slack: the largest / the mean allowed |ours - reference|
    slack_max: float
    slack_mean: float
    identical_generations: float | None = None

    @property
    def ok(self) -> bool:
        return (
            self.max_abs_diff <= self.reference_max_abs_diff + self.slack_max
            and self.mean_abs_diff <= self.reference_mean_abs_diff + self.slack_mean
        )


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
    reference: str = "hf"  # what `request_types` and `metrics` compare e2lm_vllm with
    dtype: str | None = None
    hf: list[HFDistance] = field(default_factory=list)  # empty when HF was not run
    metrics_checked: bool = True  # False in half precision (METRICS_MUST_MATCH): reported only

    @property
    def hf_ok(self) -> bool:
        return all(item.ok for item in self.hf)

    @property
    def ok(self) -> bool:
        return self.within_tolerance and (self.metrics_equal or not self.metrics_checked) and self.hf_ok

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        for row, item in zip(payload["hf"], self.hf):
            row["ok"] = item.ok
        payload.update(ok=self.ok, hf_ok=self.hf_ok)
        return payload


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


def evaluate_all(
    lm: Any, tasks: list[str], *, include_path: str | None, limit: int | None, num_fewshot: int | None | Mapping[str, int | None]
) -> dict:
    """`evaluate`, with a number of shots per task when `num_fewshot` maps task names to them.

    lm-eval takes one `num_fewshot` for all tasks of a call: tasks of each shot count are evaluated
    in one call each, and their samples, configs and results are merged (task names are disjoint).
    """
    if not isinstance(num_fewshot, Mapping):
        return evaluate(lm, tasks, include_path=include_path, limit=limit, num_fewshot=num_fewshot)
    by_shots: dict[int | None, list[str]] = {}
    for task in tasks:
        by_shots.setdefault(num_fewshot.get(task), []).append(task)
    merged: dict[str, dict] = {"samples": {}, "configs": {}, "results": {}}
    for shots, group in by_shots.items():
        results = evaluate(lm, group, include_path=include_path, limit=limit, num_fewshot=shots)
        for key, values in merged.items():
            values.update(results[key])
    return merged


def _metric_rows(results: dict) -> dict[tuple[str, str], float]:
    rows = {}
    for task, values in results["results"].items():
        for key, value in values.items():
            if key == "alias" or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            rows[(task, key)] = float(value)
    return rows


@dataclass
class _Pair:
    output_type: str
    ours: Any
    theirs: Any
    diff: float | None = None  # |Δ| in nats (per token for rolling); None for generations
    allowed: float = 0.0


def _pairs(ours: dict, theirs: dict, tolerance: float, tokens_of: Callable[[str], list]) -> Iterator[_Pair]:
    """Every response of `ours` with the same response of `theirs` and its allowed |Δ|."""
    for task, our_samples in ours["samples"].items():
        their_by_doc = {sample["doc_id"]: sample for sample in theirs["samples"][task]}
        output_type = ours["configs"][task]["output_type"]
        for sample in our_samples:
            reference = their_by_doc[sample["doc_id"]]
            for mine, other, arguments in zip(sample["resps"], reference["resps"], sample["arguments"]):
                mine, other = mine[0], other[0]
                if output_type == "generate_until":
                    yield _Pair(output_type, mine, other)
                elif output_type == "loglikelihood_rolling":
                    tokens = max(len(tokens_of(arguments[0])), 1)
                    allowed = max(tolerance, SUM_ROUNDING * abs(other) / tokens)
                    yield _Pair(output_type, mine, other, abs(mine - other) / tokens, allowed)
                else:
                    context, continuation = arguments[0], arguments[1]
                    scored = len(tokens_of(context + continuation)) - len(tokens_of(context))
                    allowed = max(tolerance * max(1.0, scored / TOKENS_PER_TOLERANCE), SUM_ROUNDING * abs(other[0]))
                    yield _Pair(output_type, mine, other, abs(mine[0] - other[0]), allowed)


def _share(pair: _Pair) -> float:
    """|Δ| / allowed |Δ|: at most 1 to pass."""
    if pair.allowed > 0:
        return pair.diff / pair.allowed
    return 0.0 if pair.diff == 0 else math.inf


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def compare(
    vllm_results: dict, hf_results: dict, tolerance: float, tokens_of: Any, *, reference: str = "hf"
) -> ParityReport:
    """Compare two `simple_evaluate` outputs made from the same tasks and documents.

    `hf_results` is whatever `e2lm_vllm` is compared with (named `reference` in the report).
    """
    by_type: dict[str, list[_Pair]] = {}
    for pair in _pairs(vllm_results, hf_results, tolerance, tokens_of):
        by_type.setdefault(pair.output_type, []).append(pair)
    request_types = []
    for output_type, pairs in sorted(by_type.items()):
        scored = [pair for pair in pairs if pair.diff is not None]
        diffs = [pair.diff for pair in scored]
        greedy = [pair.ours[1] == pair.theirs[1] for pair in scored if output_type != "loglikelihood_rolling"]
        generations = [pair.ours == pair.theirs for pair in pairs if pair.diff is None]
        request_types.append(
            RequestTypeParity(
                request_type=output_type,
                n=len(pairs),
                max_abs_diff=max(diffs, default=0.0),
                mean_abs_diff=_mean(diffs),
                max_diff_over_allowed=max((_share(pair) for pair in scored), default=0.0),
                is_greedy_agreement=_mean(greedy) if greedy else None,
                identical_generations=_mean(generations) if generations else None,
            )
        )
    ours, theirs = _metric_rows(vllm_results), _metric_rows(hf_results)
    metrics = []
    metrics_equal = ours.keys() == theirs.keys()
    for key in sorted(ours.keys() | theirs.keys()):
        a, b = ours.get(key, math.nan), theirs.get(key, math.nan)
        equal = a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= SUM_ROUNDING * max(1.0, abs(b))
        # perplexities are exp(sums of logprobs): equal to the tolerance of those sums, not bit for bit
        if not equal and ("perplexity" in key[1] or "bits_per_byte" in key[1]):
            equal = abs(a - b) <= tolerance * max(1.0, abs(b))
        metrics_equal = metrics_equal and equal
        metrics.append({"task": key[0], "metric": key[1], "e2lm_vllm": a, reference: b, "equal": equal})
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
        reference=reference,
    )


def hf_distances(ours: dict, reference: dict, hf: dict, tolerance: float, tokens_of: Any) -> list[HFDistance]:
    """The distance of `ours` and of `reference` to `hf`, per request type, with the slack allowed."""
    to_reference = list(_pairs(ours, reference, tolerance, tokens_of))
    ours_to_hf = list(_pairs(ours, hf, tolerance, tokens_of))
    reference_to_hf = list(_pairs(reference, hf, tolerance, tokens_of))
    rows = []
    for output_type in sorted({pair.output_type for pair in ours_to_hf}):

        def of_type(pairs: list[_Pair], output_type: str = output_type) -> list[_Pair]:
            return [pair for pair in pairs if pair.output_type == output_type]

        mine, theirs, allowed = of_type(ours_to_hf), of_type(reference_to_hf), of_type(to_reference)
        if output_type == "generate_until":
            rows.append(
                HFDistance(output_type, len(mine), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                           identical_generations=_mean([pair.ours == pair.theirs for pair in mine]))
            )  # fmt: skip
            continue
        rows.append(
            HFDistance(
                request_type=output_type,
                n=len(mine),
                max_abs_diff=max((pair.diff for pair in mine), default=0.0),
                mean_abs_diff=_mean([pair.diff for pair in mine]),
                reference_max_abs_diff=max((pair.diff for pair in theirs), default=0.0),
                reference_mean_abs_diff=_mean([pair.diff for pair in theirs]),
                slack_max=max((pair.allowed for pair in allowed), default=0.0),
                slack_mean=_mean([pair.allowed for pair in allowed]),
            )
        )
    return rows


def resolved_dtype(lm: Any) -> str:
    """The dtype our engine really runs in (`auto` resolved by vLLM), by its short name."""
    dtype = lm.engine.dtype
    return DTYPE_NAMES.get(dtype, dtype)


# Called with (backend name, lm) while that backend's engine is up: `e2lm-vllm doctor` benchmarks there.
EngineHook = Callable[[str, Any], None]


def run_parity(
    model_args: dict[str, Any],
    tasks: list[str],
    *,
    include_path: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None | Mapping[str, int | None] = None,
    tolerance: float | None = None,
    hf_batch_size: int = 8,
    with_hf: bool = True,
    on_engine: EngineHook | None = None,
) -> ParityReport:
    """Evaluate `tasks` on `e2lm_vllm`, on the reference, then on HF (one engine at a time), and compare.

    `tolerance` defaults to the one of the engine's dtype (`TOLERANCES`); `num_fewshot` is one
    number for all tasks or one per task (see `evaluate_all`).
    """
    from e2lm_vllm.lm import E2LMVLLM
    from e2lm_vllm.proof.reference import REFERENCE_NAME, build_reference_lm, shutdown_reference

    def run(lm: Any, name: str) -> dict:
        results = evaluate_all(lm, tasks, include_path=include_path, limit=limit, num_fewshot=num_fewshot)
        if on_engine is not None:
            on_engine(name, lm)
        return results

    vllm_lm = E2LMVLLM(**{**model_args, "backend": "vllm"})
    dtype = resolved_dtype(vllm_lm)
    tolerance = tolerance_for(dtype) if tolerance is None else tolerance
    tokens_of = vllm_lm.tok_encode
    ours = run(vllm_lm, "e2lm_vllm")
    stats = vllm_lm.engine_stats()
    vllm_lm.engine.shutdown()  # one engine at a time: ours goes before the reference starts
    reference_lm = build_reference_lm(vllm_lm)
    reference = run(reference_lm, REFERENCE_NAME)
    shutdown_reference(reference_lm)
    max_length = vllm_lm.max_length
    del vllm_lm, reference_lm
    gc.collect()
    report = compare(ours, reference, tolerance, tokens_of, reference=REFERENCE_NAME)
    report.engine_stats = stats
    report.dtype = dtype
    report.metrics_checked = METRICS_MUST_MATCH.get(dtype, True)
    if with_hf:
        hf_lm = E2LMVLLM.create_from_arg_obj({**model_args, "backend": "hf", "max_model_len": max_length, "batch_size": hf_batch_size})
        hf = evaluate_all(hf_lm, tasks, include_path=include_path, limit=limit, num_fewshot=num_fewshot)
        del hf_lm
        gc.collect()
        report.hf = hf_distances(ours, reference, hf, tolerance, tokens_of)
        hf_metrics = _metric_rows(hf)
        for row in report.metrics:
            row["hf"] = hf_metrics.get((row["task"], row["metric"]), math.nan)
    return report


def _verdict_line(report: ParityReport) -> str:
    verdict = "PASS" if report.ok else "FAIL"
    scale = f"x n/{TOKENS_PER_TOLERANCE} for continuations of n > {TOKENS_PER_TOLERANCE} tokens"
    line = (
        f"{verdict}: against {report.reference}, max |Δ| = {report.max_abs_diff:.2e} nats "
        f"(tolerance {report.tolerance:.1e} {scale}), metrics {'equal' if report.metrics_equal else 'DIFFER'}"
        + ("" if report.metrics_checked else " (not checked in half precision)")
    )
    if report.hf:
        line += f"; distance to hf {'no larger than' if report.hf_ok else 'LARGER than'} {report.reference}'s"
    return line


def format_report(report: ParityReport) -> str:
    dtype = f" ({report.dtype})" if report.dtype else ""
    lines = [f"parity of e2lm_vllm against lm-eval {report.reference}{dtype} on {', '.join(report.tasks)}", ""]
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
    if report.hf:
        ref = report.reference
        lines += ["", "distance to lm-eval hf (nats; /tok for rolling)"]
        lines.append(
            f"{'request type':<24}{'n':>6}{'ours max':>12}{ref + ' max':>12}{'ours mean':>12}{ref + ' mean':>12}  ok"
        )
        for row in report.hf:
            if row.request_type == "generate_until":
                lines.append(f"{row.request_type:<24}{row.n:>6}  same text as hf: {row.identical_generations:.1%}")
                continue
            lines.append(
                f"{row.request_type:<24}{row.n:>6}{row.max_abs_diff:>12.2e}{row.reference_max_abs_diff:>12.2e}"
                f"{row.mean_abs_diff:>12.2e}{row.reference_mean_abs_diff:>12.2e}  {'yes' if row.ok else 'NO'}"
            )
    with_hf = bool(report.metrics) and "hf" in report.metrics[0] and report.reference != "hf"
    header = f"{'task':<40}{'metric':<28}{'e2lm_vllm':>12}{report.reference:>12}" + (f"{'hf':>12}" if with_hf else "")
    lines += ["", header + "  equal"]
    for row in report.metrics:
        hf = f"{row['hf']:>12.6g}" if with_hf else ""
        lines.append(
            f"{row['task']:<40}{row['metric']:<28}{row['e2lm_vllm']:>12.6g}{row[report.reference]:>12.6g}{hf}"
            f"  {'yes' if row['equal'] else 'NO'}"
        )
    lines += ["", _verdict_line(report)]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrained", required=True, help="checkpoint folder or HF repo id")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    parser.add_argument("--include-path", help="folder of extra lm-eval task YAMLs")
    parser.add_argument("--limit", type=int, help="documents per task")
    parser.add_argument("--num-fewshot", type=int)
    parser.add_argument("--model-args", default="", help="more model args, key=value,... (e.g. max_model_len=2048)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--tolerance", type=float, help="nats per request against the reference (default: by dtype, "
        + ", ".join(f"{name} {value:g}" for name, value in TOLERANCES.items()) + ")"
    )  # fmt: skip
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument("--no-hf", action="store_true", help="skip the distance to lm-eval's HF model")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from e2lm_vllm.settings import ModelArgsError, parse_model_args

    tasks = [task for task in args.tasks.split(",") if task]
    try:
        model_args = {"pretrained": args.pretrained, "dtype": args.dtype, **parse_model_args(args.model_args)}
        report = run_parity(
            model_args,
            tasks,
            include_path=args.include_path,
            limit=args.limit,
            num_fewshot=args.num_fewshot,
            tolerance=args.tolerance,
            hf_batch_size=args.hf_batch_size,
            with_hf=not args.no_hf,
        )
    except (ModelArgsError, FileNotFoundError, KeyError) as error:
        print(f"e2lm-vllm parity: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1
