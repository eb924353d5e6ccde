"""One engine, many checkpoints: per-sample results of a small ladder, without a Ray cluster.

The sweep itself (`run_sweep(..., in_process=True)`): one `SweepWorker` in this process builds the
engine once and swaps weights between rungs, and the sweep's writer makes `metrics.parquet` and
`samples.parquet` (cells already present are kept), so every consumer (``score``, ``report``,
``curriculum build``) reads them alike.

    python -m e2lm_vllm.curriculum.ladder_eval LADDER/step_* --tasks e2lm_mmlu_cloze \\
        --include-path "$(python -m e2lm_vllm.taskdata full)" --limit 8 -o runs/curriculum/difficulty

Use ``e2lm-vllm sweep`` for anything bigger: the same work, on the GPUs of a Ray cluster.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from e2lm_vllm.offline import set_offline_defaults
from e2lm_vllm.settings import DEFAULT_MAX_MODEL_LEN

log = logging.getLogger(__name__)


def evaluate_ladder(
    checkpoints: list[Path],
    tasks: list[str],
    output: Path,
    include_path: list[str] | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    model: str | None = None,
    model_args: dict[str, Any] | None = None,
    backend: str = "e2lm_vllm",
) -> None:
    """Evaluate ``tasks`` on each checkpoint into ``output``/{metrics,samples}.parquet (the sweep's tables).

    ``backend``: ``"e2lm_vllm"`` (one engine, weight swaps) or ``"hf"`` (lm-eval's HFLM, rebuilt per
    checkpoint: no engine start, right for a handful of requests).
    """
    from e2lm_vllm.sweep.config import config_from_flags
    from e2lm_vllm.sweep.runner import run_sweep

    config = config_from_flags(
        checkpoints=[str(folder) for folder in checkpoints],
        model_name=model or checkpoints[0].parent.name,
        tasks=tasks,
        include_path=include_path,
        limit=limit,
        num_fewshot=num_fewshot,
        output=str(output),
        lm="hf" if backend == "hf" else "e2lm_vllm",
        model_args=model_args,
    )
    summary = run_sweep(config, progress=False, in_process=True)
    log.info(summary.describe())
    if summary.failures:
        raise RuntimeError(summary.describe())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2lm_vllm.curriculum.ladder_eval", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint folders of one architecture, evaluated in this order")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks or groups")
    parser.add_argument("--include-path", action="append", help="folder of task YAMLs (repeatable)")
    parser.add_argument("--limit", type=float)
    parser.add_argument("--num-fewshot", type=int)
    parser.add_argument("--model-name", help="family name (default: the checkpoints' parent folder)")
    parser.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    set_offline_defaults()
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    folders = list(args.checkpoints)  # in the order given: e.g. the selection rungs first
    evaluate_ladder(
        folders,
        [t for t in args.tasks.split(",") if t],
        args.output,
        include_path=args.include_path,
        limit=limit,
        num_fewshot=args.num_fewshot,
        model=args.model_name,
        model_args={"dtype": "float32", "max_model_len": args.max_model_len, "gpu_memory_utilization": 0.1},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
