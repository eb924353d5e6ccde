"""Non-finite weights and scores: a diverged checkpoint is an error naming the tensor or request, never a number.

The engine's checks run here against a stand-in for ``vllm.LLM`` (no engine); the weight scan on
copies of a rung of the tiny ladder (SmolLM2's architecture, random weights) with a NaN or inf written
into one MLP weight. The tests marked ``engine`` run that rung through the real vLLM engine.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from e2lm_vllm.checkpoint import (
    NonFiniteError,
    NonFiniteWeightsError,
    check_finite_weights,
    first_non_finite_tensor,
)
from e2lm_vllm.engine.types import (
    EngineStats,
    NextTokenQuery,
    NonFiniteScoreError,
    ScoreResult,
    ScoringPlan,
    SequenceQuery,
)
from e2lm_vllm.engine.vllm_engine import VLLMEngine
from tests.sweeps import flags_config

BAD_TENSOR = "model.layers.1.mlp.up_proj.weight"


# --- the engine's checks, on a stand-in for vllm.LLM -----------------------------------------------


@dataclass
class _Logprob:
    logprob: float
    rank: int = 1


class _FakeEngine(VLLMEngine):
    """The real scoring code over canned outputs: token ``t`` has logprob ``values.get(t, -1.0)``."""

    def __init__(self, values: dict[int, float]):
        self.values = values
        self.llm = SimpleNamespace(get_metrics=lambda: [])
        self.block_size = 16
        self.max_model_len = 512
        self.stats = EngineStats()

    def _sampling(self, **kwargs):
        return kwargs

    def _generate(self, prompts, params):
        params = params if isinstance(params, list) else [params] * len(prompts)
        outputs = []
        for prompt, param in zip(prompts, params):
            prompt = list(prompt)
            if param.get("prompt_logprobs") is not None:  # prompt logprobs: one row per prompt position
                rows = [None] + [{t: _Logprob(self.values.get(t, -1.0))} for t in prompt[1:]]
                outputs.append(SimpleNamespace(prompt_logprobs=rows, num_cached_tokens=0, outputs=[]))
                continue
            if param.get("logprob_token_ids"):  # one decode step, logprobs of the asked tokens
                step = {t: _Logprob(self.values.get(t, -1.0)) for t in param["logprob_token_ids"]}
                completion = SimpleNamespace(token_ids=[param["logprob_token_ids"][0]], logprobs=[step])
            else:  # greedy generation of tokens 5, 6, 7
                generated = [5, 6, 7][: param["max_tokens"]]
                logprobs = [{t: _Logprob(self.values.get(t, -0.5))} for t in generated] if param.get("logprobs") is not None else None
                completion = SimpleNamespace(token_ids=generated, logprobs=logprobs)
            outputs.append(SimpleNamespace(outputs=[completion], num_cached_tokens=0, prompt_logprobs=None))
        return outputs


def _plan(*queries) -> ScoringPlan:
    return ScoringPlan(waves=[list(queries)], num_requests=1, num_truncated=0, submitted_tokens=0, trie_tokens=0)


CONTEXT = tuple(range(100, 120))


def test_finite_scores_pass_through():
    engine = _FakeEngine({})
    assert engine.run_plan(_plan(NextTokenQuery(CONTEXT, [9], readers=[(0, 0)]))) == [ScoreResult(-1.0, True)]
    assert engine.run_plan(_plan(SequenceQuery(CONTEXT + (9, 10), 20, readers=[0]))) == [ScoreResult(-2.0, True)]
    assert engine.generate_greedy([CONTEXT], max_tokens=3, stop_token_ids=[0]) == [[5, 6, 7]]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_decode_step_scores_refuse_non_finite(value):
    engine = _FakeEngine({9: value})
    with pytest.raises(NonFiniteScoreError) as error:
        engine.run_plan(_plan(NextTokenQuery(CONTEXT, [8, 9], readers=[(0, 1)])))
    assert str(error.value) == f"log-probability {value} of token 9 after a prompt of 20 tokens [100, 101, 102, 103, 104, 105, 106, 107, ...]"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_prompt_logprob_scores_refuse_non_finite(value):
    engine = _FakeEngine({10: value})
    with pytest.raises(NonFiniteScoreError) as error:
        engine.run_plan(_plan(SequenceQuery(CONTEXT + (9, 10, 11), 20, readers=[0])))
    assert str(error.value) == (
        f"log-probability {value} of token 10 at position 21 of a prompt of 23 tokens [100, 101, 102, 103, 104, 105, 106, 107, ...]"
    )
    assert isinstance(error.value, NonFiniteError) and isinstance(error.value, FloatingPointError)


def test_greedy_generation_refuses_non_finite_logprobs():
    engine = _FakeEngine({6: math.nan})
    with pytest.raises(NonFiniteScoreError, match=r"log-probability nan of generated token 1 \(6\) after a prompt of 3 tokens \[1, 2, 3\]"):
        engine.generate_greedy([(1, 2, 3)], max_tokens=3, stop_token_ids=[0])


# --- the weight scan, on copies of a ladder rung ----------------------------------------------------


def _poisoned_copy(rung: Path, folder: Path, value: float, tensor: str = BAD_TENSOR) -> Path:
    """A copy of ``rung`` with ``value`` written into one element of one weight tensor."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(rung, folder)
    weights = load_file(folder / "model.safetensors")
    weights[tensor][3, 7] = value
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def nan_rung(tiny_ladder_dirs, tmp_path_factory):
    return _poisoned_copy(tiny_ladder_dirs[1], tmp_path_factory.mktemp("diverged") / "step_001000", math.nan)


