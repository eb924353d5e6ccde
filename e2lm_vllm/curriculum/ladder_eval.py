"""One engine, many checkpoints: per-sample results of a small ladder without a Ray cluster.

For machines where starting an engine per checkpoint costs more than the evaluation (a CPU
box shared with others): the ``e2lm_vllm`` lm starts once and swaps weights between
checkpoints of the same architecture (``E2LMVLLM.swap_checkpoint``, prefix cache dropped on
each swap). Rows are made by the sweep's own converters (``e2lm_vllm.sweep.worker``), so
``metrics.parquet`` and ``samples.parquet`` are the sweep's tables and every consumer
(``score``, ``report``, ``curriculum build``) reads them alike. Cells already present are kept
(resume); the tables are rewritten atomically after every checkpoint.

    python -m e2lm_vllm.curriculum.ladder_eval LADDER/step_* --tasks e2lm_mmlu_cloze \\
        --include-path "$(python -m e2lm_vllm.taskdata full)" --limit 8 -o runs/curriculum/difficulty

Use ``e2lm-vllm sweep`` for anything bigger: it does the same per checkpoint on a Ray cluster.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def checkpoint_identity(folder: Path, model: str) -> dict[str, Any]:
    """model, checkpoint, step, tokens of a ladder rung (its config.json's ``e2lm`` section) or a step_N folder."""
    config = json.loads((folder / "config.json").read_text())
    rung = config.get("e2lm") or {}
    step = rung.get("step")
    if step is None:
        digits = "".join(ch for ch in folder.name if ch.isdigit())
        if not digits:
            raise ValueError(f"{folder}: no e2lm.step in config.json and no step number in the folder name")
        step = int(digits)
    return {"model": model, "checkpoint": str(folder), "step": int(step), "tokens": rung.get("tokens")}


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
    """Evaluate ``tasks`` on each checkpoint; append the rows to ``output``/{metrics,samples}.parquet.

    ``backend``: ``"e2lm_vllm"`` (one engine, weight swaps) or ``"hf"`` (lm-eval's HFLM on CPU,
    rebuilt per checkpoint: no engine start, right for a handful of requests).
    """
    import lm_eval
    import pyarrow as pa

    from e2lm_vllm.lm import E2LMVLLM
    from e2lm_vllm.results.schema import METRICS_SCHEMA, SAMPLES_SCHEMA
    from e2lm_vllm.results.store import read_table, write_table_atomic
    from e2lm_vllm.sweep.worker import metric_rows, sample_rows, task_manager_for, versions

    output.mkdir(parents=True, exist_ok=True)
    metrics_path, samples_path = output / "metrics.parquet", output / "samples.parquet"
    metrics = read_table(metrics_path).to_pylist() if metrics_path.exists() else []
    samples = read_table(samples_path).to_pylist() if samples_path.exists() else []
    model = model or checkpoints[0].parent.name
    shots = num_fewshot or 0
    done = {(r["checkpoint"], r["task"], r["num_fewshot"] or 0) for r in metrics}
    manager = task_manager_for(include_path or [], tasks)
    lm = None
    try:
        for folder in checkpoints:
            cell = checkpoint_identity(folder, model)
            todo = [task for task in tasks if (cell["checkpoint"], task, shots) not in done]
            if not todo:
                log.info("%s: done already", folder.name)
                continue
            started = time.perf_counter()
            if backend == "hf":
                from lm_eval.models.huggingface import HFLM

                lm = HFLM(pretrained=str(folder), device="cpu", **(model_args or {}))
            elif lm is None:
                lm = E2LMVLLM(pretrained=str(folder), **(model_args or {}))
            else:
                try:
                    lm.swap_checkpoint(str(folder))
                except Exception as error:  # noqa: BLE001 - a refused swap costs one engine start, nothing else
                    log.warning("%s: weight swap failed (%s); starting a new engine", folder.name, error)
                    lm.engine.shutdown()
                    lm = None
                    lm = E2LMVLLM(pretrained=str(folder), **(model_args or {}))
            loaded = time.perf_counter() - started
            results = lm_eval.simple_evaluate(
                model=lm, tasks=todo, num_fewshot=num_fewshot, limit=limit, log_samples=True, task_manager=manager
            )
            seconds = time.perf_counter() - started - loaded
            common = {**cell, **versions(), "backend": "hf" if backend == "hf" else "vllm", "config_hash": None, "engine_seconds": loaded}
            for task in todo:
                for row in metric_rows(results, task):
                    metrics.append({**common, **row, "eval_seconds": seconds / len(todo), "num_fewshot": row["num_fewshot"] if row["num_fewshot"] is not None else num_fewshot})
            for name, logged in results.get("samples", {}).items():
                samples += [{**cell, **row} for row in sample_rows(lm, name, logged)]
            write_table_atomic(pa.Table.from_pylist(metrics, schema=METRICS_SCHEMA), metrics_path, METRICS_SCHEMA)
            write_table_atomic(pa.Table.from_pylist(samples, schema=SAMPLES_SCHEMA), samples_path, SAMPLES_SCHEMA)
            log.info("%s: %s in %.0f s (+%.0f s load)", folder.name, ", ".join(todo), seconds, loaded)
    finally:
        if lm is not None and backend != "hf":
            lm.engine.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2lm_vllm.curriculum.ladder_eval", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint folders of one architecture, evaluated in this order")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks or groups")
    parser.add_argument("--include-path", action="append", help="folder of task YAMLs (repeatable)")
    parser.add_argument("--limit", type=float)
    parser.add_argument("--num-fewshot", type=int)
    parser.add_argument("--model-name", help="family name (default: the checkpoints' parent folder)")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
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
