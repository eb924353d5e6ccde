"""MMLU-Curriculum: difficulty, selection, writer, competition rules, and the submission zip.

Real parts throughout: per-sample rows from lm-eval's HF model over the three-rung SmolLM2 ladder
(the sweep's row converters), real MMLU items from ../shared/data, lm-eval's TaskManager and CLI
(HF backend, --limit 2), and git applying the submission patch to a tree made from the installed
lm-eval package.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from e2lm_vllm.curriculum.cli import build
from e2lm_vllm.curriculum.difficulty import DifficultyError, HoldOut, measure_difficulty
from e2lm_vllm.curriculum.select import SelectionConfig
from e2lm_vllm.curriculum.submission import SubmissionError, write_submission
from e2lm_vllm.curriculum.validate import (
    CompetitionRules,
    load_task_yaml,
    smollm2_token_counter,
    task_yaml_files,
    validate_items,
    validate_task_dir,
)
from e2lm_vllm.curriculum.writer import Manifest, local_include_path, prompt_format
from e2lm_vllm.taskdata import data_root, include_path_for, mmlu_rows

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = ["astronomy", "high_school_geography", "marketing", "nutrition", "sociology", "world_religions"]
ITEMS_PER_SUBJECT = 3
TINY_RULES = CompetitionRules(min_samples=4)
PYTHON = sys.executable
# Tests on the ladder fixtures: lm-eval's HF model scores 3 rungs (minutes on 2 cores); no vLLM engine.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def ladder_samples(ladder_dirs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Per-sample rows of 6 MMLU cloze subjects x 3 items over the 3 ladder rungs (lm-eval's HF model)."""
    from e2lm_vllm.curriculum.ladder_eval import evaluate_ladder

    out = tmp_path_factory.mktemp("difficulty")
    evaluate_ladder(
        ladder_dirs,
        [f"e2lm_mmlu_cloze_{subject}" for subject in SUBJECTS],
        out,
        include_path=[include_path_for("full")],
        limit=ITEMS_PER_SUBJECT,
        model_args={"dtype": "float32", "batch_size": 16},
        backend="hf",
    )
    samples = pd.read_parquet(out / "samples.parquet")
    assert set(samples["step"]) == {0, 1000, 2000}
    return samples


