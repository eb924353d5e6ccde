"""The README's Ray Jobs block ("A whole training run") run as written: on a fresh machine, and after a local sweep.

The block is read from README.md at test time: the fenced bash block right after the comment
`<!-- tests/test_readme_ray.py runs this block ... -->`. It runs as one `bash -euo pipefail` script in
a copy of this checkout (its tracked and untracked, not ignored, files: what `--working-dir .`
uploads), with a temporary HOME and Ray's auth variables unset. The mapping from README to what
runs is only this, and each rule must apply once:

- `ray start --head` gets options appended: its own --temp-dir, ports, 127.0.0.1 and 2 CPUs, so
  that it never meets another Ray on this shared machine (`ray stop` would kill them all; the test
  kills exactly this head's processes).
- The copy's `ray_jobs/examples/e2lm_dense.yaml`, which the block names, is that file with its hub
  checkpoints, tasks and engine replaced by the 3-rung tiny ladder of conftest.py, one bundled
  4-doc task at `limit: 1`, and lm-eval's `hf` model (the hub is unreachable here; a vLLM engine
  start is a minute on 2 cores). Its other fields (output, max_attempts, num_fewshot, token schedule)
  stay. The README's line itself runs unchanged.
- Environment: RAY_API_SERVER_ADDRESS points `ray job submit` (no --address in the block) at this
  head; PATH has the venv first (the block's "with .venv/bin first on PATH"); PYTHONPATH is the copy,
  so that `e2lm-vllm` imports the copy as an editable install of it would; HF offline.

HOME states: empty (a fresh machine), and ~/.ray/auth_token written by a local `ray.init()`, which
is what `make demo`'s local sweep does first. In the second state the README before issue 22
failed at `ray job submit` (AuthenticationError: Missing authentication token).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from test_bad_inputs import _doc_rows
from test_sweep_ray import _free_port, _stop_cluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MARKER = "<!-- tests/test_readme_ray.py runs this block"
EXAMPLE = "ray_jobs/examples/e2lm_dense.yaml"
OUTPUT = "results/e2lm_dense"
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")


def readme_block() -> str:
    """The fenced bash block right after the marker comment in README.md."""
    text = (REPO / "README.md").read_text()
    assert MARKER in text, f"README.md lost the comment {MARKER!r} that marks the Ray block this test runs"
    match = re.match(r"[^\n]*\n```bash\n(.*?)\n```", text[text.index(MARKER) :], re.S)
    assert match, "the marker comment must be directly followed by a ```bash block"
    return match.group(1)


def head_options(temp_dir: str, port: int, dashboard_port: int) -> list[str]:
    return [
        f"--port={port}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp_dir}",
        f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
    ]  # fmt: skip


def mapped_script(block: str, options: list[str]) -> str:
    script, starts = re.subn(r"^ray start --head\b", lambda m: f"{m.group(0)} {' '.join(options)}", block, flags=re.M)
    assert starts == 1, f"expected one `ray start --head` line in the README block, found {starts}"
    assert len(re.findall(r"^ray job submit\b.*" + re.escape(EXAMPLE), block, re.M)) == 1, block
    return "set -euo pipefail\n" + script


def checkout_copy(folder: Path, ladder: list[Path]) -> Path:
    """This checkout as `--working-dir .` sees it, with the E2LM example config made local and tiny."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file() and not source.is_symlink():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    config = yaml.safe_load((REPO / EXAMPLE).read_text())
    family = config["models"][0]
    config["models"] = [{**family, "checkpoints": {"paths": [str(path) for path in ladder]}}]
    config.update(tasks=["sweep_arc_easy"], include_paths=["tests/data/sweep_tasks"], limit=1)
    config["engine"] = {"lm": "hf", "extra": {"dtype": "float32"}}
    (folder / EXAMPLE).write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def environment(home: Path, checkout: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in AUTH_VARIABLES}
    return {
        **env, "HOME": str(home), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": str(checkout),
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra,
    }  # fmt: skip


def local_ray_init(env: dict[str, str]) -> None:
    """What a local `e2lm-vllm sweep` does first: a new local Ray, which writes ~/.ray/auth_token."""
    temp_dir = tempfile.mkdtemp(prefix="e2lm-rinit-", dir="/tmp")
    code = (
        "import ray; ray.init(address='local', include_dashboard=False, num_cpus=1, "
        f"_temp_dir={temp_dir!r}); ray.shutdown()"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module", params=["fresh-machine", "after-local-ray-init"])
def readme_run(request, tiny_ladder_dirs, tmp_path_factory):
    """The README block run in one HOME state; yields while its head still runs."""
    home = tmp_path_factory.mktemp(f"home-{request.param}")
    checkout = checkout_copy(tmp_path_factory.mktemp(f"checkout-{request.param}"), tiny_ladder_dirs)
    temp_dir = tempfile.mkdtemp(prefix="e2lm-readme-", dir="/tmp")  # short: Ray's socket paths are length-limited
    port, dashboard_port = _free_port(), _free_port()
    env = environment(home, checkout, RAY_API_SERVER_ADDRESS=f"http://127.0.0.1:{dashboard_port}")
    if request.param == "after-local-ray-init":
        local_ray_init(env)
        assert (home / ".ray" / "auth_token").is_file(), "a local ray.init() no longer writes ~/.ray/auth_token"
    script = mapped_script(readme_block(), head_options(temp_dir, port, dashboard_port))
    try:
        run = subprocess.run(["bash", "-c", script], cwd=checkout, env=env, capture_output=True, text=True, timeout=600)
        yield SimpleNamespace(state=request.param, run=run, home=home, checkout=checkout, port=port)
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_the_readme_ray_block_runs_as_written(readme_run, tiny_ladder_dirs):
    run = readme_run.run
    assert run.returncode == 0, f"{readme_run.state}: the README's Ray block failed:\n{(run.stdout + run.stderr)[-4000:]}"
    output = readme_run.checkout / OUTPUT
    metrics = pd.read_parquet(output / "metrics.parquet")
    assert sorted(metrics.checkpoint.unique()) == sorted(str(path) for path in tiny_ladder_dirs)
    assert (metrics.backend == "hf").all() and (metrics.n_samples == 1).all()
    assert (output / "report" / "report.md").is_file()


@pytest.mark.parametrize("readme_run", ["after-local-ray-init"], indirect=True)
def test_a_sweep_driver_without_the_auth_mode_names_the_fix(readme_run, tiny_ladder_dirs, tmp_path):
    """`ray_jobs/sweep.py --address` outside a job, RAY_AUTH_MODE unset, on the README's head (token auth)."""
    assert readme_run.run.returncode == 0, (readme_run.run.stdout + readme_run.run.stderr)[-3000:]
    address = f"127.0.0.1:{readme_run.port}"
    command = [
        "python", "ray_jobs/sweep.py", "--address", address, "--checkpoints", str(tiny_ladder_dirs[0]), "--tasks",
        "sweep_arc_easy", "--include-path", "tests/data/sweep_tasks", "--limit", "1", "--lm", "hf",
        "--output", str(tmp_path / "out"), "--no-progress",
    ]  # fmt: skip
    env = environment(readme_run.home, readme_run.checkout)
    done = subprocess.run(command, cwd=readme_run.checkout, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, (done.stdout + done.stderr)[-3000:]
    message = done.stderr.strip().splitlines()[-1].replace(address, "HEAD:6379").replace(str(readme_run.home), "DIR")
    assert message == f"e2lm-vllm sweep: {_doc_rows()['ray-auth-mode-unset'][1]}"
