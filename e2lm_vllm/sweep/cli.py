"""`e2lm-vllm sweep [CONFIG] [flags]`: evaluate every checkpoint x task, on a local Ray or a cluster.

The same flags drive `ray job submit --working-dir . -- python ray_jobs/sweep.py ...`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, get_args

from e2lm_vllm.cluster.auth import RayAuthError
from e2lm_vllm.settings import LmName, ModelArgsError, parse_model_args
from e2lm_vllm.sweep.config import SweepConfigError, config_from_flags, load_sweep_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="sweep YAML (see ray_jobs/examples/); flags below override it")
    parser.add_argument("--config", dest="config_flag", metavar="CONFIG", help="same as the positional CONFIG")
    parser.add_argument(
        "--checkpoints", nargs="+", metavar="PATH_OR_GLOB", help="local checkpoint folders (step from config or name)"
    )
    parser.add_argument("--model-name", help="family name for --checkpoints (default: their parent folder's name)")
    parser.add_argument("--tasks", help="comma-separated lm-eval task names or task YAML paths")
    parser.add_argument("--include-path", action="append", metavar="DIR", help="folder of task YAMLs (repeatable)")
    parser.add_argument("--limit", type=float, help="docs per task (int) or fraction (< 1)")
    parser.add_argument("--num-fewshot", type=int)
    parser.add_argument("--output", "-o", metavar="DIR", help="results folder (absolute inside a Ray job)")
    parser.add_argument("--lm", choices=get_args(LmName), help="lm-eval model (default e2lm_vllm)")
    parser.add_argument(
        "--model-args", metavar="K=V,...", help="more model args, as lm_eval --model_args reads them (checked before any work)"
    )
    parser.add_argument("--workers", type=int, help="engines at once (default: all that fit, per node GPUs // tensor_parallel_size; no GPUs: 1)")
    parser.add_argument("--cpus-per-worker", type=int)
    parser.add_argument("--max-attempts", type=int, help="tries per checkpoint before it is recorded as failed")
    parser.add_argument(
        "--checkpoint-timeout-s",
        type=float,
        metavar="S",
        help="seconds a worker may take over one checkpoint before it is killed and the checkpoint retried "
        "(default: 4 h with GPUs, 24 h without)",
    )
    parser.add_argument("--force", action="store_true", help="recompute cells already in the output")
    parser.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else a fresh local Ray)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    parser.add_argument(
        "--log-to",
        action="append",
        metavar="TRACKER",
        help="log each checkpoint's metrics, then scores and plots (repeatable; replaces the config's log_to): "
        "wandb:project=P[,entity=E,name=N,group=G], tensorboard:DIR, mlflow:URI[,experiment=X]",
    )
    watch = parser.add_argument_group("following a run while it trains")
    watch.add_argument(
        "--watch", action="store_true", help="after the existing checkpoints, keep polling for new complete ones"
    )
    watch.add_argument("--poll-seconds", type=float, default=60.0, metavar="S", help="--watch: seconds between polls (default 60)")
    watch.add_argument("--until-step", type=int, metavar="N", help="--watch: stop once a checkpoint at step >= N is evaluated")
    watch.add_argument(
        "--stop-file", metavar="PATH", help="--watch: stop (after the checkpoint in flight) once PATH exists; it is then removed"
    )
    watch.add_argument(
        "--watch-marker",
        metavar="NAME",
        help="--watch: a checkpoint folder is complete once it holds file NAME (default: config.json and whole weights)",
    )


def build_config(args: argparse.Namespace) -> Any:
    """The validated sweep, model args included: a bad flag or model arg fails here, before Ray starts."""
    path = args.config_flag or args.config
    base = load_sweep_config(path) if path else None
    try:
        model_args = parse_model_args(args.model_args)
    except ModelArgsError as error:
        raise SweepConfigError(f"--model-args: {error}") from None
    config = config_from_flags(
        checkpoints=args.checkpoints,
        model_name=args.model_name,
        tasks=args.tasks,
        include_path=args.include_path,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        output=args.output,
        lm=args.lm,
        model_args=model_args,
        base=base,
    )
    for name in ("workers", "cpus_per_worker", "max_attempts"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    if args.checkpoint_timeout_s is not None:
        if not args.checkpoint_timeout_s > 0:
            raise SweepConfigError(f"--checkpoint-timeout-s: expected a number of seconds > 0, got {args.checkpoint_timeout_s:g}")
        config.checkpoint_timeout_s = args.checkpoint_timeout_s
    if getattr(args, "log_to", None):
        from e2lm_vllm.trackers.spec import TrackerSpecError, parse_specs

        try:
            config.log_to = [str(spec) for spec in parse_specs(args.log_to)]
        except TrackerSpecError as error:
            raise SweepConfigError(str(error)) from None
    return config


def watch_options(args: argparse.Namespace) -> Any:
    """`WatchOptions` from the flags, None without ``--watch`` (whose own flags then are an error)."""
    from pathlib import Path

    from e2lm_vllm.sweep.watch import WatchOptions

    given = [f"--{name.replace('_', '-')}" for name in ("until_step", "stop_file", "watch_marker") if getattr(args, name) is not None]
    if not args.watch:
        if given:
            raise SweepConfigError(f"{', '.join(given)}: only with --watch")
        return None
    if args.poll_seconds <= 0:
        raise SweepConfigError(f"--poll-seconds: expected a number of seconds > 0, got {args.poll_seconds}")
    return WatchOptions(
        poll_seconds=args.poll_seconds,
        until_step=args.until_step,
        stop_file=Path(args.stop_file).absolute() if args.stop_file else None,
        marker=args.watch_marker,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from e2lm_vllm.results.store import ResultsWriteError
    from e2lm_vllm.sweep.runner import run_sweep

    try:
        config = build_config(args)
        watch = watch_options(args)
        summary = run_sweep(config, force=args.force, address=args.address, progress=not args.no_progress, watch=watch)
    except (SweepConfigError, RayAuthError) as error:  # before any work: the message says what to change
        print(f"e2lm-vllm sweep: {error}", file=sys.stderr)
        return 2
    except ResultsWriteError as error:  # disk full, read-only output: the cells written so far are kept
        print(f"e2lm-vllm sweep: {error}; rerun once fixed to compute the remaining cells", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the cell in flight abandoned; every written cell is whole, the lock released
        print("e2lm-vllm sweep: interrupted; rerun to compute the remaining cells", file=sys.stderr)
        return 130
    print(summary.describe(), file=sys.stderr if summary.failures else sys.stdout)
    return summary.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="e2lm-vllm sweep", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
