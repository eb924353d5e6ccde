"""Weights & Biases: one run per model family, its id kept in the ledger so a restart resumes it.

The x axes are metrics, not W&B's own ``_step``: ``eval/*`` is plotted against ``train/step`` and
``eval_by_tokens/*`` against ``train/tokens`` (``define_metric(..., step_metric=...)``). W&B's
``_step`` must only grow, and checkpoints land out of order with several workers; a metric x axis
takes any order. A recomputed cell is a new point at the same ``train/step`` (the run summary
holds the newer value). Offline (``WANDB_MODE=offline``) the run is written under
``OUTPUT/wandb/offline-run-*`` (or ``$WANDB_DIR``); ``wandb sync`` uploads it later.
"""

from __future__ import annotations

import os
from typing import Any

from e2lm_vllm.trackers.base import RunIdentity, ScoresSnapshot
from e2lm_vllm.trackers.points import CheckpointPoint, FailureNote, by_tokens

FAILURE_COLUMNS = ["model", "checkpoint", "step", "task", "kind", "error"]


class WandbTracker:
    def __init__(self, project: str, options: dict[str, str], identity: RunIdentity):
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=project,
            entity=options.get("entity"),
            name=options.get("name") or identity.name,
            group=options.get("group"),
            id=identity.run_id,
            resume="allow",
            dir=os.environ.get("WANDB_DIR") or str(identity.output),
            config={"e2lm_vllm_output": str(identity.output), "model_family": identity.model},
            reinit="create_new",  # one run per family, several open in one sweep
        )
        self.run_id = self.run.id
        self.run.define_metric("train/step")
        self.run.define_metric("train/tokens")
        self.run.define_metric("eval/*", step_metric="train/step")
        self.run.define_metric("eval_by_tokens/*", step_metric="train/tokens")
        self.run.define_metric("failures", step_metric="train/step")

    def log_checkpoint(self, point: CheckpointPoint) -> None:
        data: dict[str, Any] = {"train/step": point.step, **point.values}
        if point.tokens is not None:
            data["train/tokens"] = point.tokens
            data.update({by_tokens(name): value for name, value in point.values.items()})
        self.run.log(data)

    def log_failures(self, notes: list[FailureNote]) -> None:
        for step in sorted({note.step for note in notes}):
            rows = [[n.model, n.checkpoint, n.step, n.task, n.kind, n.text] for n in notes if n.step == step]
            self.run.log({"train/step": step, "failures": self._wandb.Table(columns=FAILURE_COLUMNS, data=rows)})

    def log_scores(self, scores: ScoresSnapshot) -> None:
        table = scores.tasks.astype({"notes": str}) if "notes" in scores.tasks else scores.tasks
        data: dict[str, Any] = {"quality/scores": self._wandb.Table(dataframe=table)}
        data.update({f"report/{image.stem}": self._wandb.Image(str(image)) for image in scores.images})
        self.run.log(data)
        for row in scores.tasks.itertuples(index=False):
            self.run.summary[f"quality/{row.task}/{row.metric}/score"] = float(row.score)

    def close(self) -> None:
        self.run.finish()
