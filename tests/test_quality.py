"""Benchmark-quality metrics: hand-computed cases, properties, edge cases, and the real E2LM curves."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from e2lm_vllm.cli import main
from e2lm_vllm.quality import (
    ScoreWeights,
    ScoringConfig,
    ScoringInputError,
    autocorrelation,
    compliance,
    decision_accuracy,
    e2lm_checkpoint_filter,
    is_lower_better,
    item_learnability,
    iteration_to_tokens,
    load_e2lm_json,
    metric_scale,
    monotonicity,
    ordinal_ranks,
    per_sample_scores,
    ranking_agreement,
    ranking_consistency,
    relative_dispersion,
    relative_noise,
    score_path,
    score_results,
    signal_quality,
    signal_to_noise,
    total_variation,
    validate_metrics,
)

REPO = Path(__file__).resolve().parents[1]
# The organisers' curves ship in the repo (the demo scores them); shared/ holds the original copy.
E2LM_JSON = REPO / "data" / "e2lm" / "plot-data-combined-all.json"
SHARED_E2LM_JSON = REPO.parent / "shared" / "data" / "e2lm" / "plot-data-combined-all.json"
needs_e2lm_data = pytest.mark.skipif(not E2LM_JSON.exists(), reason=f"organisers' E2LM curves not found at {E2LM_JSON}")


@pytest.mark.skipif(not SHARED_E2LM_JSON.exists(), reason="shared/ is not beside the checkout")
def test_bundled_organisers_curves_are_the_shared_copy():
    assert E2LM_JSON.read_bytes() == SHARED_E2LM_JSON.read_bytes()


def long_table(curves: dict[str, list[float]], task: str = "t", metric: str = "acc", steps: list[int] | None = None) -> pd.DataFrame:
    """Long-format rows for {model: scores at steps 1000, 2000, ...}."""
    rows = []
    for model, scores in curves.items():
        for index, value in enumerate(scores):
            step = steps[index] if steps else 1000 * (index + 1)
            rows.append({"model": model, "step": step, "task": task, "metric": metric, "value": value})
    return pd.DataFrame(rows)


# --- signal quality -------------------------------------------------------------------------


def test_ordinal_ranks_break_ties_by_position():
    assert ordinal_ranks(np.array([2.0, 1.0, 2.0])).tolist() == [1, 0, 2]


def test_monotonicity_hand_computed():
    # ranks of [1, 3, 2, 4] are [0, 2, 1, 3]: sum d^2 = 2, rho = 1 - 6*2 / (4*15) = 0.8
    assert monotonicity([1, 3, 2, 4]) == pytest.approx(0.8)
    # ties by position: [1, 3, 3, 2] ranks [0, 2, 3, 1], sum d^2 = 6, rho = 1 - 36/60 = 0.4
    # (scipy's average-rank Spearman gives 0.316: the notebook's ordinal ranks differ on purpose)
    assert monotonicity([1, 3, 3, 2]) == pytest.approx(0.4)


def test_monotonicity_properties():
    assert monotonicity(np.arange(16.0)) == 1.0
    assert monotonicity(-np.arange(16.0)) == 0.0  # rho = -1, floored at 0
    assert monotonicity([0.5] * 10) == 1.0  # constant: ordinal ranks keep position order
    rng = np.random.default_rng(0)
    for _ in range(20):
        shuffled = rng.permutation(16).astype(float)
        if not np.array_equal(shuffled, np.arange(16)):
            assert monotonicity(shuffled) < 1.0
    assert math.isnan(monotonicity([0.3]))


def test_autocorrelation_hand_computed():
    # n = 8: one lag; a line correlates perfectly with itself shifted, an alternation anti-correlates
    assert autocorrelation(np.arange(8.0)) == pytest.approx(1.0)
    assert autocorrelation([0, 1, 0, 1, 0, 1, 0, 1]) == pytest.approx(1.0)
    # n = 12: lags 1 and 2; Pearson written out by hand
    series = np.array([1, 4, 2, 5, 3, 7, 6, 9, 8, 7, 10, 12], dtype=float)

    def pearson(a: np.ndarray, b: np.ndarray) -> float:
        return float(((a - a.mean()) * (b - b.mean())).sum() / math.sqrt(((a - a.mean()) ** 2).sum() * ((b - b.mean()) ** 2).sum()))

    expected = (abs(pearson(series[1:], series[:-1])) + abs(pearson(series[2:], series[:-2]))) / 2
    assert autocorrelation(series) == pytest.approx(expected)


def test_short_and_constant_series_are_undefined_not_errors():
    assert math.isnan(autocorrelation([1, 2, 3, 4, 5, 6, 7]))  # n < 8: no lag
    quality = signal_quality([1, 2, 3, 4, 5])
    assert quality.monotonicity == 1.0 and math.isnan(quality.autocorrelation) and math.isnan(quality.signal_quality)
    assert math.isnan(autocorrelation([0.25] * 12))  # constant segments: Pearson undefined


def test_signal_quality_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        signal_quality([0.1, float("nan"), 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])


@needs_e2lm_data
def test_signal_quality_matches_the_scoring_notebook_on_real_data():
    # The notebook's own model, dense-1b-arch1 on hellaswag with its filters: values computed
    # with the notebook's code verbatim.
    table = e2lm_checkpoint_filter(load_e2lm_json(E2LM_JSON))
    series = table[(table.model == "dense-1b-arch1") & (table.task == "hellaswag")].sort_values("step")["value"]
    quality = signal_quality(series.to_numpy())
    assert len(series) == 14
    assert quality.monotonicity == pytest.approx(1.0)
    assert quality.autocorrelation == pytest.approx(0.992838731830992, abs=1e-12)
    assert quality.signal_quality == pytest.approx(0.9964193659154961, abs=1e-12)


# --- token axis -----------------------------------------------------------------------------


def test_iteration_to_tokens_hand_computed():
    # first ramp phase (batch 256) lasts 1627604 / 256 = 6357.83 iterations in the notebook's conversion
    assert iteration_to_tokens([2000])[0] == 2000 * 256 * 4096
    # 6357.828125 iterations at 256, the rest of 8000 at 512: 6666665984 + 1642.171875 * 512 * 4096
    assert iteration_to_tokens([8000])[0] == pytest.approx(10_110_550_016, abs=1)
    # Megatron: 6358 whole iterations at 256 (1627648 samples), then 1642 at 512
    assert iteration_to_tokens([8000], method="megatron")[0] == (6358 * 256 + 1642 * 512) * 4096
    assert iteration_to_tokens([5000], method="megatron")[0] == iteration_to_tokens([5000])[0]


@needs_e2lm_data
def test_iteration_to_tokens_reproduces_the_organisers_gtokens():
    data = json.loads(E2LM_JSON.read_text())["data"]
    for model, series in data.items():
        gtokens = np.asarray(series["gtokens"]) * 1e9
        assert iteration_to_tokens(series["iteration"]) == pytest.approx(gtokens, rel=1e-12), model
        # what Megatron really consumed differs by less than 0.007 %
        assert iteration_to_tokens(series["iteration"], method="megatron") == pytest.approx(gtokens, rel=7e-5), model


@needs_e2lm_data
def test_e2lm_filter_keeps_the_notebooks_checkpoints():
    table = e2lm_checkpoint_filter(load_e2lm_json(E2LM_JSON))
    steps = sorted(table[table.model == "dense-1b-arch1"]["step"].unique())
    assert steps == list(range(4000, 56001, 4000))
    assert table["tokens"].max() <= 206e9


# --- signal and noise -----------------------------------------------------------------------


def test_signal_noise_snr_hand_computed():
    assert relative_dispersion([0.2, 0.3, 0.5]) == pytest.approx(0.3 / (1 / 3))
    assert relative_noise([1.0, 2.0, 3.0]) == pytest.approx(math.sqrt(2 / 3) / 2)
    assert signal_to_noise(0.9, 0.3) == pytest.approx(3.0)
    assert math.isnan(relative_dispersion([0.4]))  # one model: nothing to tell apart
    assert math.isnan(relative_noise([0.0, 0.0]))  # zero mean
    assert math.isnan(relative_noise([0.4]))  # one checkpoint: no jitter to measure, not 0


def test_positive_rates_are_named_in_one_place():
    for rate in ("acc", "acc_norm", "exact_match", "f1", "sample_acc", "score"):
        assert metric_scale(rate) == "rate", rate
    for other in ("gold_margin", "likelihood", "acc_mutual_info", "word_perplexity", "gold_bits_per_byte", "bleu", "new_metric"):
        assert metric_scale(other) == "other", other


@pytest.mark.parametrize("finals", [(-0.10, 0.12), (-0.12, 0.10)])
def test_margin_signal_does_not_divide_by_a_mean_near_zero(finals):
    # A log-likelihood margin ending at -0.10 and +0.12: relative dispersion would be 0.22 / 0.01 = 22
    # (or -22 the other way round). The absolute definition gives the spread and std in nats.
    low, high = finals
    curves = {"a": [low - 0.3, low - 0.2, low - 0.05, low], "b": [high - 0.2, high - 0.1, high + 0.02, high]}
    task = score_results(long_table(curves, metric="gold_margin")).tasks[0]
    noise = (np.std(curves["a"]) + np.std(curves["b"])) / 2
    assert task.signal == pytest.approx(0.22)
    assert task.noise == pytest.approx(noise)
    assert task.snr == pytest.approx(0.22 / noise) and 0 < task.snr < 10
    assert task.signal_definition == "absolute"


def test_rates_keep_allenais_relative_signal_and_noise():
    curves = {"a": [0.2, 0.3, 0.4], "b": [0.3, 0.5, 0.6]}
    task = score_results(long_table(curves, metric="acc")).tasks[0]
    assert task.signal_definition == "relative"
    assert task.signal == pytest.approx(0.2 / 0.5)
    noise = (np.std(curves["a"]) / np.mean(curves["a"]) + np.std(curves["b"]) / np.mean(curves["b"])) / 2
    assert task.noise == pytest.approx(noise)
    assert task.snr == pytest.approx(0.4 / noise)


@pytest.mark.parametrize("metric", ["acc", "gold_margin"])
def test_one_checkpoint_per_model_gives_not_enough_checkpoints_never_inf(metric):
    task = score_results(long_table({"a": [0.3], "b": [0.5]}, metric=metric)).tasks[0]
    assert not math.isnan(task.signal)  # two models: their finals differ
    assert math.isnan(task.noise) and math.isnan(task.snr)
    assert any("not enough checkpoints" in note for note in task.notes)
    payload = score_results(long_table({"a": [0.3], "b": [0.5]}, metric=metric)).to_json_dict()
    assert payload["tasks"][0]["snr"] is None


def test_total_variation_hand_computed():
    # mean |diff| = 1, / range 1 = 1, minus improvement (1 - 0) / 4
    assert total_variation([0, 1, 0, 1]) == pytest.approx(0.75)
    # rising line: 1/3 - 3/4
    assert total_variation([0, 1, 2, 3]) == pytest.approx(1 / 3 - 3 / 4)
    assert total_variation([0, 1, 0, 1], normalize=False, subtract_improvement=False) == pytest.approx(1.0)
    assert total_variation([0.4] * 5) == 0.0


# --- ranking --------------------------------------------------------------------------------


def test_decision_accuracy_hand_computed():
    assert decision_accuracy(np.array([1, 2, 3]), np.array([1, 2, 3])) == 1.0
    assert decision_accuracy(np.array([3, 2, 1]), np.array([1, 2, 3])) == 0.0
    assert decision_accuracy(np.array([1, 3, 2]), np.array([1, 2, 3])) == pytest.approx(2 / 3)
    assert math.isnan(decision_accuracy(np.array([1.0]), np.array([2.0])))


def test_ranking_agreement_is_pairwise_share_and_chance_for_ties():
    assert ranking_agreement(np.array([1, 3, 2]), np.array([1, 2, 3])) == pytest.approx(2 / 3)
    assert ranking_agreement(np.array([5, 5, 5]), np.array([1, 2, 3])) == 0.5


def test_ranking_consistency_and_compliance_hand_computed():
    # three models, final order a < b < c at step 3; step 1 reversed (0), step 2 one swap (2/3)
    matrix = pd.DataFrame({"a": [3, 1, 1], "b": [2, 3, 2], "c": [1, 2, 3]}, index=[1, 2, 3], dtype=float)
    assert ranking_consistency(matrix) == pytest.approx((0 + 2 / 3) / 2)
    # c above a at steps 2 and 3 of 3
    assert compliance(matrix, "c", "a") == pytest.approx(2 / 3)
    assert math.isnan(compliance(matrix, "c", "absent"))


def test_ranking_consistency_with_missing_checkpoint_uses_shared_steps():
    matrix = pd.DataFrame({"a": [3, 1, 1], "b": [2, 3, 2], "c": [1, np.nan, 3]}, index=[1, 2, 3], dtype=float)
    assert ranking_consistency(matrix) == pytest.approx(0.0)  # only step 1 is shared, and reversed


def test_ranking_consistency_single_model_is_undefined():
    assert math.isnan(ranking_consistency(pd.DataFrame({"a": [1.0, 2.0, 3.0]}, index=[1, 2, 3])))


# --- per-sample metrics and learnability -----------------------------------------------------


def sample_rows() -> pd.DataFrame:
    rows = []
    for step, gold_logprob in ((100, -3.0), (200, -2.0), (300, -1.0)):
        rows.append(
            {
                "model": "m", "step": step, "tokens": step * 1e6, "task": "mc", "doc_id": 0, "target": 0,
                "choice_logprobs": [gold_logprob, -2.0, -3.0], "choice_bytes": [1, 4, 1],
            }
        )
        rows.append(
            {
                "model": "m", "step": step, "tokens": step * 1e6, "task": "mc", "doc_id": 1, "target": 1,
                "choice_logprobs": [-1.0, -1.5], "choice_bytes": [2, 2],
            }
        )
    rows.append({"model": "m", "step": 100, "tokens": 1e8, "task": "gen", "doc_id": 0, "target": None,
                 "choice_logprobs": None, "choice_bytes": None})
    return pd.DataFrame(rows)


def test_per_sample_scores_hand_computed():
    scores = per_sample_scores(sample_rows())
    last = scores[(scores.step == 300) & (scores.doc_id == 0)].iloc[0]
    # logprobs [-1, -2, -3], bytes [1, 4, 1], gold 0
    assert last.sample_acc == 1.0
    assert last.sample_acc_norm == 0.0  # per byte: [-1, -0.5, -3] -> choice 1
    assert last.gold_margin == pytest.approx(-1 - (-2.5))
    assert last.gold_bits_per_byte == pytest.approx(1 / math.log(2))
    assert set(scores.task) == {"mc"}  # the generation row has no choices


def test_item_learnability_slope():
    items = item_learnability(sample_rows()).set_index("doc_id")
    # doc 0 margins: -3 - (-2.5), -2 - (-2.5), -1 - (-2.5) = -0.5, 0.5, 1.5 -> slope 1 per checkpoint
    assert items.loc[0, "slope"] == pytest.approx(1.0)
    assert items.loc[1, "slope"] == pytest.approx(0.0)
    by_log_step = item_learnability(sample_rows(), axis="log_step").set_index("doc_id")
    assert by_log_step.loc[0, "slope"] == pytest.approx(np.polyfit(np.log([100, 200, 300]), [-0.5, 0.5, 1.5], 1)[0])


def test_sweep_folder_with_samples_scores_the_alternative_metrics(tmp_path):
    metrics = long_table({"m": [0.3, 0.4, 0.5]}, task="mc", steps=[100, 200, 300])
    metrics.to_parquet(tmp_path / "metrics.parquet")
    sample_rows().to_parquet(tmp_path / "samples.parquet")
    report = score_path(tmp_path)
    assert {row.metric for row in report.tasks if row.task == "mc"} == {
        "acc", "sample_acc", "sample_acc_norm", "gold_margin", "gold_bits_per_byte",
    }
    bpb = next(row for row in report.tasks if row.metric == "gold_bits_per_byte")
    assert bpb.lower_is_better and bpb.monotonicity == 1.0  # bits per byte falls: negated, it rises


# --- input validation and the API ------------------------------------------------------------


def test_lower_is_better_metrics_are_negated():
    assert is_lower_better("word_perplexity") and is_lower_better("bits_per_byte") and not is_lower_better("acc")
    rows = long_table({"a": [30, 20, 15, 12, 11, 10, 9.5, 9], "b": [40, 30, 25, 20, 18, 16, 15, 14]}, metric="word_perplexity")
    report = score_results(rows, ScoringConfig(reference_pair=("a", "b")))
    task = report.tasks[0]
    assert task.monotonicity == 1.0 and task.compliance == 1.0 and task.ranking_consistency == 1.0


def test_validation_errors_are_clear():
    good = long_table({"a": [0.1, 0.2]})
    with pytest.raises(ScoringInputError, match="lacks column"):
        validate_metrics(good.drop(columns="metric"))
    with pytest.raises(ScoringInputError, match="empty"):
        validate_metrics(good.iloc[:0])
    with pytest.raises(ScoringInputError, match="duplicate|share"):
        validate_metrics(pd.concat([good, good]))
    with_nan = good.assign(value=[0.1, float("nan")])
    with pytest.raises(ScoringInputError, match="nan-policy drop"):
        validate_metrics(with_nan)
    assert len(validate_metrics(with_nan, nan_policy="drop")) == 1
    with pytest.raises(ScoringInputError, match="unknown task nope"):
        score_results(good, tasks=["nope"])


def test_single_model_scores_without_crashing():
    report = score_results(long_table({"only": [0.1 * i for i in range(1, 11)]}))
    task = report.tasks[0]
    assert task.signal_quality == pytest.approx((1.0 + 1.0) / 2)
    assert math.isnan(task.ranking_consistency) and math.isnan(task.snr) and math.isnan(task.score)
    assert any("single model" in note for note in report.notes)


def test_short_series_note_and_weighted_score():
    curves = {"big": [0.3, 0.4, 0.5, 0.6], "small": [0.2, 0.25, 0.3, 0.35]}
    report = score_results(long_table(curves), ScoringConfig(reference_pair=("big", "small")))
    task = report.tasks[0]
    assert math.isnan(task.signal_quality) and math.isnan(task.score)
    assert any("< 8" in note for note in task.notes)
    # without the signal-quality weight the score is defined: 0.5 * RC + 0.5 * CS = 1
    weights = ScoreWeights(signal_quality=0, ranking_consistency=0.5, compliance=0.5)
    report = score_results(long_table(curves), ScoringConfig(weights=weights, reference_pair=("big", "small")))
    assert report.tasks[0].score == pytest.approx(1.0)


def test_weights_parse():
    assert ScoreWeights.parse("0.5,0.1,0.4") == ScoreWeights()
    with pytest.raises(ValueError):
        ScoreWeights.parse("1,2")
    with pytest.raises(ValueError):
        ScoreWeights.parse("0,0,0")


# --- the commands on the organisers' data ----------------------------------------------------


@needs_e2lm_data
def test_score_cli_json_on_real_data():
    result = subprocess.run(
        [sys.executable, "-m", "e2lm_vllm.cli", "score", str(E2LM_JSON), "--e2lm-filter", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert len(payload["tasks"]) == 24 and len(payload["models"]) == 24 * 6
    assert set(payload["models"][0]) >= {"model", "task", "metric", "monotonicity", "autocorrelation", "signal_quality"}
    assert set(payload["tasks"][0]) >= {"task", "metric", "signal_quality", "ranking_consistency", "compliance", "snr", "score"}
    tasks = {row["task"]: row for row in payload["tasks"]}
    # Verified on the data: hellaswag rises smoothly for every model, gsm8k stays near 0 for the small ones.
    assert tasks["hellaswag"]["signal_quality"] > tasks["gsm8k"]["signal_quality"]
    assert payload["tasks"][0]["task"] == "hellaswag"
    assert tasks["hellaswag"]["signal_quality"] == pytest.approx(0.9907, abs=1e-4)
    assert payload["reference_pair"] == ["dense-3b-arch1", "dense-500m-arch1"]
    for row in payload["tasks"]:
        for key in ("signal_quality", "ranking_consistency", "compliance", "score"):
            assert 0.0 <= row[key] <= 1.0


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("model,step,task,value\na,1,t,0.5\n", [], "lacks column"),
        ("model,step,task,metric,value\n", [], "empty"),
        ("model,step,task,metric,value\na,1,t,acc,\n", [], "NaN"),
        ("model,step,task,metric,value\na,1,t,acc,0.5\n", ["--task", "nope"], "unknown task"),
        ("model,step,task,metric,value\na,1,t,acc,0.5\n", ["--weights", "1,2"], "weights"),
    ],
)
def test_score_cli_errors_exit_2_with_one_line(tmp_path, capsys, content, extra, message):
    path = tmp_path / "results.csv"
    path.write_text(content)
    assert main(["score", str(path), *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error and "Traceback" not in error


@needs_e2lm_data
def test_report_writes_plots_and_markdown(tmp_path):
    tasks = ["--task", "hellaswag", "--task", "gsm8k", "--task", "mmlu", "--task", "sciq"]
    assert main(["report", str(E2LM_JSON), "--e2lm-filter", *tasks, "-o", str(tmp_path)]) == 0
    markdown = (tmp_path / "report.md").read_text()
    assert "| hellaswag | score |" in markdown and "![Global score per task](summary.png)" in markdown
    assert "(curves-score.png)" in markdown
    for name in ("summary.png", "curves-score.png"):
        png = (tmp_path / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 20_000
    assert json.loads((tmp_path / "scores.json").read_text())["tasks"][0]["task"] == "hellaswag"


def test_report_on_a_sweep_folder_with_samples(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    long_table({"m": [0.3, 0.4, 0.5]}, task="mc", steps=[100, 200, 300]).to_parquet(sweep / "metrics.parquet")
    sample_rows().to_parquet(sweep / "samples.parquet")
    assert main(["report", str(sweep), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "item_learnability.csv").exists()
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "Most learnable items" in markdown and "single model" in markdown


def test_metric_selection_by_name_or_filter_label():
    acc = long_table({"a": [0.1, 0.2, 0.3], "b": [0.2, 0.3, 0.4]}, metric="exact_match")
    strict = acc.assign(filter="strict-match", value=acc["value"] / 2)
    table = pd.concat([acc, strict], ignore_index=True)
    assert {row.metric for row in score_results(table).tasks} == {"exact_match", "exact_match,strict-match"}
    assert [row.metric for row in score_results(table, metrics=["exact_match,strict-match"]).tasks] == ["exact_match,strict-match"]
    with pytest.raises(ScoringInputError, match="unknown metric"):
        score_results(table, metrics=["acc"])


def test_failed_cells_are_listed_by_kind_under_the_scores_and_in_the_report(tmp_path, capsys):
    """A failed cell is missing from the metrics; the score table and the report say so, by kind."""
    import pyarrow as pa

    from e2lm_vllm.results.schema import FAILURES_SCHEMA

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    long_table({"m": [0.3, 0.4, 0.5]}, task="mc", steps=[100, 200, 300]).to_parquet(sweep / "metrics.parquet")
    assert main(["score", str(sweep)]) == 0
    assert "Failed cells" not in capsys.readouterr().out
    failures = [
        {"model": "m", "checkpoint": "c400", "step": 400, "task": "mc", "kind": "non_finite", "attempts": 1,
         "error": "NonFiniteWeightsError: checkpoint c400 holds NaN in weight tensor w"},
        {"model": "m", "checkpoint": "c500", "step": 500, "task": "mc", "kind": "error", "attempts": 3,
         "error": "Traceback ...\nOSError: corrupt"},
    ]  # fmt: skip
    pa.Table.from_pylist(failures, schema=FAILURES_SCHEMA).to_pandas().to_parquet(sweep / "failures.parquet")
    assert main(["score", str(sweep)]) == 0
    assert "Failed cells (not in the scores above): 2 (error: 1, non_finite: 1)" in capsys.readouterr().out
    assert main(["report", str(sweep), "-o", str(tmp_path / "out")]) == 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Failures" in markdown
    assert "| m | 400 | mc | non_finite | NonFiniteWeightsError: checkpoint c400 holds NaN in weight tensor w |" in markdown
    assert "| m | 500 | mc | error | OSError: corrupt |" in markdown
