"""`make demo`'s plan without running it: sized by CPU, two ladders in a known order, a valid sweep YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from e2lm_vllm.demo import BUNDLED_DOCS, STRONG, WEAK, WEAK_GAPS, demo_size, sweep_config
from e2lm_vllm.models.ladder import alpha_schedule
from e2lm_vllm.quality.signal import MIN_AUTOCORRELATION_LENGTH
from e2lm_vllm.sweep.config import load_sweep_config

AVX2_EPYC = frozenset({"avx", "avx2", "fma"})
AVX512_XEON = AVX2_EPYC | {"avx512f", "avx512_bf16"}


def test_every_cpu_gets_enough_rungs_for_signal_quality_and_a_slow_one_fewer_documents():
    fast, slow = demo_size(AVX512_XEON), demo_size(AVX2_EPYC)
    for size in (fast, slow):
        assert size.rungs >= MIN_AUTOCORRELATION_LENGTH
        assert 1 <= size.samples_limit <= size.limit <= BUNDLED_DOCS
    assert slow.limit < fast.limit and "AVX2" in slow.describe() and "AVX512" in fast.describe()
    assert demo_size(AVX2_EPYC, limit=20).limit == 20
    with pytest.raises(SystemExit, match="1..60"):
        demo_size(AVX512_XEON, limit=61)


def test_the_weaker_ladder_is_behind_at_every_rung_and_never_holds_the_real_weights():
    rungs = MIN_AUTOCORRELATION_LENGTH
    full, weak = alpha_schedule(rungs), alpha_schedule(rungs, *WEAK_GAPS, reaches_real=False)
    assert len(full) == len(weak) == rungs and full[0] == weak[0] == 0.0
    assert full[-1] == 1.0 and max(weak) < 1.0
    assert all(w < f for w, f in zip(weak[1:], full[1:]))  # the reference pair's order, by construction
    assert weak == sorted(weak)


def test_the_sweep_config_is_two_families_on_one_swappable_architecture(tmp_path: Path):
    ladders = {STRONG: tmp_path / "full", WEAK: tmp_path / "weak"}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_config(ladders, demo_size(AVX2_EPYC), tmp_path / "out")))
    config = load_sweep_config(str(path))
    assert [family.name for family in config.models] == [STRONG, WEAK]
    assert len({family.architecture for family in config.models}) == 1  # one engine swaps across both
    assert config.limit == demo_size(AVX2_EPYC).limit and config.engine.dtype == "float32"
