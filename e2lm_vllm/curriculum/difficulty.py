"""Per-item and per-subject difficulty of MMLU from a sweep's per-sample rows.

Input: ``samples.parquet`` rows (``SAMPLES_SCHEMA``) of the per-subject MMLU cloze tasks
(``e2lm_mmlu_cloze_<subject>`` by default) over a ladder of small-model checkpoints. Only the
checkpoints chosen for selection are used (:class:`HoldOut`), so the other rungs stay unseen
and can measure the result honestly.

Per item (one model, its selection checkpoints in step order):

- ``acc_last``, ``margin_last``: correct / gold margin at the last selection checkpoint. The gold
  margin is the gold choice's log-probability minus the mean of the other choices, **per UTF-8
  byte** by default (``margin="per_byte"``: each choice's log-probability divided by its length,
  as acc_norm does). Why: on raw sums a long gold answer's margin rises over training merely
  because the model gets more fluent (at random init every token costs ~ln V nats), so raw rises
  select items whose gold is longer than its distractors, which ``acc`` then gets *wrong* (held-out
  accuracy of either selection: docs/curriculum.md#method). ``margin="raw"`` gives scoring's ``gold_margin``;
- ``margin_first``, ``margin_rise`` = last - first;
- ``slope``: OLS slope of the gold margin over the checkpoint index (as scoring's
  :func:`~e2lm_vllm.quality.samples.item_learnability`, on the chosen margin);
- ``rho``: Spearman correlation of the gold margin with the checkpoint index (NaN if constant);
- ``learned_step``: the first step from which the item stays correct up to the last checkpoint
  (NaN if it is wrong there).

With several models each statistic is averaged over the models. Per subject: the means of
these over its items, and the share of items that rise (``rho`` > 0 and ``slope`` > 0).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from e2lm_vllm.quality.samples import per_sample_scores

DEFAULT_TASK_PREFIX = "e2lm_mmlu_cloze_"
ITEM_KEY = ["subject", "doc_id"]
ITEM_STATS = ["acc_last", "margin_first", "margin_last", "margin_rise", "slope", "rho", "learned_step"]


class DifficultyError(ValueError):
    """The per-sample rows cannot give difficulty (no matching tasks, too few checkpoints...)."""


@dataclass(frozen=True)
class HoldOut:
    """Which checkpoints of each model are used for selection; the others are held out.

    ``rungs``: ``"even"`` / ``"odd"`` keep the checkpoints with an even / odd index in step order
    (0 = the first); ``"all"`` keeps every checkpoint (no hold-out). ``steps``, when given,
    overrides ``rungs`` with an explicit list of steps.
    """

    rungs: Literal["even", "odd", "all"] = "even"
    steps: tuple[int, ...] | None = None

    def describe(self) -> str:
        if self.steps is not None:
            return f"selection on steps {', '.join(map(str, self.steps))}"
        return {"all": "selection on all checkpoints (no hold-out)"}.get(
            self.rungs, f"selection on the {self.rungs} rungs (index 0 = first checkpoint), the others held out"
        )

    def select(self, steps: list[int]) -> list[int]:
        """The selection steps among one model's sorted ``steps``."""
        if self.steps is not None:
            missing = sorted(set(self.steps) - set(steps))
            if missing:
                raise DifficultyError(f"selection steps {missing} are not in the samples (have {steps})")
            return sorted(self.steps)
        if self.rungs == "all":
            return list(steps)
        if self.rungs not in ("even", "odd"):
            raise DifficultyError(f"hold-out rungs must be 'even', 'odd' or 'all', got {self.rungs!r}")
        start = 0 if self.rungs == "even" else 1
        return list(steps[start::2])

    def held_out(self, steps: list[int]) -> list[int]:
        chosen = set(self.select(steps))
        return [step for step in steps if step not in chosen]


@dataclass(frozen=True)
class Difficulty:
    """Item and subject tables, and which steps of which model they were measured on."""

    items: pd.DataFrame  # one row per (subject, doc_id): ITEM_STATS + n_models, n_checkpoints
    subjects: pd.DataFrame  # one row per subject
    selection_steps: dict[str, list[int]]  # model -> steps used
    held_out_steps: dict[str, list[int]]  # model -> steps not used


