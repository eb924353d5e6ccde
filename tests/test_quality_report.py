"""The report and score commands: what they read, what they show when little is defined, backends."""

from __future__ import annotations

import collections
from pathlib import Path

import matplotlib.figure
import matplotlib.text
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from e2lm_vllm.cli import main
from e2lm_vllm.quality import samples as sample_scoring


def write_sweep(
    folder: Path,
    models: tuple[str, ...] = ("m",),
    steps: tuple[int, ...] = (0, 1000, 2000),
    tasks: tuple[str, ...] = ("arc", "piqa"),
    docs: int = 4,
    backends: dict[tuple[str, int, str], str] | None = None,
) -> Path:
    """A sweep folder as the sweep writes it: metrics, per-sample rows and (empty) failures, rising scores."""
    rng = np.random.default_rng(0)
    metric_rows, sample_rows = [], []
    for m_index, model in enumerate(models):
        for s_index, step in enumerate(steps):
            for task in tasks:
                skill = 0.1 * s_index + 0.05 * m_index
                backend = (backends or {}).get((model, step, task), "vllm")
                for metric, value in (("acc", 0.3 + skill), ("acc_norm", 0.32 + skill)):
                    metric_rows.append(
                        {"model": model, "checkpoint": f"{model}/step_{step}", "step": step, "tokens": np.nan, "task": task,
                         "metric": metric, "filter": "none", "value": value + rng.normal(0, 0.01), "backend": backend}
                    )  # fmt: skip
                for doc in range(docs):
                    gold = doc % 2
                    logprobs = rng.normal(-2.0, 0.5, size=3)
                    logprobs[gold] += skill * 3
                    sample_rows.append(
                        {"model": model, "checkpoint": f"{model}/step_{step}", "step": step, "tokens": np.nan, "task": task,
                         "doc_id": doc, "target": gold, "choice_logprobs": logprobs.tolist(), "choice_bytes": [5, 6, 7]}
                    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(metric_rows).to_parquet(folder / "metrics.parquet")
    pd.DataFrame(sample_rows).to_parquet(folder / "samples.parquet")
    failures = pd.DataFrame({"model": [], "checkpoint": [], "step": [], "task": [], "error": [], "kind": []})
    failures.astype({"step": "int64"}).to_parquet(folder / "failures.parquet")
    return folder


class Figures:
    """Every text drawn in each figure a report saves (titles, bar labels, footnotes), by file name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.texts: dict[str, list[str]] = {}
        savefig = matplotlib.figure.Figure.savefig

        def recording(figure, path, *args, **kwargs):
            texts = [text.get_text() for text in figure.findobj(matplotlib.text.Text) if text.get_visible()]
            self.texts[Path(str(path)).name] = [text for text in texts if text]
            return savefig(figure, path, *args, **kwargs)

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording)


def table_columns(markdown: str, heading: str) -> dict[str, list[str]]:
    """The cells of the first markdown table after ``heading``, by column."""
    lines = markdown.split(heading, 1)[1].strip().splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    rows = rows[: next((i for i, row in enumerate(rows) if i > 1 and len(row) != len(rows[0])), len(rows))]
    return {header: [row[i] for row in rows[2:]] for i, header in enumerate(rows[0])}


class Reads:
    """Counts Parquet reads (pyarrow.parquet.read_table, which pandas.read_parquet calls) and per-sample scorings."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.files: collections.Counter[str] = collections.Counter()
        self.sample_scorings = 0
        read_table, validate = pq.read_table, sample_scoring.validate_samples

        def counting_read(source, *args, **kwargs):
            self.files[Path(str(source)).name] += 1
            return read_table(source, *args, **kwargs)

        def counting_validate(samples):
            # per_sample_scores starts by validating its input: one call per scoring of the samples.
            self.sample_scorings += 1
            return validate(samples)

        monkeypatch.setattr(pq, "read_table", counting_read)
        monkeypatch.setattr(sample_scoring, "validate_samples", counting_validate)


# --- Issue 19 item 9: one read of each file, one scoring of the samples per report ------------------


def test_report_reads_each_parquet_once_and_scores_samples_once(tmp_path, monkeypatch):
    sweep = write_sweep(tmp_path / "sweep")
    reads = Reads(monkeypatch)
    assert main(["report", str(sweep), "-o", str(tmp_path / "out")]) == 0
    assert dict(reads.files) == {"metrics.parquet": 1, "samples.parquet": 1, "failures.parquet": 1}
    assert reads.sample_scorings == 1  # was 3: score, table and learnability each scored every sample
    assert (tmp_path / "out" / "item_learnability.csv").is_file()


def test_score_reads_each_parquet_once(tmp_path, monkeypatch, capsys):
    sweep = write_sweep(tmp_path / "sweep")
    reads = Reads(monkeypatch)
    assert main(["score", str(sweep)]) == 0
    assert dict(reads.files) == {"metrics.parquet": 1, "samples.parquet": 1, "failures.parquet": 1}
    assert reads.sample_scorings == 1
    assert "gold_margin" in capsys.readouterr().out


def test_one_call_rebuilds_a_report_as_the_watcher_needs(tmp_path, monkeypatch):
    from e2lm_vllm.quality.cli import render_text
    from e2lm_vllm.quality.failures import failure_line
    from e2lm_vllm.quality.report import write_results_report

    sweep = write_sweep(tmp_path / "sweep")
    reads = Reads(monkeypatch)
    scored = write_results_report(sweep, tmp_path / "out")
    text = render_text(scored.report, failure_line(scored.failures))
    assert dict(reads.files) == {"metrics.parquet": 1, "samples.parquet": 1, "failures.parquet": 1}
    assert reads.sample_scorings == 1
    assert "arc" in text and (tmp_path / "out" / "report.md").is_file() and scored.learnability is not None


# --- Issue 19 item 3: a visible line when cells were scored by another backend ---------------------


def test_mixed_backends_are_named_near_the_top_of_score_and_report(tmp_path, capsys):
    # Three of twelve cells (model, step, task) fell back to lm-eval's HF model.
    hf_cells = {("m", 1000, "arc"): "hf", ("m", 2000, "arc"): "hf", ("m", 2000, "piqa"): "hf"}
    sweep = write_sweep(tmp_path / "sweep", steps=(0, 1000, 2000, 3000), backends=hf_cells)
    assert main(["score", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("backend: hf for 3 cells, vllm for 5 cells")
    assert main(["report", str(sweep), "-o", str(tmp_path / "out")]) == 0
    top = (tmp_path / "out" / "report.md").read_text().split("## How to read this")[0]
    assert "backend: hf for 3 cells, vllm for 5 cells" in top
    assert main(["score", str(sweep), "--json"]) == 0
    assert '"backends": {\n  "hf": 3,\n  "vllm": 5\n }' in capsys.readouterr().out


def test_all_hf_is_named_and_all_vllm_is_not(tmp_path, capsys):
    every_cell = {("m", step, task): "hf" for step in (0, 1000, 2000) for task in ("arc", "piqa")}
    assert main(["score", str(write_sweep(tmp_path / "hf", backends=every_cell))]) == 0
    assert capsys.readouterr().out.startswith("backend: hf for 6 cells (every cell was scored by lm-eval's HF model")
    assert main(["report", str(write_sweep(tmp_path / "vllm")), "-o", str(tmp_path / "out")]) == 0
    assert "backend:" not in capsys.readouterr().out
    assert "backend:" not in (tmp_path / "out" / "report.md").read_text()


# --- Issue 23 item 2: no chart, title or table column that is all n/a -----------------------------


def test_demo_sized_sweep_shows_what_is_defined_and_what_would_define_the_rest(tmp_path, monkeypatch, capsys):
    # The demo's shape: one model, three checkpoints, no reference pair.
    sweep = write_sweep(tmp_path / "sweep", tasks=("sample_arc_easy", "sample_piqa", "sample_hellaswag"))
    figures = Figures(monkeypatch)
    assert main(["report", str(sweep), "-o", str(tmp_path / "out")]) == 0
    assert set(figures.texts) >= {"summary.png", "curves-acc.png", "curves-gold_margin.png"}
    for name, texts in figures.texts.items():
        assert not [text for text in texts if "n/a" in text], name
    summary = figures.texts["summary.png"]
    assert any(text.startswith("monotonicity") for text in summary) and any(text.startswith("TV-I") for text in summary)
    assert any(text.startswith("noise") for text in summary)
    footnote = " ".join(text.replace("\n", " ") for text in summary if text.startswith("Not defined"))
    assert "signal quality needs >= 8 checkpoints per model" in footnote
    assert "compliance needs >= 2 models and a reference pair" in footnote
    assert "sample_arc_easy\nmono 1.00" in figures.texts["curves-acc.png"]  # the panel title: defined scores only

    markdown = (tmp_path / "out" / "report.md").read_text()
    top = markdown.split("## Scores per task")[0]
    assert "signal quality needs >= 8 checkpoints per model" in top and "![" in top
    for heading in ("## Scores per task, best first", "## Monotonicity per model"):
        columns = table_columns(markdown, heading)
        assert columns, heading
        assert not [name for name, cells in columns.items() if all(cell == "n/a" for cell in cells)], heading

    capsys.readouterr()
    assert main(["score", str(sweep)]) == 0
    table = capsys.readouterr().out.split("\n\n")[0].splitlines()
    assert table[1].startswith("Not defined by these results:")
    assert "n/a" not in "\n".join(table[2:]) and table[2].split() == ["task", "metric", "mono", "TV-I"]


def test_one_checkpoint_draws_no_summary_chart_and_says_why(tmp_path, monkeypatch):
    sweep = write_sweep(tmp_path / "sweep", steps=(0,))
    figures = Figures(monkeypatch)
    assert main(["report", str(sweep), "-o", str(tmp_path / "out")]) == 0
    assert "summary.png" not in figures.texts and not (tmp_path / "out" / "summary.png").exists()
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "summary.png" not in markdown
    assert "monotonicity and total variation need >= 2 checkpoints per model" in markdown
    for name, texts in figures.texts.items():
        assert not [text for text in texts if "n/a" in text], name


def test_two_models_without_signal_quality_chart_their_defined_scores(tmp_path, monkeypatch):
    # Two models, four checkpoints, a reference pair: RC, CS and SNR are defined, SQ (and so the score) is not.
    sweep = write_sweep(tmp_path / "sweep", models=("big", "small"), steps=(0, 1000, 2000, 3000))
    figures = Figures(monkeypatch)
    assert main(["report", str(sweep), "--reference-pair", "small,big", "-o", str(tmp_path / "out")]) == 0
    titles = [text.split("(")[0].strip() for text in figures.texts["summary.png"]]
    for panel in ("ranking consistency", "compliance", "monotonicity", "SNR", "TV-I"):
        assert panel in titles, panel
    assert "signal quality" not in titles
    assert any(text.startswith("RC ") or "  RC " in text for text in figures.texts["curves-acc.png"])
