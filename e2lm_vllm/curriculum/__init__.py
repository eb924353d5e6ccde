"""The MMLU-Curriculum task: item difficulty from a sweep's samples, selection, writer, validator, submission.

May import sweep, quality, models, taskdata, results and the top-level modules; no module imports it (the CLI runs it by name)."""
