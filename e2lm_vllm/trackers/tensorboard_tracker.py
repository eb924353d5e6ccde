"""TensorBoard: event files under ``DIR/<run name>`` (one run per model family), written by tensorboardX.

Two tag groups: ``eval/...`` at the training step, ``eval_by_tokens/...`` at the tokens seen (an
int64 step), since a TensorBoard scalar has one step only. A restarted sweep appends a new event
file to the same folder, which TensorBoard reads as the same run. TensorBoard cannot overwrite a
point: a recomputed cell adds a second point at its step (both kept; the file order says which is newer).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from e2lm_vllm.trackers.base import RunIdentity, ScoresSnapshot
from e2lm_vllm.trackers.points import CheckpointPoint, FailureNote, by_tokens


class TensorBoardTracker:
    def __init__(self, folder: str, identity: RunIdentity):
        from tensorboardX import SummaryWriter

        self.run_id = identity.run_id or identity.name
        self.folder = Path(folder) / self.run_id
        # A suffix of its own: two writers started in the same second would otherwise share one file name.
        self.writer = SummaryWriter(logdir=str(self.folder), filename_suffix=f".{uuid.uuid4().hex[:8]}")

    def log_checkpoint(self, point: CheckpointPoint) -> None:
        for name, value in sorted(point.values.items()):
            self.writer.add_scalar(name, value, point.step)
            if point.tokens is not None:
                self.writer.add_scalar(by_tokens(name), value, int(point.tokens))
        self.writer.flush()

    def log_failures(self, notes: list[FailureNote]) -> None:
        for note in notes:
            self.writer.add_text(f"failures/{note.task}", note.text, note.step)
        self.writer.flush()

    def log_scores(self, scores: ScoresSnapshot) -> None:
        from matplotlib.image import imread

        self.writer.add_text("quality/score", "```\n" + scores.text + "\n```", scores.step)
        for row in scores.tasks.itertuples(index=False):
            if row.score == row.score:  # NaN: undefined (one model), said in the text, not a 0
                self.writer.add_scalar(f"quality/{row.task}/{row.metric}/score", float(row.score), scores.step)
        for image in scores.images:
            pixels = imread(image)[..., :3]  # RGBA floats in [0, 1]; TensorBoard wants RGB
            self.writer.add_image(f"report/{image.stem}", pixels, scores.step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
