"""`make bench`, fidelity section: how far each backend's log-likelihoods are from HF float32, per dtype.

    python -m bench.fidelity [--quick] [--output-dir DIR]

For each dtype (float32, bfloat16), the same requests of each workload are scored by `e2lm_vllm`,
by lm-eval's own `vllm` model with the same engine settings and prefix caching off (the parity
reference, `e2lm_vllm.proof.reference`), and by lm-eval's `hf`, one engine after the other in this
process (`e2lm_vllm.proof.parity`'s order). HF in float32 is the truth: per workload and dtype, each
backend's mean and max |difference| of per-request log-likelihoods from it, and whether
`e2lm_vllm` equals lm-eval's `vllm` at the same dtype (max |difference| between the two and how
many requests are bit-identical). Workloads are bundled samples (no `../shared/data` needed).
Writes `<output-dir>/fidelity.json` and `fidelity.md` (`fidelity-quick.*` under `--quick`), after
every backend, so that an interrupted run keeps what it scored.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.workloads import Workload, by_name
from e2lm_vllm.offline import set_offline_defaults
from e2lm_vllm.taskdata.suites import SAMPLES_PREFIX, mmlu_task_name, task_name

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT_DIR = REPO_ROOT / "bench" / "results"
MODEL_NAME = "smollm2-135m"
DTYPES = ("float32", "bfloat16")
BACKENDS = ("hf", "vllm", "e2lm_vllm")  # report order; run order is e2lm_vllm, vllm, hf (as parity)
TRUTH = ("hf", "float32")  # (backend, dtype) that every distance is measured from
SCORED_OUTPUT_TYPES = ("loglikelihood", "multiple_choice")

# Sized for 2 CPU cores, where the whole run (2 dtypes x 3 backends, 6 model starts) took 17.5 minutes:
# bfloat16 is emulated there (no AVX512-BF16), and lm-eval's `vllm` in bfloat16 took 460 s, most of
# it on 32 whole 5-shot prompts (121 s in float32).
_LETTERS = tuple(mmlu_task_name(SAMPLES_PREFIX, "letter", subject) for subject in ("astronomy", "nutrition"))
# Columns as `bench.workloads.WORKLOADS`: name, tasks, num_fewshot, limit, quick_limit, description.
WORKLOADS: dict[str, Workload] = by_name(
    Workload("mmlu_5shot_letter", _LETTERS, 5, 4, 1, "MMLU 5-shot, answer letters (2 subjects x 4 questions x 4 letters)"),
    Workload("arc_challenge_0shot", (task_name(SAMPLES_PREFIX, "arc_challenge"),), 0, 12, 1, "ARC-Challenge 0-shot cloze (12 questions)"),
    Workload("piqa_0shot", (task_name(SAMPLES_PREFIX, "piqa"),), 0, 10, 1, "PIQA 0-shot (10 goals x 2 solutions)"),
)

# dtype -> backend -> workload -> request key -> log-likelihood
Scores = dict[str, dict[str, dict[str, dict[str, float]]]]


def loglikelihoods(results: Mapping[str, Any]) -> dict[str, float]:
    """Every scored request of a `simple_evaluate(..., log_samples=True)` output: `task/doc/choice` -> log-likelihood."""
    found: dict[str, float] = {}
    for task, samples in results["samples"].items():
        output_type = results["configs"][task]["output_type"]
        if output_type not in SCORED_OUTPUT_TYPES:
            raise ValueError(f"task {task} has output_type {output_type!r}; fidelity compares only {SCORED_OUTPUT_TYPES}")
        for sample in samples:
            for index, response in enumerate(sample["resps"]):
                found[f"{task}/{sample['doc_id']}/{index}"] = float(response[0][0])
    return found


def distance(truth: Mapping[str, float], other: Mapping[str, float]) -> dict[str, Any]:
    """Mean and max |difference| of `other` from `truth`, and how many are bit-identical, over the same requests."""
    if truth.keys() != other.keys():
        missing = sorted(truth.keys() ^ other.keys())
        raise ValueError(f"the two backends scored different requests, e.g. {missing[:3]}")
    differences = [abs(other[key] - truth[key]) for key in truth]
    return {
        "n": len(differences),
        "mean_abs_diff": sum(differences) / len(differences) if differences else None,
        "max_abs_diff": max(differences, default=None),
        "identical": sum(difference == 0.0 for difference in differences),
    }


def _merged(by_workload: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {f"{workload}:{key}": value for workload, scores in by_workload.items() for key, value in scores.items()}


def summarize(scores: Scores, workloads: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows against HF float32 (one per workload, dtype, backend) and rows of `e2lm_vllm` against `vllm`.

    Workload `all` pools every workload's requests. Only what was scored is summarized (an
    interrupted run reports the backends it finished).
    """
    to_truth, equality = [], []
    for workload in [*workloads, "all"]:
        parts = workloads if workload == "all" else [workload]

        def of(dtype: str, backend: str, parts: list[str] = parts) -> dict[str, float] | None:
            runs = scores.get(dtype, {}).get(backend, {})
            if not all(name in runs for name in parts):
                return None
            return _merged({name: runs[name] for name in parts})

        truth = of(TRUTH[1], TRUTH[0])
        for dtype in DTYPES:
            for backend in BACKENDS:
                measured = of(dtype, backend)
                if truth is not None and measured is not None:
                    to_truth.append({"workload": workload, "dtype": dtype, "backend": backend, **distance(truth, measured)})
            ours, reference = of(dtype, "e2lm_vllm"), of(dtype, "vllm")
            if ours is not None and reference is not None:
                equality.append({"workload": workload, "dtype": dtype, **distance(reference, ours)})
    return to_truth, equality


