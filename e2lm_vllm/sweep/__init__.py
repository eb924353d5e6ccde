"""Checkpoint sweeps: config, plan, driver, Ray pool and workers, swap checks, watching a training run.

May import lm, engine, config, checkpoint, raycluster, results and scoring; the engine never imports it back."""
