"""The `e2lm_vllm` lm-eval model on a real vLLM engine, against lm-eval's own HFLM on real tasks.

One vLLM engine and one HF model for the whole module (engine start dominates on 2 cores).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from lm_eval.api.instance import Instance  # noqa: E402

from e2lm_vllm.proof.parity import compare, evaluate  # noqa: E402
from e2lm_vllm.settings import ModelArgs, ModelArgsError  # noqa: E402

pytestmark = pytest.mark.engine

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_LENGTH = 512  # small, so that the rolling task's documents really roll over several windows
TOLERANCE = 1e-4


# `vllm_lm` and `hf_lm` (tests/conftest.py): one engine and one HFLM for the module, at MAX_LENGTH.


@pytest.fixture(scope="module")
def full_tasks():
    from e2lm_vllm.taskdata import include_path_for

    try:
        return include_path_for("full")
    except FileNotFoundError as error:
        pytest.skip(f"../shared/data is not beside the repo: {error}")


def _instances(request_type: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(request_type=request_type, doc={}, arguments=args, idx=i) for i, args in enumerate(arguments)]


# -- parity on real tasks built from ../shared/data ---------------------------------------------

PARITY_CASES = {
    # task -> (num_fewshot, limit)
    "mmlu_5shot_letter": (["e2lm_mmlu_letter_astronomy", "e2lm_mmlu_letter_virology"], 5, 3),
    "mmlu_5shot_cloze": (["e2lm_mmlu_cloze_astronomy"], 5, 3),
    "arc_piqa_0shot": (["e2lm_arc_easy", "e2lm_piqa"], 0, 4),
    "rolling": (["e2lm_stories_ppl"], None, 2),
    "generation": (["e2lm_mmlu_gen_astronomy"], 0, 4),
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_parity_with_hf_on_real_tasks(case, vllm_lm, hf_lm, full_tasks):
    tasks, num_fewshot, limit = PARITY_CASES[case]
    ours = evaluate(vllm_lm, tasks, include_path=full_tasks, limit=limit, num_fewshot=num_fewshot)
    reference = evaluate(hf_lm, tasks, include_path=full_tasks, limit=limit, num_fewshot=num_fewshot)
    report = compare(ours, reference, TOLERANCE, vllm_lm.tok_encode)
    summary = json.dumps([item.__dict__ for item in report.request_types])
    assert report.request_types and all(item.n > 0 for item in report.request_types), summary
    assert report.max_abs_diff <= TOLERANCE, summary
    assert report.metrics_equal, json.dumps([row for row in report.metrics if not row["equal"]])
    for item in report.request_types:
        if item.is_greedy_agreement is not None:
            assert item.is_greedy_agreement == 1.0, summary
        if item.identical_generations is not None:
            assert item.identical_generations == 1.0, summary


def test_rolling_documents_span_several_windows(vllm_lm, full_tasks):
    from lm_eval.tasks import TaskManager, get_task_dict

    task = get_task_dict(["e2lm_stories_ppl"], TaskManager(include_path=full_tasks))["e2lm_stories_ppl"]
    documents = list(task.test_docs())[:2]
    lengths = [len(vllm_lm.tok_encode(task.doc_to_target(doc))) for doc in documents]
    assert max(lengths) > 2 * MAX_LENGTH, lengths


# -- exactness in the corners --------------------------------------------------------------------


def test_results_do_not_depend_on_request_order(vllm_lm):
    """vLLM issue 42019: prompt logprobs changed with order under prefix caching. Ours must not."""
    few_shot = "The following are questions about the sky.\n\n" + "Why is the sky blue? Rayleigh scattering.\n\n" * 8
    arguments = []
    for question in ["What is a comet?", "What is a star?", "What orbits the Earth?"]:
        context = few_shot + f"Question: {question}\nAnswer:"
        arguments += [(context, f" {letter}") for letter in "ABCD"]
        arguments += [(context, f" {text}") for text in ["A ball of ice and dust", "A ball of ice and gas", "The Moon"]]
    requests = _instances("loglikelihood", arguments)
    in_order = vllm_lm.loglikelihood(requests, disable_tqdm=True)
    shuffled_positions = list(range(len(requests)))
    random.Random(7).shuffle(shuffled_positions)
    shuffled = vllm_lm.loglikelihood([requests[i] for i in shuffled_positions], disable_tqdm=True)
    unshuffled = [None] * len(requests)
    for position, result in zip(shuffled_positions, shuffled):
        unshuffled[position] = result
    for (a, greedy_a), (b, greedy_b) in zip(in_order, unshuffled):
        assert abs(a - b) <= 1e-6 and greedy_a == greedy_b


def test_empty_context_empty_continuation_and_non_ascii_match_hf(vllm_lm, hf_lm):
    arguments = [
        ("", "Hello world"),
        ("", " Zürich, São Paulo, 東京 and Kraków 🚀"),
        ("Question: Where is Kraków?\nAnswer:", " In Poland, près de la Vistule — 波兰"),
        ("Naïve café ", "crème brûlée"),  # trailing space moves into the continuation, as in HF
    ]
    ours = vllm_lm.loglikelihood(_instances("loglikelihood", arguments), disable_tqdm=True)
    reference = hf_lm.loglikelihood(_instances("loglikelihood", arguments), disable_tqdm=True)
    for (a, greedy_a), (b, greedy_b) in zip(ours, reference):
        assert abs(a - b) <= TOLERANCE and greedy_a == greedy_b
    # an empty continuation has nothing to score: HFLM asserts, we say so
    empty = _instances("loglikelihood", [("Question: What is 2+2?\nAnswer:", "")])
    with pytest.raises(ValueError, match="empty continuation"):
        vllm_lm.loglikelihood(empty, disable_tqdm=True)
    with pytest.raises(AssertionError):
        hf_lm.loglikelihood(empty, disable_tqdm=True)


def test_context_longer_than_max_length_is_left_truncated_as_hf_does(vllm_lm, hf_lm):
    long_context = "Astronomy is the study of the sky. " * 80  # > MAX_LENGTH tokens
    arguments = [(long_context + "Question: What is a planet?\nAnswer:", " A body orbiting a star"),
                 (long_context + "Question: What is a planet?\nAnswer:", " B")]
    assert len(vllm_lm.tok_encode(arguments[0][0])) > MAX_LENGTH
    before = vllm_lm.truncated_requests
    ours = vllm_lm.loglikelihood(_instances("loglikelihood", arguments), disable_tqdm=True)
    reference = hf_lm.loglikelihood(_instances("loglikelihood", arguments), disable_tqdm=True)
    assert vllm_lm.truncated_requests - before == 2
    for (a, greedy_a), (b, greedy_b) in zip(ours, reference):
        assert abs(a - b) <= TOLERANCE and greedy_a == greedy_b


def test_backend_is_chosen_by_lm_evals_constructors_and_e2lm_vllm_is_always_on_vllm(vllm_lm, hf_lm, smollm2_path):
    from lm_eval.models.huggingface import HFLM

    from e2lm_vllm.engine.protocol import ScoringEngine
    from e2lm_vllm.hf_checked import CheckedHFLM
    from e2lm_vllm.lm import E2LMVLLM

    assert type(vllm_lm) is E2LMVLLM and isinstance(vllm_lm.engine, ScoringEngine)
    # conftest: E2LMVLLM.create_from_arg_obj({..., "backend": "hf"}): lm-eval's HFLM, with our checks
    assert type(hf_lm) is CheckedHFLM and isinstance(hf_lm, HFLM)
    with pytest.raises(ModelArgsError, match="E2LMVLLM runs on vLLM; backend=hf is lm-eval's HFLM"):
        E2LMVLLM(pretrained=str(smollm2_path), backend="hf")


def test_continuation_rows_hidden_by_the_cache_are_exact(vllm_lm, hf_lm):
    """A context of whole cache blocks, cached by an earlier call: the cache then serves the context
    whole, hiding the first continuation row (its logits come from the context's last token). That
    row must come from a decode step, equal to HF, never from vLLM's unfilled prompt-logprob row."""
    block = vllm_lm.engine.block_size
    text = "The planets of the solar system, in order from the Sun, are listed in this short note. " * 20
    context = vllm_lm.tok_encode(text, add_special_tokens=False)[: 6 * block]
    choices = [vllm_lm.tok_encode(answer, add_special_tokens=False) for answer in (" Mercury and Venus", " Mars and its moons", " Jupiter, then Saturn")]
    assert all(len(choice) > 1 for choice in choices)
    vllm_lm._loglikelihood_tokens([(None, context, choices[0])], disable_tqdm=True)  # caches the context
    before = vllm_lm.engine.stats.decoded_rows
    requests = [(None, context, choice) for choice in choices[1:]]
    ours = vllm_lm._loglikelihood_tokens(requests, disable_tqdm=True)
    assert vllm_lm.engine.stats.decoded_rows - before == len(requests)
    reference = hf_lm._loglikelihood_tokens(requests, disable_tqdm=True)
    for (a, greedy_a), (b, greedy_b) in zip(ours, reference):
        assert abs(a - b) <= TOLERANCE and greedy_a == greedy_b


def test_prefix_cache_is_read_for_shared_prefixes(vllm_lm):
    """The planner's promise, measured by vLLM's own counters: the few-shot block is not recomputed."""
    few_shot = "Example question and answer about physics. " * 60
    arguments = [(few_shot + f"Question {i}: what is {i} + {i}?\nAnswer:", f" {2 * i} apples") for i in range(8)]
    before = dict(vllm_lm.engine.stats.__dict__)
    vllm_lm.loglikelihood(_instances("loglikelihood", arguments), disable_tqdm=True)
    computed = vllm_lm.engine.stats.computed_prefill_tokens - before["computed_prefill_tokens"]
    submitted = sum(len(vllm_lm.tok_encode(c + x)) for c, x in arguments)
    few_shot_tokens = len(vllm_lm.tok_encode(few_shot))
    assert few_shot_tokens > 300
    # without the cache we would compute every prompt; with it, the block once plus the tails
    assert computed < submitted - 6 * few_shot_tokens, (computed, submitted)


# -- model args ----------------------------------------------------------------------------------


def test_unknown_model_arg_is_a_clear_error_listing_the_valid_ones():
    with pytest.raises(ModelArgsError) as error:
        ModelArgs.from_kwargs({"pretrained": "x", "dtpye": "float32"})
    message = str(error.value)
    assert "dtpye" in message and "dtype" in message and "max_model_len" in message


def test_ill_typed_model_arg_is_a_clear_error():
    with pytest.raises(ModelArgsError, match="max_model_len"):
        ModelArgs.from_kwargs({"pretrained": "x", "max_model_len": "long"})
    with pytest.raises(ModelArgsError, match="backend"):
        ModelArgs.from_kwargs({"pretrained": "x", "backend": "tpu"})


def test_vllm_engine_args_pass_through():
    args = ModelArgs.from_kwargs({"pretrained": "x", "max_num_seqs": 8, "max_length": 300})
    assert args.engine_kwargs == {"max_num_seqs": 8}
    assert args.max_model_len == 300


# -- the stock lm-eval CLI -----------------------------------------------------------------------


def test_importing_lm_eval_models_does_not_import_vllm():
    code = (
        "import sys; from lm_eval.api.registry import get_model; "
        "cls = get_model('e2lm_vllm'); hf = get_model('hf'); "
        "print(cls.__name__, hf.__name__, 'vllm' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["E2LMVLLM", "HFLM", "False"]


def test_lm_eval_cli_runs_e2lm_vllm_and_hf_backend(smollm2_path, tmp_path):
    lm_eval = Path(sys.executable).parent / "lm_eval"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    scores = {}
    for backend in ("vllm", "hf"):
        out = tmp_path / backend
        command = [
            str(lm_eval), "--model", "e2lm_vllm",
            "--model_args", f"pretrained={smollm2_path},dtype=float32,max_model_len=1024,backend={backend}",
            "--tasks", "sample_arc_easy", "--include_path", "tasks/samples", "--limit", "8",
            "--output_path", str(out),
        ]  # fmt: skip
        completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert "sample_arc_easy" in completed.stdout
        result_file = next(out.rglob("results_*.json"))
        scores[backend] = json.loads(result_file.read_text())["results"]["sample_arc_easy"]
    assert scores["vllm"]["acc,none"] == scores["hf"]["acc,none"]
    assert scores["vllm"]["acc_norm,none"] == scores["hf"]["acc_norm,none"]
