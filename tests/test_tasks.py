"""The task data converter and the lm-eval task suites, on the real data (no model needed).

Expected prompt strings are written out by hand in lm-eval's stock formats (mmlu, mmlu
continuation, mmlu_generative, arc_easy, piqa, hellaswag), so a drift of our YAML away from
lm-eval's templates fails here.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

from e2lm_vllm import taskdata
from e2lm_vllm.offline import set_offline_defaults

REPO = Path(__file__).resolve().parents[1]
RAW = REPO.parent / "shared" / "data"

pytestmark = pytest.mark.skipif(not (RAW / "mmlu").is_dir(), reason=f"real data folder {RAW} not present")

set_offline_defaults()


@pytest.fixture(scope="module")
def root() -> Path:
    return taskdata.data_root(RAW)


@pytest.fixture(scope="module")
def hellaswag(root: Path) -> list[dict]:
    return taskdata.hellaswag_rows(root)


# --------------------------------------------------------------------------- converters


def test_mmlu_counts_and_fields(root: Path) -> None:
    subjects = taskdata.mmlu_subjects(root)
    assert len(subjects) == 57
    test = [row for s in subjects for row in taskdata.mmlu_rows(root, s, "test")]
    dev = {s: taskdata.mmlu_rows(root, s, "dev") for s in subjects}
    assert len(test) == 14_042
    assert all(len(rows) == 5 for rows in dev.values())
    assert collections.Counter(r["answer"] for r in test) == {0: 3222, 1: 3462, 2: 3582, 3: 3776}
    assert all(len(r["choices"]) == 4 and isinstance(r["question"], str) for r in test)
    sizes = collections.Counter(r["subject"] for r in test)
    assert sizes["abstract_algebra"] == 100 and sizes["professional_law"] == 1534


def test_arc_counts_and_label_mapping(root: Path) -> None:
    counts = {(sub, split): len(taskdata.arc_rows(root, sub, split)) for sub in ("easy", "challenge") for split in ("train", "validation", "test")}  # fmt: skip
    assert counts == {
        ("easy", "train"): 2251, ("easy", "validation"): 570, ("easy", "test"): 2376,
        ("challenge", "train"): 1119, ("challenge", "validation"): 299, ("challenge", "test"): 1172,
    }  # fmt: skip
    rows = taskdata.arc_rows(root, "challenge", "test") + taskdata.arc_rows(root, "easy", "test")
    numeric = [r for r in rows if r["choices"]["label"][0] == "1"]
    assert numeric, "the ARC test sets have questions labelled 1-4"
    for row in numeric:
        assert row["choices"]["label"] == [str(i + 1) for i in range(len(row["choices"]["label"]))]
        assert taskdata.arc_gold_index(row) == int(row["answerKey"]) - 1
    lettered = [r for r in rows if r["choices"]["label"][0] == "A"]
    assert all(taskdata.arc_gold_index(r) == "ABCDE".index(r["answerKey"]) for r in lettered)
    assert len(numeric) + len(lettered) == len(rows)
    assert collections.Counter(len(r["choices"]["text"]) for r in taskdata.arc_rows(root, "easy", "test")) == {4: 2365, 3: 7, 5: 4}  # fmt: skip


def test_piqa_joins_labels(root: Path) -> None:
    rows = taskdata.piqa_rows(root)
    assert len(rows) == 1838
    assert {r["label"] for r in rows} == {0, 1}
    assert set(rows[0]) == {"goal", "sol1", "sol2", "label"}
    assert rows[0]["goal"] == "How do I ready a guinea pig cage for it's new occupants?"


def test_hellaswag_items(hellaswag: list[dict]) -> None:
    assert len(hellaswag) == 10_042
    assert all(len(r["choices"]) == 4 for r in hellaswag)
    assert collections.Counter(r["label"] for r in hellaswag) == {0: 2515, 1: 2485, 2: 2584, 3: 2458}
    # lm-eval: preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())
    assert hellaswag[0]["query"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert hellaswag[1]["query"] == "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady"
    assert hellaswag[0]["choices"][3] == "starts pulling up roofing on a roof."
    assert not any("[" in text for r in hellaswag for text in [r["query"], *r["choices"]] if "[title]" in text)


def test_story_documents_roll(hellaswag: list[dict]) -> None:
    docs = taskdata.story_docs(hellaswag)
    words = [len(d["text"].split()) for d in docs]
    assert sum(d["n_items"] for d in docs) == len(hellaswag)
    assert max(words) <= taskdata.STORY_MAX_WORDS + 200
    # ~1.3 SmolLM2 tokens per word: these exceed 2,048 tokens, so rolling windows roll
    assert sum(w > 2000 for w in words) > 100


# --------------------------------------------------------------------------- bundled samples


def test_bundled_samples_are_the_converter_output(root: Path) -> None:
    suite = taskdata.build_samples_suite(root)
    generated = dict(taskdata.suite_files(suite))
    samples = taskdata.SAMPLES_DIR
    on_disk = {
        str(p.relative_to(samples)): p.read_text(encoding="utf-8")
        for p in samples.rglob("*")
        if p.is_file() and (p.suffix in {".yaml", ".jsonl"} or p.name.endswith("_yaml") or p.name == "LICENSE")
    }
    assert sorted(on_disk) == sorted(generated), "run `python -m e2lm_vllm.taskdata samples`"
    for name, text in generated.items():
        assert on_disk[name] == text, f"{samples / name} differs from the converter output"
    assert 1200 <= sum(suite.request_counts.values()) <= 1600  # the demo's request budget


# --------------------------------------------------------------------------- lm-eval tasks


def _task_dict(include_path: str, names: list[str]) -> dict:
    """Leaf tasks by name, loaded the way lm-eval's evaluator loads them."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path, include_defaults=False)
    missing = [n for n in names if n not in manager.all_tasks]
    assert not missing, f"{missing} not found under {include_path}"
    return manager.load(names)["tasks"]


