"""Make `lm_eval --model e2lm_vllm` work with the stock lm-eval CLI, without patching lm-eval.

lm-eval 0.4.13 reads no plugin entry points (the `lm_eval.models` group declared in pyproject is
for the upstream version that will). Until then a one-line `.pth` file in site-packages installs
an import hook: right after lm-eval imports its own `lm_eval.models` (which registers its built-in
models lazily), we register `e2lm_vllm` the same lazy way. Nothing is imported before lm-eval
itself is, and vLLM is imported only when the model is actually built.

The wheel carries that `.pth` at its top level (setup.py), so `pip install` alone sets it up; an
editable install has no such step, so `make install` writes the same file.

    python -m e2lm_vllm.plugin install     # done by `make install`
    python -m e2lm_vllm.plugin uninstall
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import sysconfig
from pathlib import Path

MODEL_NAME = "e2lm_vllm"
MODEL_TARGET = "e2lm_vllm.lm:E2LMVLLM"
HOOKED_MODULE = "lm_eval.models"
PTH_NAME = "e2lm_vllm_lm_eval.pth"


def register() -> None:
    """Register `e2lm_vllm` in lm-eval's model registry as a lazy placeholder."""
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


class _RegisterAfterExec(importlib.abc.Loader):
    def __init__(self, wrapped: importlib.abc.Loader):
        self._wrapped = wrapped

    def create_module(self, spec):  # noqa: ANN001 - importlib protocol
        return self._wrapped.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: ANN001
        self._wrapped.exec_module(module)
        register()


class _LmEvalModelsFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # noqa: ANN001
        if fullname != HOOKED_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def install_import_hook() -> None:
    """Called from the `.pth` file at interpreter start: cheap, imports nothing of lm-eval."""
    if HOOKED_MODULE in sys.modules:
        register()
    elif not any(isinstance(finder, _LmEvalModelsFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LmEvalModelsFinder())


def _pth_path() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def main(argv: list[str] | None = None) -> int:
    action = (argv if argv is not None else sys.argv[1:]) or ["install"]
    path = _pth_path()
    if action[0] == "install":
        path.write_text((Path(__file__).with_name(PTH_NAME)).read_text())
        print(f"lm-eval plugin hook installed: {path}")
    elif action[0] == "uninstall":
        path.unlink(missing_ok=True)
        print(f"lm-eval plugin hook removed: {path}")
    else:
        print("usage: python -m e2lm_vllm.plugin [install|uninstall]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