def test_weight_scan_names_the_first_non_finite_tensor(tiny_ladder_dirs, nan_rung, tmp_path):
    assert first_non_finite_tensor(tiny_ladder_dirs[1]) is None
    assert first_non_finite_tensor(nan_rung) == BAD_TENSOR
    inf_rung = _poisoned_copy(tiny_ladder_dirs[1], tmp_path / "inf", -math.inf, "model.layers.0.mlp.down_proj.weight")
    assert first_non_finite_tensor(inf_rung) == "model.layers.0.mlp.down_proj.weight"
    with pytest.raises(NonFiniteWeightsError) as error:
        check_finite_weights(nan_rung)
    assert str(error.value) == (
        f"checkpoint {nan_rung} holds NaN in weight tensor {BAD_TENSOR} (file model.safetensors): "
        "a diverged checkpoint, not evaluated"
    )
    with pytest.raises(NonFiniteWeightsError, match="holds inf in weight tensor model.layers.0.mlp.down_proj.weight"):
        check_finite_weights(inf_rung)
    check_finite_weights(tiny_ladder_dirs[1])  # finite: no error


def test_weight_scan_reads_sharded_checkpoints_in_index_order(tmp_path):
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file({"a.weight": torch.ones(4, 4), "steps": torch.arange(3)}, folder / "model-00001-of-00002.safetensors")
    save_file({"b.weight": torch.tensor([1.0, math.inf], dtype=torch.bfloat16)}, folder / "model-00002-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a.weight": "model-00001-of-00002.safetensors", "steps": "model-00001-of-00002.safetensors",'
        ' "b.weight": "model-00002-of-00002.safetensors"}}'
    )
    assert first_non_finite_tensor(folder) == "b.weight"
    # Large finite values whose float32 sum overflows are not a false alarm.
    save_file({"big": torch.full((4,), 3e38)}, folder / "model-00002-of-00002.safetensors")
    assert first_non_finite_tensor(folder) is None