def _requests(task, num_fewshot: int = 0, limit: int = 1) -> list[tuple]:
    task.set_config(key="num_fewshot", value=num_fewshot)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return [inst.arguments for inst in task.instances]


MMLU_ANATOMY_0 = (
    "A lesion causing compression of the facial nerve at the stylomastoid foramen will cause ipsilateral",
    [
        "paralysis of the facial muscles.",
        "paralysis of the facial muscles and loss of taste.",
        "paralysis of the facial muscles, loss of taste and lacrimation.",
        "paralysis of the facial muscles, loss of taste, lacrimation and decreased salivation.",
    ],
)


def _mmlu_block(question: str, choices: list[str]) -> str:
    return f"{question}\nA. {choices[0]}\nB. {choices[1]}\nC. {choices[2]}\nD. {choices[3]}\nAnswer:"


@pytest.fixture(scope="module")
def full_include_path() -> str:
    return taskdata.include_path_for("full", RAW)


def test_full_suite_lists_every_task(full_include_path: str) -> None:
    from lm_eval.tasks import TaskManager

    names = set(TaskManager(include_path=full_include_path, include_defaults=False).all_tasks)
    subjects = taskdata.mmlu_subjects(taskdata.data_root(RAW))
    for kind in ("letter", "cloze", "gen"):
        assert f"e2lm_mmlu_{kind}" in names
        assert {f"e2lm_mmlu_{kind}_{s}" for s in subjects} <= names
    assert {"e2lm_full", "e2lm_arc_easy", "e2lm_arc_challenge", "e2lm_piqa", "e2lm_hellaswag", "e2lm_stories_ppl"} <= names  # fmt: skip
    assert taskdata.include_path_for("full", RAW) == full_include_path  # cached, not rebuilt


