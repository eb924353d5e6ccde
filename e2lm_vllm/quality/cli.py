"""`e2lm-vllm score RESULTS`: which task, and which metric of it, gives signal early in training."""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from e2lm_vllm.quality.api import ScoreReport, ScoreWeights, ScoringConfig
from e2lm_vllm.quality.backends import backend_line
from e2lm_vllm.quality.coverage import undefined_line
from e2lm_vllm.quality.failures import failure_line
from e2lm_vllm.quality.formatting import model_rows, model_value, task_rows, text_table
from e2lm_vllm.quality.scored import score_source
from e2lm_vllm.quality.table import ScoringInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by `score` and `report`, plus `score`'s own ``--json``."""
    add_scoring_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object (lists 'models' and 'tasks')")


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """What to score and how: input, selection, weights, reference pair, noise window, filters."""
    parser.add_argument(
        "results", metavar="RESULTS", help="sweep folder (metrics.parquet), .parquet, .csv, or the E2LM plot-data JSON"
    )
    parser.add_argument("--task", action="append", metavar="T", help="score only this task (repeatable)")
    parser.add_argument("--metric", action="append", metavar="M", help="score only this metric, e.g. acc_norm (repeatable)")
    parser.add_argument(
        "--weights", default="0.5,0.1,0.4", metavar="SQ,RC,CS", help="global-score weights (default: E2LM's 0.5,0.1,0.4)"
    )
    parser.add_argument(
        "--reference-pair",
        metavar="HIGH,LOW",
        help="models the task should rank HIGH above LOW, for compliance (default on E2LM data: dense-3b-arch1,dense-500m-arch1)",
    )
    parser.add_argument("--noise-last-n", type=int, default=5, metavar="N", help="last checkpoints per model for noise (default 5)")
    parser.add_argument("--early-step", type=int, metavar="STEP", help="step for decision accuracy (default: first shared step)")
    parser.add_argument(
        "--nan-policy", choices=["error", "drop"], default="error", help="NaN values: refuse (default) or drop those checkpoints"
    )
    parser.add_argument(
        "--e2lm-filter", action="store_true", help="keep only steps divisible by 4000 and <= 206B tokens, as the organisers"
    )
    parser.add_argument("--e2lm-tokens", action="store_true", help="fill missing token counts from steps (E2LM batch schedule)")


def config_from_args(args: argparse.Namespace) -> ScoringConfig:
    """A ScoringConfig from parsed arguments; raises ValueError with a one-line reason."""
    pair = None
    if args.reference_pair:
        parts = [part.strip() for part in args.reference_pair.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"--reference-pair needs HIGH,LOW, got {args.reference_pair!r}")
        pair = (parts[0], parts[1])
    try:
        return ScoringConfig(
            weights=ScoreWeights.parse(args.weights),
            reference_pair=pair,
            noise_last_n=args.noise_last_n,
            early_step=args.early_step,
            nan_policy=args.nan_policy,
            e2lm_filter=args.e2lm_filter,
            e2lm_tokens=args.e2lm_tokens,
        )
    except ValidationError as error:
        first = error.errors()[0]
        raise ValueError(f"{'.'.join(str(part) for part in first['loc']) or 'option'}: {first['msg']}") from None


def render_text(report: ScoreReport, failures: str | None = None) -> str:
    """The human-readable output of `score`."""
    weights = report.config.weights
    pair = ",".join(report.reference_pair) if report.reference_pair else "none"
    backends = backend_line(report.backends)
    undefined = undefined_line(report)
    per_model = model_value(report)
    parts = [
        *([backends, ""] if backends else []),  # first: it qualifies every number below
        f"Tasks, best first. score = {weights.signal_quality:g}*SQ + {weights.ranking_consistency:g}*RC + "
        f"{weights.compliance:g}*CS; reference pair (CS): {pair}",
        *([undefined] if undefined else []),
        text_table(*task_rows(report)),
        *([failures] if failures else []),
        *(["", per_model[1], text_table(*model_rows(report, per_model[0]))] if per_model else []),
    ]
    notes = report.notes + sorted({f"{row.task}/{row.metric}: {note}" for row in report.tasks for note in row.notes})
    if notes:
        parts += ["", "Notes:", *(f"- {note}" for note in notes)]
    return "\n".join(parts)


def run(args: argparse.Namespace) -> int:
    """Print the scores; exit status 2 with a one-line message on unusable input."""
    try:
        config = config_from_args(args)
        scored = score_source(args.results, config, tasks=args.task, metrics=args.metric, learnability=False)
    except (ScoringInputError, ValueError) as error:
        print(f"e2lm-vllm score: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(scored.report.to_json_dict(), indent=1))
    else:
        print(render_text(scored.report, failure_line(scored.failures)))
    return 0
