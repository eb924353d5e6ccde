"""`e2lm-vllm submission`: package a curriculum task as an E2LM competition submission (a zip).

    export HF_TOKEN=hf_...      # read access to the dataset; never on the command line
    e2lm-vllm submission --task-dir tasks/mmlu_curriculum --name NAME --metric acc \\
        --hf-dataset USER/DATASET -o submission.zip

The zip holds:

- ``evaluation.patch``: a ``git diff`` that adds the task under ``lm_eval/tasks/<NAME>/`` of the
  competition's lm-eval fork (based on lm-eval 0.4.9): the task folder's YAML re-rendered with
  the group name NAME and ``dataset_path: USER/DATASET``, plus a README. Pure YAML, no Python.
- ``metadata.yaml``: ``task_name`` (NAME), ``task_metric``, ``hf_token`` (from ``$HF_TOKEN``).

Upload the dataset first: ``huggingface-cli upload USER/DATASET tasks/mmlu_curriculum/data
--repo-type dataset`` (the folder is an HF dataset repository with one config per subject).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from e2lm_vllm.curriculum.writer import Manifest, task_yamls

TASK_NAME = re.compile(r"^[a-z][a-z0-9_]{2,63}$")
HF_DATASET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
TASK_METRICS = ("acc", "acc_norm")
LM_EVAL_TASKS_DIR = "lm_eval/tasks"


class SubmissionError(ValueError):
    """Bad input for a submission; the message says what was expected."""


def hf_token_from_env() -> str:
    token = os.environ.get("HF_TOKEN", "").strip()
    if not token:
        raise SubmissionError(
            "HF_TOKEN is not set: export HF_TOKEN=<a Hugging Face token that can read the dataset>; "
            "it is read from the environment only and written into metadata.yaml"
        )
    return token


def task_readme(manifest: Manifest, name: str, hf_dataset: str) -> str:
    tiers = "\n".join(
        f"- `{name}_{tier.name}` ({tier.n_items} items): {', '.join(tier.subjects)}" for tier in manifest.tiers
    )
    return (
        f"# {name}\n\n"
        f"MMLU-Curriculum: {manifest.n_items} MMLU test questions, chosen and tiered by how small-model "
        "checkpoints learn them, asked in cloze form (the model scores each full answer text after "
        "`Question: ...\\nAnswer:`; no letters). Built with e2lm-vllm (`e2lm-vllm curriculum build`).\n\n"
        f"Dataset: [`{hf_dataset}`](https://huggingface.co/datasets/{hf_dataset}), one config per subject "
        "(MMLU, MIT licence).\n\n"
        f"Group `{name}` (acc, acc_norm: mean over items) with one subgroup per tier, easiest first:\n\n{tiers}\n\n"
        f"Selection hold-out: {manifest.hold_out}\n\n"
        "## Citation\n\nHendrycks et al., Measuring Massive Multitask Language Understanding, ICLR 2021.\n"
    )


def submission_files(task_dir: str | Path, name: str, hf_dataset: str) -> dict[str, str]:
    """Path inside the lm-eval repository -> text, of every file the patch adds."""
    manifest = Manifest.read(task_dir)
    files = task_yamls(manifest, dataset_path=hf_dataset, name=name)
    files["README.md"] = task_readme(manifest, name, hf_dataset)
    return {f"{LM_EVAL_TASKS_DIR}/{name}/{file_name}": text for file_name, text in sorted(files.items())}


def git_patch(files: dict[str, str]) -> str:
    """A ``git diff`` adding ``files`` (paths relative to the repository root), made by git itself."""
    with tempfile.TemporaryDirectory(prefix="e2lm-submission-") as tmp:
        root = Path(tmp)
        git = ["git", "-C", str(root), "-c", "user.name=e2lm-vllm", "-c", "user.email=e2lm-vllm@localhost", "-c", "core.autocrlf=false"]
        subprocess.run([*git, "init", "-q"], check=True)
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        subprocess.run([*git, "add", "--", *files], check=True)
        diff = subprocess.run([*git, "diff", "--cached", "--no-color", "--no-ext-diff", "--full-index"], check=True, capture_output=True, text=True)
        return diff.stdout


def metadata_yaml(name: str, metric: str, token: str) -> str:
    return yaml.safe_dump({"task_name": name, "task_metric": metric, "hf_token": token}, sort_keys=False)


def write_private_zip(output: Path, members: dict[str, str]) -> None:
    """Write the zip atomically, readable by its owner only (0600, whatever the umask).

    The submission holds the HF token (``metadata.yaml``): created 0600, never wider even for a moment.
    """
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a killed run may have a wider mode: created afresh below
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle, zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, text in members.items():
                archive.writestr(name, text)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_submission(task_dir: str | Path, name: str, metric: str, hf_dataset: str, output: str | Path) -> Path:
    """Check the inputs, then write the zip atomically; returns its path."""
    if not TASK_NAME.match(name):
        raise SubmissionError(f"--name {name!r}: expected 3-64 characters of a-z, 0-9 and _, starting with a letter")
    if metric not in TASK_METRICS:
        raise SubmissionError(f"--metric {metric!r}: expected one of {', '.join(TASK_METRICS)} (the group's metrics)")
    if not HF_DATASET_ID.match(hf_dataset):
        raise SubmissionError(f"--hf-dataset {hf_dataset!r}: expected an HF dataset id USER/DATASET")
    token = hf_token_from_env()
    patch = git_patch(submission_files(task_dir, name, hf_dataset))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_private_zip(output, {"evaluation.patch": patch, "metadata.yaml": metadata_yaml(name, metric, token)})
    return output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task-dir", required=True, help="task folder written by `e2lm-vllm curriculum build`")
    parser.add_argument("--name", required=True, help="task (group) name in the competition's lm-eval, e.g. mmlu_curriculum")
    parser.add_argument("--metric", default="acc", help="metric the organisers read (acc or acc_norm; default acc)")
    parser.add_argument("--hf-dataset", required=True, metavar="USER/DATASET", help="HF dataset id holding the uploaded data/ folder")
    parser.add_argument("-o", "--output", default="submission.zip", help="zip to write (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    try:
        path = write_submission(args.task_dir, args.name, args.metric, args.hf_dataset, args.output)
    except (SubmissionError, FileNotFoundError) as error:
        print(f"e2lm-vllm submission: error: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"e2lm-vllm submission: error: git failed ({error}); git is needed to write the patch", file=sys.stderr)
        return 2
    print(f"wrote {path}: evaluation.patch (adds {LM_EVAL_TASKS_DIR}/{args.name}/), metadata.yaml")
    return 0
