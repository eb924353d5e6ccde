"""Tiers of subjects from easy to hard, and items kept for signal.

Item selection (on the selection checkpoints only, see :class:`~e2lm_vllm.curriculum.difficulty.HoldOut`):

- ``against``: the gold margin falls with training (``slope`` < 0): dropped;
- ``flat``: the gold margin does not move (``slope`` <= ``min_slope`` or ``margin_rise`` <=
  ``min_rise``, or its rank correlation with the checkpoint index is below ``min_rho``): dropped;
- ``leak``, ``too_long``, ``non_english``: breaks a competition rule (:mod:`.validate`): dropped;
- otherwise kept. Subjects left with fewer than ``min_items_per_subject`` items are dropped whole
  (``small_subject``), so every subject task has a meaningful size.

Tiers: subjects ordered by ease = the mean gold margin of their kept items at the last selection
checkpoint (higher: the small models already prefer the gold answer), then cut into ``n_tiers``
consecutive bins of about equal item counts. Tier 1 holds the subjects the early checkpoints
learn first, the last tier those only the late checkpoints move on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from e2lm_vllm.curriculum.validate import CompetitionRules, FormatFor, PromptFormat, TokenCounter, check_item

TIER_NAMES = {1: ["all"], 2: ["easy", "hard"], 3: ["easy", "medium", "hard"], 4: ["easy", "medium", "hard", "hardest"]}


class SelectionConfig(BaseModel):
    """Thresholds of the item filter and the tier cut."""

    model_config = ConfigDict(frozen=True)

    min_slope: float = Field(0.0, description="keep items whose gold-margin slope per checkpoint exceeds this")
    min_rise: float = Field(0.0, description="keep items whose gold margin rose by more than this (nats)")
    min_rho: float = Field(0.3, ge=-1, le=1, description="keep items whose margin ranks with the checkpoint at least this")
    n_tiers: int = Field(3, ge=1, le=10)
    min_items_per_subject: int = Field(2, ge=1)
    max_items: int | None = Field(None, ge=1, description="keep at most this many (the most learnable first)")


def tier_names(n_tiers: int) -> list[str]:
    return TIER_NAMES.get(n_tiers) or [f"tier{k}" for k in range(1, n_tiers + 1)]


@dataclass(frozen=True)
class Selection:
    """All measured items with a ``kept`` flag and a ``reason``, and the kept ones with their tier."""

    items: pd.DataFrame  # every item: difficulty stats, question..., reason ("kept" or why dropped)
    curriculum: pd.DataFrame  # kept items: + tier (1-based), tier_name; ordered by tier, subject, doc_id
    subjects: pd.DataFrame  # per kept subject: tier, ease, n_items

    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.items["reason"].value_counts().sort_index().items()}


def signal_reason(row: pd.Series, config: SelectionConfig) -> str:
    """Why an item is dropped for lack of signal, or "kept"."""
    slope, rise, rho = row["slope"], row["margin_rise"], row["rho"]
    if math.isnan(slope) or math.isnan(rho):
        return "flat"
    if slope < 0:
        return "against"
    if slope <= config.min_slope or rise <= config.min_rise or rho < config.min_rho:
        return "flat"
    return "kept"


def select_items(
    items: pd.DataFrame,
    fmt: PromptFormat | FormatFor,
    config: SelectionConfig = SelectionConfig(),
    rules: CompetitionRules = CompetitionRules(),
    count_tokens: TokenCounter | None = None,
) -> Selection:
    """Filter items (difficulty stats + question, choices, answer) and cut the subjects into tiers.

    ``fmt``: the prompt format of the task, or a function subject -> format.
    """
    format_for = fmt if callable(fmt) else (lambda subject: fmt)
    items = items.copy()
    reasons = []
    tokens = []
    for _, row in items.iterrows():
        doc = {"question": row["question"], "subject": row["subject"], "choices": list(row["choices"]), "answer": int(row["answer"])}
        check = check_item(doc, format_for(row["subject"]), rules, count_tokens)
        tokens.append(check.tokens)
        if check.leaked:
            reasons.append("leak")
        elif check.too_long:
            reasons.append("too_long")
        elif check.non_english:
            reasons.append("non_english")
        else:
            reasons.append(signal_reason(row, config))
    items["max_request_tokens"] = tokens
    items["reason"] = reasons

    if config.max_items is not None:
        kept = items[items["reason"] == "kept"].sort_values("slope", ascending=False)
        items.loc[kept.index[config.max_items :], "reason"] = "over_max_items"

    kept_counts = items[items["reason"] == "kept"].groupby("subject").size()
    small = kept_counts[kept_counts < config.min_items_per_subject].index
    items.loc[items["subject"].isin(small) & (items["reason"] == "kept"), "reason"] = "small_subject"

    kept = items[items["reason"] == "kept"]
    subjects = _tiers(kept, config.n_tiers)
    curriculum = kept.merge(subjects[["subject", "tier", "tier_name", "ease"]], on="subject")
    curriculum = curriculum.sort_values(["tier", "ease", "subject", "doc_id"], ascending=[True, False, True, True])
    return Selection(items=items.reset_index(drop=True), curriculum=curriculum.reset_index(drop=True), subjects=subjects)


def _tiers(kept: pd.DataFrame, n_tiers: int) -> pd.DataFrame:
    """Subjects by ease (descending) cut into ``n_tiers`` bins of about equal item counts."""
    subjects = (
        kept.groupby("subject", as_index=False)
        .agg(ease=("margin_last", "mean"), acc_last=("acc_last", "mean"), slope=("slope", "mean"), n_items=("doc_id", "size"))
        .sort_values(["ease", "subject"], ascending=[False, True])
        .reset_index(drop=True)
    )
    if subjects.empty:
        return subjects.assign(tier=pd.Series(dtype=int), tier_name=pd.Series(dtype=str))
    n_tiers = min(n_tiers, len(subjects))
    total = int(subjects["n_items"].sum())
    tier, current, seen = [], 1, 0
    for position, n_items in enumerate(subjects["n_items"]):
        subjects_left = len(subjects) - position
        # Next tier once this one holds its share, or when each later tier needs one of the rest.
        if current < n_tiers and (seen >= current * total / n_tiers or subjects_left == n_tiers - current):
            current += 1
        tier.append(current)
        seen += int(n_items)
    names = tier_names(n_tiers)
    subjects["tier"] = tier
    subjects["tier_name"] = [names[t - 1] for t in tier]
    return subjects