def test_full_suite_prompts_match_lm_eval_formats(full_include_path: str) -> None:
    by_name = _task_dict(
        full_include_path,
        ["e2lm_mmlu_letter_anatomy", "e2lm_mmlu_cloze_anatomy", "e2lm_mmlu_gen_anatomy", "e2lm_arc_easy",
         "e2lm_arc_challenge", "e2lm_piqa", "e2lm_hellaswag", "e2lm_stories_ppl"],
    )  # fmt: skip
    question, choices = MMLU_ANATOMY_0

    letter = _requests(by_name["e2lm_mmlu_letter_anatomy"])
    description = "The following are multiple choice questions (with answers) about anatomy.\n\n"
    context = description + _mmlu_block(question, choices)
    assert letter == [(context, " A"), (context, " B"), (context, " C"), (context, " D")]

    cloze = _requests(by_name["e2lm_mmlu_cloze_anatomy"])
    context = "The following are questions (with answers) about anatomy.\n\n" + f"Question: {question}\nAnswer:"
    assert cloze == [(context, " " + c) for c in choices]

    gen = _requests(by_name["e2lm_mmlu_gen_anatomy"])
    assert gen[0][0] == description + _mmlu_block(question, choices)
    assert gen[0][1]["until"] == ["</s>", "\n"] and gen[0][1]["max_gen_toks"] == 8
    assert gen[0][1]["do_sample"] is False

    arc = _requests(by_name["e2lm_arc_easy"])
    context = "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    assert arc[0] == (context, " Sunlight is the source of energy for nearly all ecosystems.")
    assert arc[3] == (context, " The producers in all ecosystems are plants.")

    piqa = _requests(by_name["e2lm_piqa"])
    assert piqa[0][0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert piqa[1][1].startswith(" Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans")

    hella = _requests(by_name["e2lm_hellaswag"])
    assert hella[3] == ("Roof shingle removal: A man is sitting on a roof. He", " starts pulling up roofing on a roof.")

    rolling = _requests(by_name["e2lm_stories_ppl"])
    assert len(rolling) == 1 and rolling[0][0].startswith("Roof shingle removal: A man is sitting on a roof. He")

    # ARC questions labelled 1-4: the target is the index of answerKey among the labels
    challenge = by_name["e2lm_arc_challenge"]
    numeric = next(d for d in challenge.test_docs() if d["choices"]["label"][0] == "1")
    assert challenge.doc_to_target(numeric) == int(numeric["answerKey"]) - 1


def test_full_mmlu_five_shot_uses_first_dev_items(full_include_path: str, root: Path) -> None:
    (task,) = _task_dict(full_include_path, ["e2lm_mmlu_letter_anatomy"]).values()
    shots = "".join(
        _mmlu_block(row["question"].strip(), row["choices"]) + " " + "ABCD"[row["answer"]] + "\n\n"
        for row in taskdata.mmlu_rows(root, "anatomy", "dev")
    )
    description = "The following are multiple choice questions (with answers) about anatomy.\n\n"
    requests = _requests(task, num_fewshot=5)
    assert requests[0] == (description + shots + _mmlu_block(*MMLU_ANATOMY_0), " A")


def test_samples_group_builds_every_request() -> None:
    """The committed suite, loaded as the demo does (data paths relative to the repo root)."""
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        tasks = _task_dict("tasks/samples", ["e2lm_samples"])
        suite = taskdata.build_samples_suite(taskdata.data_root(RAW))
        counts = {}
        for task in tasks.values():
            counts[task.config.task] = len(_requests(task, limit=None))
    finally:
        os.chdir(cwd)
    assert counts == suite.request_counts


def test_samples_include_path_works_from_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    include_path = taskdata.include_path_for("samples")
    monkeypatch.chdir(tmp_path)
    (task,) = _task_dict(include_path, ["sample_arc_easy"]).values()
    assert len(task.test_docs()) == taskdata.SAMPLE_SIZES["arc_easy"]


def test_bad_data_folder_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(taskdata.TaskDataError, match="E2LM_DATA_DIR"):
        taskdata.data_root(tmp_path)