def test_weight_scan_reads_bin_checkpoints(tmp_path):
    """A checkpoint of PyTorch ``.bin`` files only (no safetensors) is scanned too: sharded by its
    index, memory-mapped or in torch's legacy format, trainer files beside it skipped."""
    import torch

    from e2lm_vllm.checkpoint import check_finite_weights

    folder = tmp_path / "bin"
    folder.mkdir()
    torch.save({"a.weight": torch.ones(4, 4), "steps": torch.arange(3)}, folder / "pytorch_model-00001-of-00002.bin")
    bad = torch.ones(2, 3, dtype=torch.float16)
    bad[1, 2] = math.nan
    torch.save({"b.weight": bad}, folder / "pytorch_model-00002-of-00002.bin", _use_new_zipfile_serialization=False)
    (folder / "pytorch_model.bin.index.json").write_text(
        '{"weight_map": {"a.weight": "pytorch_model-00001-of-00002.bin", "b.weight": "pytorch_model-00002-of-00002.bin"}}'
    )
    torch.save({"lr": 0.1}, folder / "training_args.bin")  # not weights: never loaded, never scanned
    with pytest.raises(NonFiniteWeightsError) as error:
        check_finite_weights(folder)
    assert str(error.value) == (
        f"checkpoint {folder} holds NaN in weight tensor b.weight (file pytorch_model-00002-of-00002.bin): "
        "a diverged checkpoint, not evaluated"
    )
    # Without an index, every *.bin but the trainer's; a finite file passes.
    (folder / "pytorch_model.bin.index.json").unlink()
    torch.save({"b.weight": torch.zeros(2)}, folder / "pytorch_model-00002-of-00002.bin")
    assert first_non_finite_tensor(folder) is None
    torch.save({"c.weight": torch.tensor([-math.inf])}, folder / "pytorch_model-00003-of-00003.bin")
    assert first_non_finite_tensor(folder) == "c.weight"


def test_weight_scan_time_on_smollm2(smollm2_path):
    first_non_finite_tensor(smollm2_path)  # page cache warm, as after the engine read the checkpoint
    started = time.perf_counter()
    assert first_non_finite_tensor(smollm2_path) is None
    seconds = time.perf_counter() - started
    print(f"weight scan of SmolLM2-135M float32 ({os.path.getsize(smollm2_path / 'model.safetensors') / 1e6:.0f} MB): {seconds:.2f} s")
    assert seconds < 10


# --- a diverged rung through the real engine --------------------------------------------------------


@pytest.mark.engine
def test_a_nan_rung_is_an_error_on_every_scoring_path(nan_rung):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from lm_eval.api.instance import Instance

    from e2lm_vllm.lm import E2LMVLLM

    # check_weights=False: past the weight check, to reach the engine's own checks.
    lm = E2LMVLLM(pretrained=str(nan_rung), dtype="float32", max_model_len=256, backend="vllm", check_weights=False)
    try:
        letter = [Instance("loglikelihood", {}, ("Question: 2 + 2 = ?\nAnswer:", " B"), 0)]
        cloze = [Instance("loglikelihood", {}, ("The capital of France is", " the city of Paris"), 0)]
        rolling = [Instance("loglikelihood_rolling", {}, ("Some text to score as a whole document.",), 0)]
        generation = [Instance("generate_until", {}, ("Q: 2 + 2 =", {"until": ["\n"], "max_gen_toks": 4}), 0)]
        for _path, call, requests in [
            ("letter", lm.loglikelihood, letter),
            ("cloze", lm.loglikelihood, cloze),
            ("rolling", lm.loglikelihood_rolling, rolling),
            ("generation", lm.generate_until, generation),
        ]:
            with pytest.raises(NonFiniteScoreError, match=r"log-probability nan .* a prompt of \d+ tokens \["):
                call(requests, disable_tqdm=True)
    finally:
        lm.engine.shutdown()


def test_a_nan_rung_is_refused_before_any_engine_starts(nan_rung):
    from e2lm_vllm.lm import E2LMVLLM

    with pytest.raises(NonFiniteWeightsError, match=f"holds NaN in weight tensor {BAD_TENSOR}"):
        E2LMVLLM(pretrained=str(nan_rung), dtype="float32", backend="vllm")


