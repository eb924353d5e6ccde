"""`e2lm-vllm log OUTPUT --log-to TRACKER ...`: push a sweep folder's results into trackers (`e2lm_vllm.trackers`).

For a sweep run without ``--log-to``, an old one, or a second tracker: the metrics of
``metrics.parquet`` at each checkpoint's step, the failures as text, the scores and the report's
plots, through the same ledger (``OUTPUT/trackers.json``) as a sweep, so running it twice logs nothing new.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="a sweep's output folder (holds metrics.parquet)")
    parser.add_argument(
        "--log-to",
        action="append",
        required=True,
        metavar="TRACKER",
        help="wandb:project=P[,entity=E,name=N,group=G], tensorboard:DIR or mlflow:URI[,experiment=X] (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from e2lm_vllm.trackers.push import TrackerWriter
    from e2lm_vllm.trackers.spec import TrackerSpecError, parse_specs

    output = Path(args.output).absolute()
    if not (output / "metrics.parquet").is_file():
        print(f"e2lm-vllm log: {output} has no metrics.parquet (expected a sweep's output folder)", file=sys.stderr)
        return 2
    from e2lm_vllm.sweep.lock import SweepLockedError, output_lock

    try:
        push = TrackerWriter(parse_specs(args.log_to), output)
    except TrackerSpecError as error:
        print(f"e2lm-vllm log: {error}", file=sys.stderr)
        return 2
    try:
        # The sweep's own lock: a running sweep or watcher logs these cells itself, and one writer of
        # trackers.json at a time keeps each cell logged once.
        with output_lock(output):
            count = push.after_round()
    except SweepLockedError as error:
        print(f"e2lm-vllm log: {error}", file=sys.stderr)
        return 2
    finally:
        push.close()
    failed = sorted(push.broken)
    print(
        f"logged {count.cells} cells of {count.checkpoints} checkpoints, {count.failures} failures"
        f"{', the scores and plots' if count.scores else ''} to {', '.join(str(s) for s in push.specs)}"
        + (f"; FAILED: {', '.join(failed)} (see the warnings above; rerun to retry)" if failed else "")
    )
    return 1 if failed else 0