def subject_rows(samples: pd.DataFrame, task_prefix: str = DEFAULT_TASK_PREFIX) -> pd.DataFrame:
    """The multiple-choice rows of ``<task_prefix><subject>`` tasks, with a ``subject`` column."""
    rows = samples[samples["task"].str.startswith(task_prefix)]
    if "filter" in rows:
        rows = rows[rows["filter"].fillna("none") == "none"]
    if rows.empty:
        found = ", ".join(sorted(samples["task"].unique())[:5])
        raise DifficultyError(f"no per-sample rows of tasks named {task_prefix}<subject> (found: {found} ...)")
    rows = rows.copy()
    rows["subject"] = rows["task"].str.slice(len(task_prefix))
    return rows


def selection_rows(rows: pd.DataFrame, hold_out: HoldOut) -> tuple[pd.DataFrame, dict[str, list[int]], dict[str, list[int]]]:
    """Rows of the selection checkpoints only, with the chosen and held-out steps per model."""
    chosen: dict[str, list[int]] = {}
    held: dict[str, list[int]] = {}
    keep = []
    for model, part in rows.groupby("model", sort=True):
        steps = sorted(int(step) for step in part["step"].unique())
        chosen[str(model)] = hold_out.select(steps)
        held[str(model)] = hold_out.held_out(steps)
        if len(chosen[str(model)]) < 2:
            raise DifficultyError(
                f"model {model}: {len(chosen[str(model)])} selection checkpoint(s) of {len(steps)}; "
                "difficulty needs at least 2 (sweep more checkpoints or use --hold-out all)"
            )
        keep.append(part[part["step"].isin(chosen[str(model)])])
    return pd.concat(keep, ignore_index=True), chosen, held


MarginKind = Literal["per_byte", "raw"]


def _margins(rows: pd.DataFrame, margin: MarginKind) -> np.ndarray:
    """Gold margin of each row: gold minus mean other choice, log-probs per byte or raw sums."""
    values = []
    for row in rows.itertuples(index=False):
        logprobs = np.asarray(row.choice_logprobs, dtype=np.float64)
        if margin == "per_byte":
            logprobs = logprobs / np.maximum(np.asarray(row.choice_bytes, dtype=np.float64), 1.0)
        gold = int(row.target)
        values.append(logprobs[gold] - np.delete(logprobs, gold).mean())
    return np.asarray(values)


def measure_difficulty(
    samples: pd.DataFrame,
    hold_out: HoldOut = HoldOut(),
    task_prefix: str = DEFAULT_TASK_PREFIX,
    margin: MarginKind = "per_byte",
) -> Difficulty:
    """Per-item and per-subject difficulty from per-sample rows (see the module docstring)."""
    if margin not in ("per_byte", "raw"):
        raise DifficultyError(f"margin must be 'per_byte' or 'raw', got {margin!r}")
    rows, chosen, held = selection_rows(subject_rows(samples, task_prefix), hold_out)
    scores = per_sample_scores(rows)  # validates the rows; sample_acc, raw gold_margin
    # The same rows per_sample_scores keeps, in the same order (it filters and never reorders).
    usable = rows.loc[rows["target"].notna() & rows["choice_logprobs"].map(lambda v: v is not None and len(v) >= 2)]
    if len(usable) != len(scores):
        raise DifficultyError("per-sample rows and their scores disagree in number; expected multiple-choice rows")
    scores["gold_margin"] = scores["gold_margin"] if margin == "raw" else _margins(usable, margin)
    scores["subject"] = scores["task"].str.slice(len(task_prefix))
    scores = scores.sort_values(["model", "subject", "doc_id", "step"])

    per_model = []
    for (model, subject, doc_id), item in scores.groupby(["model", "subject", "doc_id"], sort=False):
        margins = item["gold_margin"].to_numpy()
        correct = item["sample_acc"].to_numpy() > 0
        steps = item["step"].to_numpy()
        index = np.arange(len(margins), dtype=np.float64)
        slope = float(np.polyfit(index, margins, 1)[0]) if len(margins) >= 2 else math.nan
        per_model.append(
            {
                "slope": slope,
                "model": model,
                "subject": subject,
                "doc_id": int(doc_id),
                "n_checkpoints": len(item),
                "acc_last": float(correct[-1]),
                "margin_first": float(margins[0]),
                "margin_last": float(margins[-1]),
                "margin_rise": float(margins[-1] - margins[0]),
                "rho": _spearman_with_index(margins),
                "learned_step": _learned_step(steps, correct),
            }
        )
    items = pd.DataFrame(per_model)
    # Several models: average each statistic over them (learned_step over the models that learned it).
    items = items.groupby(ITEM_KEY, as_index=False).agg(
        n_models=("model", "nunique"),
        n_checkpoints=("n_checkpoints", "min"),
        **{stat: (stat, "mean") for stat in ITEM_STATS},
    )
    items = items.sort_values(ITEM_KEY).reset_index(drop=True)
    return Difficulty(items=items, subjects=subject_table(items), selection_steps=chosen, held_out_steps=held)


