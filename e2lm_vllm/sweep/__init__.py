"""Checkpoint sweeps: config, cells, the driver (runner), executors and placement, workers, output tables, swap checks, watching a training run, pushing an output folder into trackers (`log`).

May import lm, engine, settings, checkpoint, cluster, results, quality and trackers; the engine never imports it back."""