@pytest.fixture(scope="module")
def built_task(ladder_samples: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("task") / "mmlu_curriculum"
    config = SelectionConfig(min_rho=-1.0, min_slope=-1e9, min_rise=-1e9, n_tiers=3, min_items_per_subject=1)
    build(ladder_samples, out, hold_out=HoldOut("all"), config=config, rules=TINY_RULES)
    return out


# --------------------------------------------------------------------------- difficulty and selection


@slow
def test_item_statistics_match_the_raw_rows(ladder_samples: pd.DataFrame) -> None:
    difficulty = measure_difficulty(ladder_samples, HoldOut("all"), margin="raw")
    items = difficulty.items
    assert len(items) == len(SUBJECTS) * ITEMS_PER_SUBJECT
    assert difficulty.selection_steps == {"smollm2-135m-3": [0, 1000, 2000]}
    # One item by hand: gold margin at the last rung and its rise from the first.
    row = ladder_samples[(ladder_samples["task"] == "e2lm_mmlu_cloze_astronomy") & (ladder_samples["doc_id"] == 0)]
    margins = {}
    for sample in row.itertuples():
        logprobs = list(sample.choice_logprobs)
        gold = logprobs.pop(int(sample.target))
        margins[sample.step] = gold - sum(logprobs) / len(logprobs)
    item = items[(items["subject"] == "astronomy") & (items["doc_id"] == 0)].iloc[0]
    assert item["margin_last"] == pytest.approx(margins[2000])
    assert item["margin_rise"] == pytest.approx(margins[2000] - margins[0])
    # With three equally spaced checkpoints the OLS slope is (last - first) / 2.
    assert item["slope"] == pytest.approx((margins[2000] - margins[0]) / 2)
    # learned_step is defined exactly for the items right at the last checkpoint.
    assert (items["learned_step"].notna() == (items["acc_last"] == 1.0)).all()
    assert set(difficulty.subjects["subject"]) == set(SUBJECTS)
    # The default margin divides each choice's log-probability by its length in bytes.
    sample = row[row["step"] == 2000].iloc[0]
    per_byte = [lp / n for lp, n in zip(sample.choice_logprobs, sample.choice_bytes)]
    gold = per_byte.pop(int(sample.target))
    default = measure_difficulty(ladder_samples, HoldOut("all")).items
    assert default.loc[(default["subject"] == "astronomy") & (default["doc_id"] == 0), "margin_last"].iloc[0] == pytest.approx(
        gold - sum(per_byte) / len(per_byte)
    )


@slow
def test_hold_out_keeps_held_rungs_out_of_selection(ladder_samples: pd.DataFrame) -> None:
    even = measure_difficulty(ladder_samples, HoldOut("even"))
    assert even.selection_steps["smollm2-135m-3"] == [0, 2000]
    assert even.held_out_steps["smollm2-135m-3"] == [1000]
    explicit = measure_difficulty(ladder_samples, HoldOut(steps=(1000, 2000)))
    assert explicit.held_out_steps["smollm2-135m-3"] == [0]
    # The held-out rung changes the statistics: they come from the selection rungs only.
    all_rungs = measure_difficulty(ladder_samples, HoldOut("all"))
    assert not even.items["slope"].equals(all_rungs.items["slope"])
    with pytest.raises(DifficultyError, match="at least 2"):
        measure_difficulty(ladder_samples, HoldOut("odd"))


@slow
def test_selection_keeps_rising_items_and_orders_tiers(ladder_samples: pd.DataFrame, tmp_path: Path) -> None:
    config = SelectionConfig(min_rho=0.5, n_tiers=2, min_items_per_subject=1)
    selection, manifest = build(ladder_samples, tmp_path / "task", hold_out=HoldOut("all"), config=config, rules=CompetitionRules(min_samples=1))
    kept, dropped = selection.curriculum, selection.items[selection.items["reason"] != "kept"]
    assert len(kept) + len(dropped) == len(SUBJECTS) * ITEMS_PER_SUBJECT
    assert (kept["slope"] > 0).all() and (kept["rho"] >= 0.5).all() and (kept["margin_rise"] > 0).all()
    assert set(dropped["reason"]) <= {"flat", "against", "leak", "too_long", "non_english", "small_subject"}
    assert (dropped.loc[dropped["reason"] == "against", "slope"] < 0).all()
    # Tiers run from easy to hard: ease (mean final gold margin) never rises from one tier to the next.
    ease = selection.subjects.groupby("tier")["ease"].agg(["min", "max"]).sort_index()
    assert all(ease["min"].iloc[k] >= ease["max"].iloc[k + 1] for k in range(len(ease) - 1))
    assert manifest.n_items == len(kept) == sum(tier.n_items for tier in manifest.tiers)


@slow
def test_build_refuses_a_curriculum_below_the_minimum(ladder_samples: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(DifficultyError, match="the competition needs 100 to 15000"):
        build(ladder_samples, tmp_path / "task", hold_out=HoldOut("all"))


@slow
def test_compare_uses_only_held_out_rungs(ladder_samples: pd.DataFrame, tmp_path: Path) -> None:
    from e2lm_vllm.curriculum.compare import BASELINE, accuracy_table, held_out_samples

    config = SelectionConfig(min_rho=-1.0, n_tiers=2, min_items_per_subject=1)
    _, manifest = build(ladder_samples, tmp_path / "task", hold_out=HoldOut("even"), config=config, rules=CompetitionRules(min_samples=1))
    assert manifest.build["held_out_steps"] == {"smollm2-135m-3": [1000]}
    rows = held_out_samples(ladder_samples, tmp_path / "task")
    assert set(rows["step"]) == {1000}
    assert len(rows[rows["task"] == BASELINE]) == len(SUBJECTS) * ITEMS_PER_SUBJECT
    assert len(rows[rows["task"] == "mmlu_curriculum"]) == manifest.n_items
    acc = accuracy_table(rows).set_index("task")["value"]
    curriculum = rows[rows["task"] == "mmlu_curriculum"]
    assert acc["mmlu_curriculum"] == pytest.approx(curriculum["correct"].mean())


# --------------------------------------------------------------------------- rules


def _items(subject: str = "astronomy", n: int = 5) -> pd.DataFrame:
    rows = mmlu_rows(data_root(), subject, "test")[:n]
    return pd.DataFrame([{**row, "doc_id": i} for i, row in enumerate(rows)])


def test_validate_catches_each_rule(smollm2_path: Path) -> None:
    fmt = prompt_format("astronomy")
    counter = smollm2_token_counter()
    clean = validate_items(_items(), fmt, TINY_RULES, counter)
    assert clean.ok, clean.describe()
    assert validate_items(_items(n=3), fmt, TINY_RULES, counter).failed() == ["size"]
    assert "size" in validate_items(_items(), fmt, CompetitionRules(), counter).failed()

    long = _items()
    long.loc[0, "question"] = "Which of the stars below is brightest? " * 300  # ~2,700 tokens
    report = validate_items(long, fmt, TINY_RULES, counter)
    assert report.failed() == ["length"] and report.results[1].offending == ["astronomy/0"]

    leaked = _items()
    gold = leaked.loc[1, "choices"][leaked.loc[1, "answer"]]
    leaked.loc[1, "question"] = f"{leaked.loc[1, 'question']} (Hint: {gold})"
    report = validate_items(leaked, fmt, TINY_RULES, counter)
    assert report.failed() == ["leak"] and report.results[2].offending == ["astronomy/1"]

    french = _items()
    french.loc[2, "question"] = "Quelle est la planète la plus proche du Soleil dans notre système solaire ?"
    french.at[2, "choices"] = ["Mercure", "Vénus", "la Terre", "Mars"]
    report = validate_items(french, fmt, TINY_RULES, counter)
    assert report.failed() == ["english"] and report.results[3].offending == ["astronomy/2"]


@slow
def test_task_folder_is_pure_yaml_and_validates(built_task: Path, tmp_path: Path) -> None:
    files = task_yaml_files(built_task)
    assert files and all(load_task_yaml(path)[1] == 0 for path in files)
    assert not list(built_task.rglob("*.py"))
    report = validate_task_dir(built_task, TINY_RULES)
    assert report.ok, report.describe()
    # A !function anywhere breaks the pure-YAML rule, and the CLI exits 1.
    broken = tmp_path / "broken"
    shutil.copytree(built_task, broken)
    manifest = Manifest.read(broken)
    template = broken / manifest.template_file
    template.write_text(template.read_text() + "process_docs: !function utils.process_docs\n")
    assert validate_task_dir(broken, TINY_RULES).failed() == ["pure_yaml"]
    cli = _run([PYTHON, "-m", "e2lm_vllm.cli", "curriculum", "validate", str(broken), "--min-samples", "4"])
    assert cli.returncode == 1 and "FAIL pure_yaml" in cli.stdout


@slow
def test_task_loads_and_runs_in_lm_eval(built_task: Path, smollm2_path: Path, tmp_path: Path) -> None:
    from lm_eval.tasks import TaskManager

    include = local_include_path(built_task, cache=tmp_path / "cache")
    manifest = Manifest.read(built_task)
    manager = TaskManager(include_path=include, include_defaults=False)
    expected = {"mmlu_curriculum", *(f"mmlu_curriculum_{t.name}" for t in manifest.tiers), *(f"mmlu_curriculum_{s}" for s in manifest.subjects)}
    assert expected <= set(manager.all_tasks)

    out = tmp_path / "out"
    result = _run(
        [PYTHON, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={smollm2_path},dtype=float32", "--device", "cpu",
         "--include_path", include, "--tasks", "mmlu_curriculum", "--limit", "2", "--output_path", str(out)],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = _results_json(out)
    n_subjects = len(manifest.subjects)
    assert results["n-samples"][f"mmlu_curriculum_{manifest.subjects[0]}"]["effective"] <= 2
    group = results["results"]["mmlu_curriculum"]
    assert 0.0 <= group["acc,none"] <= 1.0
    assert sum(results["n-samples"][f"mmlu_curriculum_{s}"]["effective"] for s in manifest.subjects) <= 2 * n_subjects


# --------------------------------------------------------------------------- submission


@slow
def test_submission_needs_hf_token_from_the_environment(built_task: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(SubmissionError, match="HF_TOKEN is not set"):
        write_submission(built_task, "mmlu_curriculum_test", "acc", "testuser/mmlu-curriculum", tmp_path / "s.zip")
    assert not (tmp_path / "s.zip").exists()
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    cli = _run([PYTHON, "-m", "e2lm_vllm.cli", "submission", "--task-dir", str(built_task), "--name", "mmlu_curriculum_test",
                "--hf-dataset", "testuser/mmlu-curriculum", "-o", str(tmp_path / "s.zip")], env=env)
    assert cli.returncode == 2 and "HF_TOKEN is not set" in cli.stderr and not (tmp_path / "s.zip").exists()
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    with pytest.raises(SubmissionError, match="--metric"):
        write_submission(built_task, "mmlu_curriculum_test", "f1", "testuser/mmlu-curriculum", tmp_path / "s.zip")
    with pytest.raises(SubmissionError, match="--hf-dataset"):
        write_submission(built_task, "mmlu_curriculum_test", "acc", "not a dataset id", tmp_path / "s.zip")


@slow
def test_submission_patch_applies_to_lm_eval_and_runs(
    built_task: Path, smollm2_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lm_eval

    name, dataset = "mmlu_curriculum_test", "testuser/mmlu-curriculum"
    monkeypatch.setenv("HF_TOKEN", "hf_secret_from_env")
    archive = write_submission(built_task, name, "acc", dataset, tmp_path / "submission.zip")
    with zipfile.ZipFile(archive) as zipped:
        assert sorted(zipped.namelist()) == ["evaluation.patch", "metadata.yaml"]
        metadata = yaml.safe_load(zipped.read("metadata.yaml"))
        patch = zipped.read("evaluation.patch").decode()
    assert metadata == {"task_name": name, "task_metric": "acc", "hf_token": "hf_secret_from_env"}
    assert "hf_secret_from_env" not in patch and "!function" not in patch
    assert f"+++ b/lm_eval/tasks/{name}/{name}.yaml" in patch and f"dataset_path: {dataset}" in patch

    # A git tree laid out as lm-eval, from the installed package.
    tree = tmp_path / "lm-evaluation-harness"
    shutil.copytree(Path(lm_eval.__file__).parent, tree / "lm_eval", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t"]
    _check([*git, "init", "-q"])
    _check([*git, "add", "-A"])
    _check([*git, "commit", "-q", "-m", "lm-eval"])
    (tmp_path / "evaluation.patch").write_text(patch)
    _check([*git, "apply", "--check", str(tmp_path / "evaluation.patch")])
    _check([*git, "apply", str(tmp_path / "evaluation.patch")])
    assert (tree / "lm_eval" / "tasks" / name / "README.md").is_file()

    # Run from the patched tree. The dataset id resolves to a local folder of the same name (what
    # `datasets` does before asking the Hub), holding exactly the folder the user uploads.
    shutil.copytree(built_task / "data", tmp_path / "run" / dataset)
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out"
    result = _run(
        [PYTHON, "-c", "import lm_eval, sys; sys.argv[0] = 'lm_eval'; print('LM_EVAL_FROM', lm_eval.__file__); "
         "from lm_eval.__main__ import cli_evaluate; cli_evaluate()",
         "--model", "hf", "--model_args", f"pretrained={smollm2_path},dtype=float32", "--device", "cpu",
         "--tasks", name, "--limit", "2", "--output_path", str(out)],
        cwd=tmp_path / "run", env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"LM_EVAL_FROM {tree}" in result.stdout
    results = _results_json(out)
    assert 0.0 <= results["results"][name]["acc,none"] <= 1.0
    manifest = Manifest.read(built_task)
    assert {f"{name}_{tier.name}" for tier in manifest.tiers} <= set(results["results"])


# --------------------------------------------------------------------------- the committed task


def test_committed_curriculum_meets_the_rules(smollm2_path: Path) -> None:
    from e2lm_vllm.curriculum.validate import smollm2_token_counter

    task_dir = REPO_ROOT / "tasks" / "mmlu_curriculum"
    manifest = Manifest.read(task_dir)
    # competition defaults (100 to 15,000 samples, 2,048 tokens), counted with the tokenizer the
    # build used: bytes alone overestimate the two longest history items (2,111 bytes)
    report = validate_task_dir(task_dir, count_tokens=smollm2_token_counter())
    assert report.ok, report.describe()
    assert report.n_samples == manifest.n_items >= 100
    items = pd.read_parquet(task_dir / "data" / "mmlu_curriculum.parquet")
    # Verbatim MMLU: every item is the test row its doc_id names.
    root = data_root()
    for subject, part in items.groupby("subject"):
        rows = mmlu_rows(root, subject, "test")
        for item in part.itertuples():
            assert rows[item.doc_id]["question"] == item.question and rows[item.doc_id]["answer"] == item.answer
    assert manifest.dataset_path == "tasks/mmlu_curriculum/data"
    assert any(manifest.build["held_out_steps"].values()), "the committed build must hold out checkpoints"
    selection = manifest.build["selection_steps"]
    assert all(not set(selection[model]) & set(steps) for model, steps in manifest.build["held_out_steps"].items())
    assert not math.isnan(items["slope"].min()) and (items["slope"] > 0).all()


# --------------------------------------------------------------------------- helpers


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd or REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def _check(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}: {result.stderr}"


def _results_json(out: Path) -> dict:
    found = sorted(out.rglob("results_*.json"))
    assert found, f"no results json under {out}"
    return json.loads(found[-1].read_text())