def _nats(value: float | None) -> str:
    if value is None:
        return "–"
    return "0" if value == 0 else f"{value:.2e}"


def markdown(report: dict[str, Any]) -> str:
    """The report's tables: per workload and dtype, each backend's mean / max |Δ| from HF float32, and ours = vllm."""
    rows = {(row["workload"], row["dtype"], row["backend"]): row for row in report["to_truth"]}
    equal = {(row["workload"], row["dtype"]): row for row in report["equality"]}
    lines = [
        f"bf16 fidelity ({report['mode']} run, {report['created']}): {report['model']}, CPU only "
        f"({report['machine']['cpus']} cores, vLLM {report['versions'].get('vllm')}, torch {report['versions'].get('torch')}), "
        f"max length {report['settings']['max_model_len']}; each backend at the dtype of its row.",
        "Each backend cell: mean / max over requests of \\|log-likelihood - HF float32's\\|, in nats. "
        "`e2lm_vllm` = `vllm`: mean / max \\|Δ\\| between the two at the same dtype, and the requests where they are "
        "bit-identical. `vllm` is lm-eval's own model with the same engine settings and prefix caching off.",
        "",
        "| workload | dtype | n | `hf` mean / max | lm-eval `vllm` mean / max | `e2lm_vllm` mean / max "
        "| `e2lm_vllm` = `vllm`: mean / max \\|Δ\\| | bit-identical |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for workload in [*report["workloads"], "all"]:
        for dtype in DTYPES:
            cells = []
            count = None
            for backend in BACKENDS:
                row = rows.get((workload, dtype, backend))
                if row is None:
                    cells.append("–")
                    continue
                count = row["n"]
                is_truth = (backend, dtype) == TRUTH
                cells.append("(truth)" if is_truth else f"{_nats(row['mean_abs_diff'])} / {_nats(row['max_abs_diff'])}")
            same = equal.get((workload, dtype))
            if same is not None:
                count = same["n"]
            if count is None:
                continue
            name = f"**{workload}**" if workload == "all" else workload
            lines.append(
                f"| {name} | {dtype} | {count} | " + " | ".join(cells) + " | "
                + (f"{_nats(same['mean_abs_diff'])} / {_nats(same['max_abs_diff'])} | {same['identical']} of {same['n']}"
                   if same else "– | –")
                + " |"
            )
    lines += ["", "| dtype | backend | start + scoring s |", "|---|---|---:|"]
    for dtype, backends in report["seconds"].items():
        for backend, seconds in backends.items():
            lines.append(f"| {dtype} | {backend} | {seconds:.1f} |")
    if report.get("failures"):
        lines += ["", "Failed: " + "; ".join(f"{key}: {why}" for key, why in report["failures"].items())]
    return "\n".join(lines) + "\n"


def _evaluate(lm: Any, workloads: list[Workload], *, quick: bool, include_path: str) -> dict[str, dict[str, float]]:
    from e2lm_vllm.proof.parity import evaluate_all

    scored = {}
    for workload in workloads:
        results = evaluate_all(
            lm, list(workload.tasks), include_path=include_path, limit=workload.limit_for(quick),
            num_fewshot=workload.num_fewshot,
        )  # fmt: skip
        scored[workload.name] = loglikelihoods(results)
    return scored


def score_dtype(
    model_args: dict[str, Any], dtype: str, workloads: list[Workload], *, quick: bool, include_path: str,
    record: Any,
) -> None:
    """Score every workload at `dtype` on `e2lm_vllm`, then lm-eval's `vllm`, then `hf`, one engine at a time.

    `record(dtype, backend, scores, seconds)` is called after each backend.
    """
    from bench.backends import HF_BATCH_SIZE
    from e2lm_vllm.lm import E2LMVLLM
    from e2lm_vllm.proof.parity import resolved_dtype
    from e2lm_vllm.proof.reference import build_reference_lm, shutdown_reference

    args = {**model_args, "dtype": dtype}
    started = time.perf_counter()
    ours_lm = E2LMVLLM(**{**args, "backend": "vllm"})
    if resolved_dtype(ours_lm) != dtype:
        raise RuntimeError(f"the engine runs in {resolved_dtype(ours_lm)}, not {dtype}")
    record(dtype, "e2lm_vllm", _evaluate(ours_lm, workloads, quick=quick, include_path=include_path), time.perf_counter() - started)
    ours_lm.engine.shutdown()  # one engine at a time: ours goes before the reference starts
    started = time.perf_counter()
    reference_lm = build_reference_lm(ours_lm)
    record(dtype, "vllm", _evaluate(reference_lm, workloads, quick=quick, include_path=include_path), time.perf_counter() - started)
    shutdown_reference(reference_lm)
    max_length = ours_lm.max_length
    del ours_lm, reference_lm
    gc.collect()
    started = time.perf_counter()
    hf_lm = E2LMVLLM.create_from_arg_obj({**args, "backend": "hf", "max_model_len": max_length, "batch_size": HF_BATCH_SIZE})
    record(dtype, "hf", _evaluate(hf_lm, workloads, quick=quick, include_path=include_path), time.perf_counter() - started)
    del hf_lm
    gc.collect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one document per task: a smoke test of the harness")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    args = parser.parse_args(argv)

    # Before vLLM is imported (as bench.worker): engines in this process start faster; offline;
    # every core for every backend (vLLM's CPU worker otherwise drops torch to one thread).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    set_offline_defaults()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    from bench.backends import SETTINGS, settings_record
    from bench.run import _git_commit, _versions
    from e2lm_vllm.models.prepare import prepare_model
    from e2lm_vllm.taskdata import include_path_for

    model_args = {"pretrained": str(prepare_model(MODEL_NAME)), **SETTINGS.overrides()}
    include_path = include_path_for("samples")
    workloads = list(WORKLOADS.values())
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = "fidelity-quick" if args.quick else "fidelity"
    scores: Scores = {}
    report: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "model": MODEL_NAME,
        "git_commit": _git_commit(),
        "settings": {key: value for key, value in settings_record(SETTINGS).items() if key != "dtype"},
        "versions": _versions(),
        "machine": {"cpus": os.cpu_count(), "load_average_start": list(os.getloadavg())},
        "truth": {"backend": TRUTH[0], "dtype": TRUTH[1]},
        "workloads": [workload.name for workload in workloads],
        "workload_details": {
            workload.name: {
                "tasks": list(workload.tasks), "num_fewshot": workload.num_fewshot,
                "limit": workload.limit_for(args.quick), "description": workload.description,
            }
            for workload in workloads
        },  # fmt: skip
        "seconds": {},
        "failures": {},
    }

    def write() -> None:
        report["to_truth"], report["equality"] = summarize(scores, report["workloads"])
        report["machine"]["load_average_end"] = list(os.getloadavg())
        report["loglikelihoods"] = scores
        (args.output_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.output_dir / f"{stem}.md").write_text(markdown(report))

    def record(dtype: str, backend: str, scored: dict[str, dict[str, float]], seconds: float) -> None:
        scores.setdefault(dtype, {})[backend] = scored
        report["seconds"].setdefault(dtype, {})[backend] = seconds
        print(f"[fidelity] {dtype} {backend}: {seconds:.0f} s", flush=True)
        write()

    for dtype in DTYPES:
        try:
            score_dtype(model_args, dtype, workloads, quick=args.quick, include_path=include_path, record=record)
        except Exception as error:  # the other dtype still runs; the failure is reported
            report["failures"][dtype] = f"{type(error).__name__}: {error}"[:300]
            print(f"[fidelity] {dtype} FAILED: {error!r}", file=sys.stderr, flush=True)
            gc.collect()
        write()
    print(markdown(report))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
