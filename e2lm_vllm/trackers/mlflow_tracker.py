"""MLflow: one run per model family in the experiment (default ``e2lm-vllm``), through the client API.

``mlflow:FOLDER`` is MLflow's local file store (no server, no account); ``mlflow:http://...`` a
tracking server. ``eval/...`` metrics at the training step, ``eval_by_tokens/...`` at the tokens
seen. MLflow keeps a metric's whole history: a recomputed cell adds a second value at its step, and
the run's latest value is the newer one. Failures are text artifacts (``failures/*.txt``), the
scores a JSON and a text artifact with one ``quality/...`` metric per task, the plots PNG artifacts.
"""

from __future__ import annotations

import os
import time

from e2lm_vllm.trackers.base import RunIdentity, ScoresSnapshot
from e2lm_vllm.trackers.points import CheckpointPoint, FailureNote, by_tokens, safe_name


class MlflowTracker:
    def __init__(self, uri: str, options: dict[str, str], identity: RunIdentity):
        from mlflow.tracking import MlflowClient

        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless told (it wants a database); offline and without
            # a server, the file store is the point here. A value the user set wins.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        else:
            # A server that is down must not hold the sweep for MLflow's default retries (minutes):
            # fail fast, warn, and let the next push catch up. A user's values win.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        self.client = MlflowClient(tracking_uri=uri)
        name = options.get("experiment") or "e2lm-vllm"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        if identity.run_id is not None:
            self.run_id = self.client.get_run(identity.run_id).info.run_id  # fails loudly if the store lost it
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=identity.name, tags={"e2lm_vllm.output": str(identity.output)})
            self.run_id = run.info.run_id

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, step) for name, value in sorted(values.items())]
        for start in range(0, len(metrics), 1000):  # the store's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def log_checkpoint(self, point: CheckpointPoint) -> None:
        self._log(point.values, point.step)
        if point.tokens is not None:
            self._log({by_tokens(name): value for name, value in point.values.items()}, int(point.tokens))

    def log_failures(self, notes: list[FailureNote]) -> None:
        for note in notes:
            self.client.log_text(self.run_id, note.text + "\n", f"failures/step{note.step:010d}_{note.task}.txt")

    def log_scores(self, scores: ScoresSnapshot) -> None:
        self.client.log_text(self.run_id, scores.text + "\n", "quality/score.txt")
        self.client.log_dict(self.run_id, scores.scores, "quality/scores.json")
        self._log(
            {safe_name(f"quality/{row.task}/{row.metric}/score"): float(row.score) for row in scores.tasks.itertuples(index=False) if row.score == row.score},
            scores.step,
        )
        for image in scores.images:
            self.client.log_artifact(self.run_id, str(image), "report")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