def _diverging_config(ladder_dirs, nan_rung: Path, tmp_path: Path, **flags):
    """A finite rung and the NaN rung of one run, swept into ``tmp_path / "sweep"``."""
    return flags_config([ladder_dirs[0], nan_rung], tmp_path / "sweep", model_name="diverging", **flags)


def _sweep_failing_once_on_the_nan_rung(config):
    """Run ``config`` in this process: one failure, of kind non_finite, not retried, naming the tensor."""
    import pandas as pd

    from e2lm_vllm.sweep.runner import run_sweep

    summary = run_sweep(config, progress=False, in_process=True)
    failures = pd.read_parquet(Path(config.output) / "failures.parquet")
    assert summary.exit_code == 1
    assert list(failures.kind) == ["non_finite"] and list(failures.attempts) == [1]
    assert f"NaN in weight tensor {BAD_TENSOR}" in failures.error[0]
    return summary


@pytest.mark.engine
def test_a_sweep_records_a_nan_rung_once_as_non_finite(tiny_ladder_dirs, nan_rung, tmp_path):
    """In this process (no Ray), on vLLM: the NaN rung fails once, without retries; the finite rung is
    evaluated, although its worker's swap check first tried the NaN rung as its neighbour."""
    import pandas as pd

    summary = _sweep_failing_once_on_the_nan_rung(_diverging_config(tiny_ladder_dirs, nan_rung, tmp_path, limit=2, lm="e2lm_vllm"))
    assert "[non_finite]" in summary.describe()
    assert len(pd.read_parquet(tmp_path / "sweep" / "metrics.parquet").checkpoint.unique()) == 1


