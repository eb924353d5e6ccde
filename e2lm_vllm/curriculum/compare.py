"""Curriculum vs plain MMLU cloze on the held-out checkpoints, scored like any sweep.

The curriculum asks its items with exactly the prompts of ``e2lm_mmlu_cloze_<subject>`` 0-shot
(lm-eval's mmlu_continuation), so on a checkpoint swept on that task the curriculum's per-item
results are the very rows of its items: same requests, same log-probabilities. This module
re-labels those rows as the tasks ``<name>`` (the curriculum items) and ``<name>_<tier>``, keeps
the baseline ``mmlu_cloze`` (every swept item) and a control ``mmlu_cloze_random<N>`` (as many
random swept items as the curriculum has, seeded), restricts all of them to the checkpoints the
build held out, and writes a results folder that ``e2lm-vllm score`` reads
(metrics.parquet with ``acc``; samples.parquet, from which score derives ``sample_acc``,
``sample_acc_norm``, ``gold_margin``, ``gold_bits_per_byte``).

    python -m e2lm_vllm.curriculum.compare runs/curriculum/difficulty tasks/mmlu_curriculum -o runs/curriculum/compare
    e2lm-vllm score runs/curriculum/compare
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from e2lm_vllm.curriculum.difficulty import DEFAULT_TASK_PREFIX
from e2lm_vllm.curriculum.layout import Manifest, read_items

BASELINE = "mmlu_cloze"
RANDOM_SEED = 1234


def held_out_samples(samples: pd.DataFrame, task_dir: str | Path, task_prefix: str = DEFAULT_TASK_PREFIX) -> pd.DataFrame:
    """Rows of the held-out checkpoints, labelled baseline / curriculum / tier tasks."""
    task_dir = Path(task_dir)
    manifest = Manifest.read(task_dir)
    items = read_items(task_dir / manifest.data_dir, manifest.name)
    held = manifest.build.get("held_out_steps") or {}
    rows = samples[samples["task"].str.startswith(task_prefix) & (samples["filter"].fillna("none") == "none")].copy()
    rows["subject"] = rows["task"].str.slice(len(task_prefix))
    keep = pd.Series(False, index=rows.index)
    for model, steps in held.items():
        keep |= (rows["model"] == model) & rows["step"].isin(steps)
    rows = rows[keep]
    if rows.empty:
        raise ValueError(f"no samples at the held-out steps {held} of {task_dir}: sweep those checkpoints first")
    tiers = items[["subject", "doc_id", "tier_name"]]
    chosen = rows.merge(tiers, on=["subject", "doc_id"], how="inner")
    # Control: as many items as the curriculum, drawn at random from the swept ones (seeded), so a
    # gain of the curriculum is not just a matter of its size.
    swept = rows[["subject", "doc_id"]].drop_duplicates().sort_values(["subject", "doc_id"])
    drawn = swept.sample(n=min(len(items), len(swept)), random_state=RANDOM_SEED)
    control = rows.merge(drawn, on=["subject", "doc_id"], how="inner")
    parts = [rows.assign(task=BASELINE), control.assign(task=f"{BASELINE}_random{len(drawn)}"), chosen.assign(task=manifest.name)]
    parts += [part.assign(task=f"{manifest.name}_{tier}") for tier, part in chosen.groupby("tier_name")]
    out = pd.concat(parts, ignore_index=True)
    return out.drop(columns=["subject", "tier_name"], errors="ignore")


def accuracy_table(samples: pd.DataFrame) -> pd.DataFrame:
    """``acc`` per (model, step, task): the item mean, which is what lm-eval's weight_by_size group reports."""
    cells = samples.groupby(["model", "checkpoint", "step", "task"], as_index=False).agg(
        tokens=("tokens", "first"), value=("correct", "mean"), n_samples=("doc_id", "size")
    )
    cells["metric"], cells["filter"], cells["num_fewshot"] = "acc", "none", 0
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2lm_vllm.curriculum.compare", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="sweep folder with samples.parquet of e2lm_mmlu_cloze (0-shot)")
    parser.add_argument("task_dir", type=Path, help="curriculum task folder (its curriculum.json names the held-out steps)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        samples = held_out_samples(pd.read_parquet(args.sweep / "samples.parquet"), args.task_dir)
    except (ValueError, FileNotFoundError) as error:
        print(f"compare: error: {error}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    samples["correct"] = samples["correct"].astype(bool)
    accuracy_table(samples).to_parquet(args.output / "metrics.parquet", index=False)
    samples.to_parquet(args.output / "samples.parquet", index=False)
    counts = samples.groupby("task")["doc_id"].size() // samples["step"].nunique()
    print(f"wrote {args.output}: steps {sorted(samples['step'].unique())}; items per task: {counts.to_dict()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
