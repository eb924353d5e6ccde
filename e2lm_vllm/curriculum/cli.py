"""`e2lm-vllm curriculum build|validate`: the MMLU-Curriculum task from a sweep's per-sample results.

    e2lm-vllm curriculum build runs/curriculum/difficulty -o tasks/mmlu_curriculum [--hold-out even]
    e2lm-vllm curriculum validate tasks/mmlu_curriculum
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from e2lm_vllm.curriculum.difficulty import (
    DEFAULT_TASK_PREFIX,
    DifficultyError,
    HoldOut,
    attach_items,
    measure_difficulty,
)
from e2lm_vllm.curriculum.layout import DATA_DIR, DEFAULT_NAME, Manifest, TierEntry
from e2lm_vllm.curriculum.select import Selection, SelectionConfig, select_items
from e2lm_vllm.curriculum.validate import (
    CompetitionRules,
    ValidationError,
    _lazy_smollm2_counter,
    tokenizer_counter,
    validate_task_dir,
)
from e2lm_vllm.curriculum.writer import REPO_ROOT, prompt_format, write_task


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="difficulty, selection, tiers; write the dataset and the task")
    build.add_argument("samples", metavar="SAMPLES", help="sweep folder (samples.parquet) or a samples .parquet file")
    build.add_argument("-o", "--output", default=f"tasks/{DEFAULT_NAME}", help="task folder to write (default: %(default)s)")
    build.add_argument("--name", default=DEFAULT_NAME, help="group name and task prefix (default: %(default)s)")
    build.add_argument("--data", help="raw data folder with mmlu/ (default: $E2LM_DATA_DIR or ../shared/data)")
    build.add_argument("--task-prefix", default=DEFAULT_TASK_PREFIX, help="per-subject task prefix in the samples (default: %(default)s)")
    build.add_argument("--model", action="append", help="use only this model family of the samples (repeatable)")
    build.add_argument(
        "--hold-out", choices=["even", "odd", "all"], default="even",
        help="select on the even / odd checkpoints of each model (the others are held out), or on all (default: even)",
    )
    build.add_argument(
        "--margin", choices=["per_byte", "raw"], default="per_byte",
        help="gold margin on log-probs per byte (default; immune to answer length) or raw sums",
    )
    build.add_argument("--select-steps", help="comma-separated steps to select on (overrides --hold-out)")
    build.add_argument("--dataset-path", help="what the YAML loads: default the data folder relative to the repo root; an HF id for the hub variant")
    build.add_argument("--n-tiers", type=int, default=SelectionConfig().n_tiers)
    build.add_argument("--min-rho", type=float, default=SelectionConfig().min_rho)
    build.add_argument("--min-slope", type=float, default=SelectionConfig().min_slope)
    build.add_argument("--min-rise", type=float, default=SelectionConfig().min_rise)
    build.add_argument("--min-items-per-subject", type=int, default=SelectionConfig().min_items_per_subject)
    build.add_argument("--max-items", type=int, help="keep at most this many items (the most learnable)")
    build.add_argument("--min-samples", type=int, default=CompetitionRules().min_samples, help="competition minimum (default 100)")
    build.add_argument("--tokenizer", help="HF tokenizer folder for the length rule (default: embedded SmolLM2)")

    validate = sub.add_parser("validate", help="check a task folder against the competition's rules")
    validate.add_argument("task_dir", metavar="TASK_DIR")
    validate.add_argument("--tokenizer", help="HF tokenizer folder for the length rule (default: embedded SmolLM2)")
    validate.add_argument("--min-samples", type=int, default=CompetitionRules().min_samples)
    validate.add_argument("--json", action="store_true")


def read_samples(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if path.is_dir():
        path = path / "samples.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a sweep folder with samples.parquet or a .parquet file")
    return pd.read_parquet(path)


def mmlu_docs(data: str | None, subjects: list[str]) -> dict[str, list[dict]]:
    from e2lm_vllm.taskdata import TaskDataError, data_root, mmlu_rows

    try:
        root = data_root(data)
        return {subject: mmlu_rows(root, subject, "test") for subject in subjects}
    except TaskDataError as error:
        raise DifficultyError(str(error)) from None


def build(
    samples: pd.DataFrame,
    output: str | Path,
    *,
    name: str = DEFAULT_NAME,
    data: str | None = None,
    task_prefix: str = DEFAULT_TASK_PREFIX,
    hold_out: HoldOut = HoldOut(),
    margin: str = "per_byte",
    config: SelectionConfig = SelectionConfig(),
    rules: CompetitionRules = CompetitionRules(),
    dataset_path: str | None = None,
    count_tokens=None,
    source: str = "",
) -> tuple[Selection, Manifest]:
    """Difficulty -> selection -> files; raises DifficultyError if the result breaks a rule."""
    difficulty = measure_difficulty(samples, hold_out, task_prefix, margin=margin)
    subjects = sorted(difficulty.items["subject"].unique())
    rows = samples[samples["task"].str.startswith(task_prefix)].assign(subject=lambda f: f["task"].str.slice(len(task_prefix)))
    items = attach_items(difficulty.items, mmlu_docs(data, subjects), check_hash=rows if "doc_hash" in rows else None)
    selection = select_items(items, prompt_format, config, rules, count_tokens)
    n = len(selection.curriculum)
    if not rules.min_samples <= n <= rules.max_samples:
        raise DifficultyError(
            f"the selection keeps {n} items ({selection.counts()}); the competition needs "
            f"{rules.min_samples} to {rules.max_samples}: sweep more items per subject or relax --min-rho/--min-rise"
        )
    output = Path(output)
    tiers = [
        TierEntry(name=str(tier_name), subjects=list(part["subject"]), n_items=int(part["n_items"].sum()))
        for (_, tier_name), part in selection.subjects.groupby(["tier", "tier_name"], sort=True)
    ]
    manifest = Manifest(
        name=name,
        tiers=tiers,
        n_items=n,
        dataset_path=dataset_path or _default_dataset_path(output),
        hold_out=difficulty_hold_out_text(hold_out, difficulty),
        build={
            "source": source,
            "task_prefix": task_prefix,
            "margin": margin,
            "models": sorted(difficulty.selection_steps),
            "selection_steps": difficulty.selection_steps,
            "held_out_steps": difficulty.held_out_steps,
            "items_measured": int(len(items)),
            "subjects_measured": len(subjects),
            "reasons": selection.counts(),
            "selection": config.model_dump(),
            "rules": rules.model_dump(),
        },
    )
    write_task(selection.curriculum, output, manifest)
    return selection, manifest


def difficulty_hold_out_text(hold_out: HoldOut, difficulty) -> str:
    held = {model: steps for model, steps in difficulty.held_out_steps.items()}
    return f"{hold_out.describe()}; held-out steps per model: {json.dumps(held)}"


def _default_dataset_path(output: Path) -> str:
    """The data folder relative to the repo root when the output is inside the repo, else absolute."""
    data = (output / DATA_DIR).resolve()
    try:
        return str(data.relative_to(REPO_ROOT))
    except ValueError:
        return str(data)


def run(args: argparse.Namespace) -> int:
    if args.action == "validate":
        return _run_validate(args)
    try:
        counter = tokenizer_counter(args.tokenizer) if args.tokenizer else _lazy_smollm2_counter()
        steps = tuple(int(s) for s in args.select_steps.split(",")) if args.select_steps else None
        samples = read_samples(args.samples)
        if args.model:
            samples = samples[samples["model"].isin(args.model)]
        selection, manifest = build(
            samples,
            args.output,
            name=args.name,
            data=args.data,
            task_prefix=args.task_prefix,
            hold_out=HoldOut(rungs=args.hold_out, steps=steps),
            margin=args.margin,
            config=SelectionConfig(
                min_slope=args.min_slope, min_rise=args.min_rise, min_rho=args.min_rho, n_tiers=args.n_tiers,
                min_items_per_subject=args.min_items_per_subject, max_items=args.max_items,
            ),
            rules=CompetitionRules(min_samples=args.min_samples),
            dataset_path=args.dataset_path,
            count_tokens=counter,
            source=str(args.samples),
        )
    except (DifficultyError, FileNotFoundError, ValueError) as error:
        print(f"e2lm-vllm curriculum build: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {manifest.n_items} items, {len(manifest.subjects)} subjects")
    print(f"items: {selection.counts()}")
    for number, tier in enumerate(manifest.tiers, start=1):
        print(f"tier {number} {tier.name}: {tier.n_items} items, {len(tier.subjects)} subjects: {', '.join(tier.subjects)}")
    print(f"hold-out: {manifest.hold_out}")
    report = validate_task_dir(args.output, CompetitionRules(min_samples=args.min_samples), counter)
    print(report.describe())
    return 0 if report.ok else 1


def _run_validate(args: argparse.Namespace) -> int:
    try:
        counter = tokenizer_counter(args.tokenizer) if args.tokenizer else _lazy_smollm2_counter()
        report = validate_task_dir(args.task_dir, CompetitionRules(min_samples=args.min_samples), counter)
    except (ValidationError, FileNotFoundError, ValueError) as error:
        print(f"e2lm-vllm curriculum validate: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        payload = {"ok": report.ok, "n_samples": report.n_samples, "results": [r.__dict__ for r in report.results]}
        print(json.dumps(payload, indent=1))
    else:
        print(report.describe())
    return 0 if report.ok else 1