def subject_table(items: pd.DataFrame) -> pd.DataFrame:
    """Per-subject means of the item statistics, and the share of rising / learned items."""
    frame = items.assign(
        rising=(items["slope"] > 0) & (items["rho"] > 0),
        learned=items["learned_step"].notna(),
    )
    return frame.groupby("subject", as_index=False).agg(
        n_items=("doc_id", "size"),
        acc_last=("acc_last", "mean"),
        margin_last=("margin_last", "mean"),
        margin_rise=("margin_rise", "mean"),
        slope=("slope", "mean"),
        rho=("rho", "mean"),
        share_rising=("rising", "mean"),
        share_learned=("learned", "mean"),
        learned_step=("learned_step", "mean"),
    )


def attach_items(items: pd.DataFrame, docs: dict[str, list[dict]], check_hash: pd.DataFrame | None = None) -> pd.DataFrame:
    """Join item statistics with the item text: ``docs[subject][doc_id]`` (``cais/mmlu`` rows).

    ``check_hash``: rows with subject, doc_id, doc_hash (lm-eval's sha256 of the doc as JSON);
    a mismatch means the samples were produced from other data than ``docs``: an error.
    """
    if check_hash is not None:
        hashes = check_hash.dropna(subset=["doc_hash"]).drop_duplicates(ITEM_KEY)
        for row in hashes.itertuples(index=False):
            doc = _doc(docs, row.subject, int(row.doc_id))
            if lm_eval_doc_hash(doc) != row.doc_hash:
                raise DifficultyError(
                    f"{row.subject} doc {row.doc_id}: the samples were computed on another text than the "
                    "MMLU data given (doc_hash differs); point --data at the data the sweep used"
                )
    records = []
    for row in items.itertuples(index=False):
        doc = _doc(docs, row.subject, int(row.doc_id))
        records.append({"question": doc["question"], "choices": list(doc["choices"]), "answer": int(doc["answer"])})
    return pd.concat([items.reset_index(drop=True), pd.DataFrame(records)], axis=1)


def lm_eval_doc_hash(doc: dict) -> str:
    """lm-eval's ``doc_hash`` of a logged sample (evaluator.py: sha256 of the doc as indented JSON)."""
    return hashlib.sha256(json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")).hexdigest()


def _doc(docs: dict[str, list[dict]], subject: str, doc_id: int) -> dict:
    if subject not in docs or not 0 <= doc_id < len(docs[subject]):
        raise DifficultyError(f"no MMLU test item {doc_id} for subject {subject!r} in the data given")
    return docs[subject][doc_id]


def _spearman_with_index(values: np.ndarray) -> float:
    if len(values) < 2 or np.ptp(values) == 0:
        return math.nan
    ranks = pd.Series(values).rank().to_numpy()
    return float(np.corrcoef(np.arange(len(values)), ranks)[0, 1])


def _learned_step(steps: np.ndarray, correct: np.ndarray) -> float:
    if not correct[-1]:
        return math.nan
    wrong = np.flatnonzero(~correct)
    first = 0 if len(wrong) == 0 else int(wrong[-1]) + 1
    return float(steps[first])
