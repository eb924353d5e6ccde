"""Checkpoint sweeps: config, cells, the driver (runner), executors and placement, workers, output tables, swap checks, watching a training run, pushing an output folder into trackers (`log`).

May import lm, engine, cluster, results, quality, trackers and the top-level modules (settings, checkpoint, atomic); curriculum imports it, the engine never does."""