def test_lm_eval_cli_on_a_nan_rung_exits_non_zero_naming_the_tensor(nan_rung):
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    tasks = Path(__file__).parent / "data" / "sweep_tasks"
    run = subprocess.run(
        [str(bin_dir / "lm_eval"), "--model", "e2lm_vllm", "--model_args", f"pretrained={nan_rung},dtype=float32",
         "--tasks", "sweep_arc_easy", "--include_path", str(tasks), "--limit", "1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )  # fmt: skip
    assert run.returncode != 0
    assert f"holds NaN in weight tensor {BAD_TENSOR}" in run.stderr.strip().splitlines()[-1]


# --- the HF backend: the same checks, the same error kinds -------------------------------------------


def test_the_hf_backend_refuses_a_nan_rung_before_loading_it(nan_rung, caplog):
    """`backend=hf`, a sweep's `lm: hf` and `auto` without vLLM: the weight scan first, as on vLLM."""
    import sys
    from unittest.mock import patch

    from e2lm_vllm.lm import build_lm
    from e2lm_vllm.settings import ModelArgs
    from e2lm_vllm.sweep.worker import failure_kind

    message = f"holds NaN in weight tensor {BAD_TENSOR}"
    with pytest.raises(NonFiniteWeightsError, match=message):
        build_lm(ModelArgs(pretrained=str(nan_rung), backend="hf"))
    with pytest.raises(NonFiniteWeightsError, match=message) as error:
        build_lm(ModelArgs(pretrained=str(nan_rung), dtype="float32"), "hf")
    assert failure_kind(error.value) == "non_finite"
    with patch.dict(sys.modules, {"vllm": None}), pytest.raises(NonFiniteWeightsError, match=message):
        build_lm(ModelArgs(pretrained=str(nan_rung), dtype="float32", backend="auto"), "e2lm_vllm")
    assert "backend=auto and vLLM does not import here" in caplog.text


class _Cache:
    """lm-eval's cache hook interface (`CacheHook.add_partial`), recording what it is given."""

    def __init__(self):
        self.answers = []

    def add_partial(self, attr, req, res):
        self.answers.append((attr, req, res))


@pytest.mark.slow
def test_hf_scores_refuse_non_finite(nan_rung, tiny_llama_path):
    """lm-eval's HFLM on the NaN rung (weight check off, to reach the scores): loglikelihood and rolling
    raise `NonFiniteScoreError` naming the request, and nothing reaches lm-eval's cache."""
    from lm_eval.api.instance import Instance

    from e2lm_vllm.lm import build_hf_lm
    from e2lm_vllm.settings import ModelArgs

    lm = build_hf_lm(ModelArgs(pretrained=str(nan_rung), dtype="float32", max_model_len=256, backend="hf", check_weights=False))
    cache = _Cache()
    lm.set_cache_hook(cache)
    letter = [Instance("loglikelihood", {}, ("Question: 2 + 2 = ?\nAnswer:", " B"), 0)]
    with pytest.raises(NonFiniteScoreError) as error:
        lm.loglikelihood(letter, disable_tqdm=True)
    assert str(error.value) == (
        "log-probability nan of the 1-token continuation [389] after a prompt of 12 tokens [17872, 42, 216, 34, 1232, 216, 34, 446, ...]"
    )
    assert isinstance(error.value, NonFiniteError)
    rolling = [Instance("loglikelihood_rolling", {}, ("Some text to score as a whole document.",), 0)]
    with pytest.raises(NonFiniteScoreError, match=r"log-probability nan of the \d+-token continuation \[.*\] after a prompt of 1 tokens"):
        lm.loglikelihood_rolling(rolling, disable_tqdm=True)
    assert cache.answers == []
    # The same HF model on finite weights: its answers are cached, as lm-eval's HFLM caches them.
    finite = build_hf_lm(ModelArgs(pretrained=str(tiny_llama_path), dtype="float32", max_model_len=256, backend="hf"))
    finite.set_cache_hook(cache)
    (answer,) = finite.loglikelihood(letter, disable_tqdm=True)
    assert cache.answers == [("loglikelihood", ("Question: 2 + 2 = ?\nAnswer:", " B"), answer)]


@pytest.mark.slow
def test_a_sweep_on_hf_records_a_nan_rung_as_non_finite(tiny_ladder_dirs, nan_rung, tmp_path):
    """`lm: hf` in a sweep (in this process): the NaN rung is a failure of kind non_finite, not a score;
    the finite rung is scored, and its rows say backend hf."""
    import pandas as pd

    _sweep_failing_once_on_the_nan_rung(_diverging_config(tiny_ladder_dirs, nan_rung, tmp_path, limit=1, lm="hf"))
    metrics = pd.read_parquet(tmp_path / "sweep" / "metrics.parquet")
    assert list(metrics.checkpoint.unique()) == [str(tiny_ladder_dirs[0])] and set(metrics.backend) == {"hf"}


@pytest.mark.engine
@pytest.mark.slow
def test_a_neighbour_that_scores_nan_is_never_blamed_on_the_checkpoint_under_test(
    tiny_ladder_dirs, nan_rung, tmp_path, engine_in_this_process, caplog
):
    """The swap check's reference, the neighbouring checkpoint, is diverged (weight check off, so it
    loads and scores NaN): no swap check, a fresh engine, and the checkpoint under test is scored."""
    from e2lm_vllm.sweep.cells import build_plan
    from e2lm_vllm.sweep.worker import SweepWorker

    model_args = {"backend": "vllm", "check_weights": False, "max_model_len": 256}
    config = _diverging_config(tiny_ladder_dirs, nan_rung, tmp_path, limit=1, lm="e2lm_vllm", model_args=model_args)
    unit = build_plan(config, tmp_path / "sweep").units[0]
    assert unit.checkpoint.step == 0 and unit.partner is not None and unit.partner.path == str(nan_rung)
    worker = SweepWorker()
    try:
        result = worker.evaluate(unit)
    finally:
        worker.shutdown()
    assert [cell.error for cell in result.cells] == [None] and result.cells[0].metrics
    assert result.engine == "built" and result.backend == "vllm"
    check = worker.swap_check
    assert check is not None and not check.passed and check.skipped.startswith("NonFiniteScoreError: log-probability nan")
    assert f"diverging@0: no swap check: the neighbouring checkpoint {nan_rung} cannot serve as reference (NonFiniteScoreError" in caplog.text
