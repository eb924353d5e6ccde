"""`make bench`, sweep section: one checkpoint ladder swept by the old design and the new, side by side.

    python -m bench.sweep [--rungs 6] [--limit 40] [--memory-rungs 10] [--quick] [--output-dir DIR]

- before (`worker_lifetime: checkpoint`): a fresh Ray worker process and vLLM engine per checkpoint;
- now (`worker_lifetime: sweep`): one long-lived worker that builds an engine once, checks its first
  weight swap against fresh engines, then swaps weights checkpoint after checkpoint.
Both run the same `e2lm-vllm sweep` command (one worker, every core) on a SmolLM2 ladder and three
real 0-shot tasks, one after the other in separate processes. Per checkpoint, the workers' own phase
timings (`runs.jsonl`) and the driver's wall time give the breakdown; whatever the phases do not
cover is Ray scheduling and process start. A second run of the new design over `--memory-rungs`
rungs (tiny limit) records the worker's resident memory after every checkpoint.
Writes `<output-dir>/sweep.json` and `sweep.md` (`sweep-quick.*` under `--quick`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from e2lm_vllm.offline import set_offline_defaults

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT_DIR = REPO_ROOT / "bench" / "results"
MODEL_NAME = "smollm2-135m"
TASKS = ("e2lm_arc_easy", "e2lm_hellaswag", "e2lm_piqa")
DESIGNS = {
    "checkpoint": "before: a fresh worker process and engine per checkpoint",
    "sweep": "now: one long-lived worker, weight swaps",
}
# The targets (benchmark, not timed tests).
MAX_OVERHEAD_AFTER_FIRST = 0.10  # of a worker's wall time after its first checkpoint: all but engine scoring
MIN_SWEEP_SPEEDUP = 2.0
MAX_METRIC_DIFFERENCE = 1e-6
MAX_RSS_GROWTH = 0.10  # RSS after the last checkpoint over RSS after the first, minus 1
# Phases in the order they happen in a worker; `ray_and_process` is the driver's wall time they leave.
BREAKDOWN = ("imports", "engine_build", "weight_swap", "swap_check", "task_build", "tokenize", "plan", "scoring", "lm_eval", "writing")


def sweep_config(ladder: list[Path], include_path: str, output: Path, lifetime: str, limit: int) -> dict[str, Any]:
    return {
        "models": [{"name": "smollm2-ladder", "checkpoints": [{"paths": [str(path) for path in ladder]}]}],
        "tasks": list(TASKS),
        "include_paths": [include_path],
        "num_fewshot": 0,
        "limit": limit,
        "engine": {"lm": "e2lm_vllm", "dtype": "float32"},
        "output": str(output),
        "workers": 1,
        "worker_lifetime": lifetime,
    }


def run_design(config: dict[str, Any], scratch: Path, log_path: Path) -> dict[str, Any]:
    """`e2lm-vllm sweep CONFIG` in a fresh process; its wall time and its units' records."""
    config_path = scratch / f"{config['worker_lifetime']}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    with log_path.open("w") as log:
        completed = subprocess.run(
            [sys.executable, "-m", "e2lm_vllm.cli", "sweep", str(config_path), "--no-progress"],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"sweep ({config['worker_lifetime']}) exited {completed.returncode}; log: {log_path}")
    records = [json.loads(line) for line in (Path(config["output"]) / "runs.jsonl").read_text().splitlines()]
    return {
        "process_wall_seconds": wall,
        "sweep_seconds": records[-1]["seconds"],
        "units": [record for record in records if record.get("event") == "unit"],
    }


def unit_breakdown(unit: dict[str, Any]) -> dict[str, float]:
    timings = {phase: float(unit["timings"].get(phase, 0.0)) for phase in BREAKDOWN}
    # The driver's wall time runs from submission to the result; writing follows it.
    covered = sum(value for phase, value in timings.items() if phase != "writing")
    timings["ray_and_process"] = max(0.0, float(unit["wall_seconds"]) - covered)
    timings["total"] = float(unit["wall_seconds"]) + timings["writing"]
    return timings


def overhead_after_first(units: list[dict[str, Any]]) -> float | None:
    """Share of the worker's wall time after its first checkpoint that is not engine scoring."""
    later = [unit_breakdown(unit) for unit in units[1:]]
    total = sum(row["total"] for row in later)
    if not total:
        return None
    return (total - sum(row["scoring"] for row in later)) / total


