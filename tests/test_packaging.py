"""`pip install` of the wheel alone registers `--model e2lm_vllm` with the stock lm-eval CLI, and
carries the bundled sample tasks that `e2lm-vllm doctor` reads.

The project venv has the package installed editable, with the hook `make install` wrote: a venv made
from it would see both. So the throwaway venv sees the project's *dependencies* through a plain path
line (a `.pth` path line adds a directory to sys.path but runs none of the `.pth` files in it: not
the editable finder, not our hook), and the test first shows that neither `e2lm_vllm` nor the model
exists there, then installs the wheel and runs lm-eval's CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from e2lm_vllm.taskdata import SAMPLES_DIR

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
PTH_NAME = "e2lm_vllm_lm_eval.pth"
TASKS = REPO_ROOT / "tests" / "data" / "sweep_tasks"


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
    assert completed.returncode == 0, f"{command}\n{completed.stdout[-2000:]}\n{completed.stderr[-3000:]}"
    return completed


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """The tracked files only, so no stale build/ or egg-info of the work tree ends up in the wheel."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    copy = tmp_path_factory.mktemp("source")
    for name in files:
        if (REPO_ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, copy / name)
    return copy


def _bundled_samples() -> set[str]:
    """The sample tasks' files as a wheel names them."""
    return {str(p.relative_to(REPO_ROOT)) for p in SAMPLES_DIR.rglob("*") if p.is_file()}


def _build_wheel(source: str | Path, out: Path) -> Path:
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)])
    (wheel,) = out.glob("e2lm_vllm-*.whl")
    return wheel


def test_wheel_and_sdist_carry_the_hook_at_the_top_level_and_the_samples(source_copy, tmp_path):
    wheel = _build_wheel(source_copy, tmp_path / "wheel")
    sdist_dir = tmp_path / "sdist"
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(sdist_dir)!r})"],
         cwd=source_copy)  # fmt: skip
    (sdist,) = sdist_dir.glob("e2lm_vllm-*.tar.gz")
    from_sdist = _build_wheel(sdist, tmp_path / "from-sdist")  # what pip does for an sdist or a git URL
    hook = (REPO_ROOT / "e2lm_vllm" / PTH_NAME).read_text()
    for built in (wheel, from_sdist):
        with zipfile.ZipFile(built) as archive:
            assert _bundled_samples() - set(archive.namelist()) == set()
            assert archive.read(PTH_NAME).decode() == hook
            assert PTH_NAME in archive.read(next(n for n in archive.namelist() if n.endswith("RECORD"))).decode()


# Run from outside the repo with only the unpacked wheel (and the venv's dependencies) importable:
# the doctor's default include path, and lm-eval reading a sample task's documents through it.
INSTALLED_SAMPLES_PROBE = """
import json, e2lm_vllm
from lm_eval.tasks import TaskManager, get_task_dict
from e2lm_vllm.taskdata import include_path_for
include = include_path_for("samples")  # what `e2lm-vllm doctor` passes without --include-path
task = get_task_dict(["sample_arc_easy"], TaskManager(include_path=include))["sample_arc_easy"]
docs = list(task.test_docs())
print(json.dumps({"package": e2lm_vllm.__file__, "include": include, "docs": len(docs), "first": docs[0]["id"]}))
"""


def test_the_wheel_carries_the_samples_and_lm_eval_reads_them_installed(source_copy, tmp_path):
    wheel = _build_wheel(source_copy, tmp_path / "wheel")
    bundled = _bundled_samples()
    assert len(bundled) > 40 and any(name.endswith("_template_yaml") for name in bundled)
    installed = tmp_path / "installed"
    with zipfile.ZipFile(wheel) as archive:
        assert bundled - set(archive.namelist()) == set()
        archive.extractall(installed)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "E2LM_TASKS_CACHE")}
    env |= {"PYTHONPATH": str(installed), "E2LM_VLLM_HOME": str(tmp_path / "home"), "HF_DATASETS_OFFLINE": "1"}
    found = json.loads(_run([sys.executable, "-c", INSTALLED_SAMPLES_PROBE], env=env, cwd=elsewhere).stdout.splitlines()[-1])
    assert Path(found["package"]).is_relative_to(installed), found  # not this checkout
    assert Path(found["include"]).is_relative_to(tmp_path / "home"), found  # the user cache, not site-packages
    first = json.loads((SAMPLES_DIR / "data" / "arc" / "easy.test.jsonl").read_text().splitlines()[0])
    assert found["docs"] == 60 and found["first"] == first["id"], found


def test_pip_install_of_the_wheel_alone_registers_the_model(source_copy, tmp_path, smollm2_path):
    wheel = _build_wheel(source_copy, tmp_path / "wheel")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env |= {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    probe = "import importlib.util as u, lm_eval.api.registry as r; print(u.find_spec('e2lm_vllm') is not None, 'e2lm_vllm' in r.model_registry)"
    assert _run([str(python), "-c", probe], env=env, cwd=tmp_path).stdout.split() == ["False", "False"]

    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], env=env)
    assert (site / PTH_NAME).is_file()
    probe = "import e2lm_vllm, lm_eval.models, lm_eval.api.registry as r; print(e2lm_vllm.__file__, 'e2lm_vllm' in r.model_registry)"
    location, registered = _run([str(python), "-c", probe], env=env, cwd=tmp_path).stdout.split()
    assert Path(location).is_relative_to(site) and registered == "True"

    out = tmp_path / "results"
    command = [
        str(python), "-m", "lm_eval", "--model", "e2lm_vllm",
        "--model_args", f"pretrained={smollm2_path},backend=hf,dtype=float32",
        "--tasks", "sweep_arc_easy", "--include_path", str(TASKS), "--limit", "2", "--output_path", str(out),
    ]  # fmt: skip
    _run(command, env=env, cwd=tmp_path)
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert results["config"]["model"] == "e2lm_vllm" and "acc,none" in results["results"]["sweep_arc_easy"]

    _run([sys.executable, "-m", "pip", "--python", str(python), "uninstall", "-q", "-y", "e2lm-vllm"], env=env)
    assert not (site / PTH_NAME).exists()


def test_make_installs_hook_step_writes_the_same_file(tmp_path, monkeypatch):
    """`python -m e2lm_vllm.plugin install` (make install) and the wheel install the same hook."""
    from e2lm_vllm import plugin

    target = tmp_path / PTH_NAME
    monkeypatch.setattr(plugin, "_pth_path", lambda: target)
    assert plugin.main(["install"]) == 0
    assert target.read_text() == (REPO_ROOT / "e2lm_vllm" / PTH_NAME).read_text()
    assert plugin.main(["uninstall"]) == 0 and not target.exists()