def metric_difference(before: Path, now: Path) -> dict[str, float | int]:
    """Max |difference| of every metric value and every choice log-likelihood between two sweep outputs."""
    import pandas as pd

    key = ["checkpoint", "task", "metric", "filter"]
    metrics = pd.read_parquet(before / "metrics.parquet").merge(pd.read_parquet(now / "metrics.parquet"), on=key)
    samples_key = ["checkpoint", "task", "doc_id", "filter"]
    samples = pd.read_parquet(before / "samples.parquet").merge(pd.read_parquet(now / "samples.parquet"), on=samples_key)
    logprob_difference = max(
        (abs(a - b) for x, y in zip(samples.choice_logprobs_x, samples.choice_logprobs_y) for a, b in zip(x, y)),
        default=0.0,
    )
    return {
        "metrics_compared": len(metrics),
        "max_metric_difference": float((metrics.value_x - metrics.value_y).abs().max()),
        "samples_compared": len(samples),
        "max_choice_logprob_difference": float(logprob_difference),
    }


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    designs = report["designs"]
    rows = []
    if "checkpoint" in designs and "sweep" in designs:
        speedup = designs["checkpoint"]["sweep_seconds"] / designs["sweep"]["sweep_seconds"]
        rows.append({"target": f"whole sweep >= {MIN_SWEEP_SPEEDUP:g}x faster", "value": speedup, "met": speedup >= MIN_SWEEP_SPEEDUP})
    if "sweep" in designs:
        overhead = overhead_after_first(designs["sweep"]["units"])
        rows.append(
            {
                "target": f"after the first checkpoint, all but engine scoring <= {MAX_OVERHEAD_AFTER_FIRST:.0%} of the worker's time",
                "value": overhead,
                "met": overhead is not None and overhead <= MAX_OVERHEAD_AFTER_FIRST,
            }
        )
    if report.get("agreement"):
        difference = report["agreement"]["max_metric_difference"]
        rows.append({"target": f"metrics equal to the old design's within {MAX_METRIC_DIFFERENCE:g}", "value": difference, "met": difference <= MAX_METRIC_DIFFERENCE})
    if report.get("memory"):
        growth = report["memory"]["growth"]
        rows.append({"target": f"RSS after the last checkpoint within {MAX_RSS_GROWTH:.0%} of after the first", "value": growth, "met": abs(growth) <= MAX_RSS_GROWTH})
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Sweep benchmark ({report['mode']}, {report['created']})",
        "",
        f"{report['rungs']} rungs of a {report['model']} ladder x {', '.join(report['tasks'])} (0-shot, {report['limit']} docs each), "
        f"one worker with every core; load average {_fmt(report['machine']['load_average_start'][0], 2)} at start. "
        "Seconds per checkpoint, from the workers' own phase timings; `ray+proc` is the driver's wall time the "
        "phases leave (Ray scheduling, process start).",
        "",
        "| design | sweep s | speedup | per checkpoint s (first / rest, mean) |",
        "|---|---:|---:|---:|",
    ]
    designs = report["designs"]
    base = designs.get("checkpoint", {}).get("sweep_seconds")
    for name, design in designs.items():
        totals = [unit_breakdown(unit)["total"] for unit in design["units"]]
        rest = sum(totals[1:]) / max(1, len(totals) - 1)
        speedup = base / design["sweep_seconds"] if base else None
        lines.append(f"| {DESIGNS[name]} | {_fmt(design['sweep_seconds'])} | {_fmt(speedup, 2)}x | {_fmt(totals[0] if totals else None)} / {_fmt(rest)} |")
    header = ["design", "ckpt", "engine"] + [phase.replace("_", " ") for phase in BREAKDOWN] + ["ray+proc", "total", "RSS GiB"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    for name, design in designs.items():
        for unit in design["units"]:
            row = unit_breakdown(unit)
            cells = [name, unit["unit"].split("@")[-1], unit["engine"]]
            cells += [_fmt(row[phase], 2) for phase in BREAKDOWN] + [_fmt(row["ray_and_process"], 2), _fmt(row["total"], 1)]
            cells.append(_fmt(unit["rss_bytes"] / 2**30, 2))
            lines.append("| " + " | ".join(cells) + " |")
    if report.get("memory"):
        memory = report["memory"]
        rss = ", ".join(_fmt(value / 2**30, 2) for value in memory["rss_bytes"])
        lines += ["", f"Memory: one long-lived worker, {len(memory['rss_bytes'])} checkpoints (limit {memory['limit']}): RSS GiB after each: {rss}."]
    if report.get("agreement"):
        agreement = report["agreement"]
        lines += [
            "",
            f"Agreement: {agreement['metrics_compared']} metric values, max |difference| {agreement['max_metric_difference']:.3g}; "
            f"{agreement['samples_compared']} per-sample rows, max |choice log-likelihood difference| {agreement['max_choice_logprob_difference']:.3g}.",
        ]
    lines += ["", "| target | value | met |", "|---|---:|---|"]
    for row in report["targets"]:
        value = row["value"]
        shown = f"{value:.3g}" if isinstance(value, float) else _fmt(value)
        lines.append(f"| {row['target']} | {shown} | {'yes' if row['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rungs", type=int, default=6, help="ladder rungs swept by both designs (>= 2)")
    parser.add_argument("--limit", type=int, default=40, help="documents per task")
    parser.add_argument("--memory-rungs", type=int, default=10, help="rungs of the memory run (0: skip it)")
    parser.add_argument("--memory-limit", type=int, default=4)
    parser.add_argument("--designs", default="checkpoint,sweep", help="comma-separated subset of checkpoint,sweep")
    parser.add_argument("--quick", action="store_true", help="2 rungs, 2 documents, 3 memory rungs: a smoke test")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    args = parser.parse_args(argv)
    if args.quick:
        args.rungs, args.limit, args.memory_rungs, args.memory_limit = 2, 2, 3, 2
    designs = [name.strip() for name in args.designs.split(",") if name.strip()]
    if args.rungs < 2 or not set(designs) <= set(DESIGNS):
        parser.error(f"expected --rungs >= 2 and --designs among {', '.join(DESIGNS)}")

    set_offline_defaults()
    from e2lm_vllm.models.ladder import write_ladder
    from e2lm_vllm.models.prepare import e2lm_home
    from e2lm_vllm.taskdata import include_path_for

    # Prepared before any timing: the ladder and the task suite.
    rungs = max(args.rungs, args.memory_rungs)
    ladder = write_ladder(MODEL_NAME, rungs, e2lm_home() / "ladders" / f"{MODEL_NAME}-{rungs}", seed=0)
    include_path = include_path_for("full")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = "sweep-quick" if args.quick else "sweep"
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"e2lm-bench-sweep-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    # Evenly spread rungs, first and last included: the swept checkpoints span the whole ladder.
    picked = [ladder[round(i * (len(ladder) - 1) / (args.rungs - 1))] for i in range(args.rungs)]
    report: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "model": MODEL_NAME,
        "rungs": args.rungs,
        "tasks": list(TASKS),
        "limit": args.limit,
        "machine": {"cpus": os.cpu_count(), "load_average_start": list(os.getloadavg())},
        "designs": {},
    }

    def write() -> None:
        report["targets"] = targets(report)
        (args.output_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.output_dir / f"{stem}.md").write_text(markdown(report))

    outputs = {}
    for name in designs:
        outputs[name] = scratch / name
        config = sweep_config(picked, include_path, outputs[name], name, args.limit)
        print(f"[bench.sweep] {DESIGNS[name]} ...", flush=True)
        report["designs"][name] = run_design(config, scratch, args.output_dir / f"{stem}-{name}.log")
        print(f"[bench.sweep] {name}: {report['designs'][name]['sweep_seconds']:.0f} s", flush=True)
        write()
    if len(outputs) == 2:
        report["agreement"] = metric_difference(outputs["checkpoint"], outputs["sweep"])
    if args.memory_rungs:
        config = sweep_config(ladder[: args.memory_rungs], include_path, scratch / "memory", "sweep", args.memory_limit)
        print(f"[bench.sweep] memory: {args.memory_rungs} checkpoints on one worker ...", flush=True)
        memory = run_design(config, scratch, args.output_dir / f"{stem}-memory.log")
        rss = [unit["rss_bytes"] for unit in memory["units"]]
        report["memory"] = {"limit": args.memory_limit, "rss_bytes": rss, "growth": rss[-1] / rss[0] - 1}
    report["machine"]["load_average_end"] = list(os.getloadavg())
    write()
    print(markdown(report))
    return 0 if all(row["met"] for row in report["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
