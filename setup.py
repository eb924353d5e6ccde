"""Everything is in pyproject.toml but one build step: the lm-eval import hook at the top of the wheel.

lm-eval 0.4.13 reads no plugin entry points; a `.pth` file in site-packages registers `e2lm_vllm`
(see e2lm_vllm/plugin.py). A wheel's top level is installed into site-packages, so copying the
package's `e2lm_vllm_lm_eval.pth` there makes `pip install` (wheel, sdist or git URL) alone enough
for `lm_eval --model e2lm_vllm`; `pip uninstall` removes it again. setuptools ships its own
`distutils-precedence.pth` the same way.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "e2lm_vllm_lm_eval.pth"


class BuildPyWithImportHook(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(str(Path("e2lm_vllm") / PTH_NAME), str(Path(self.build_lib) / PTH_NAME), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH_NAME)]


setup(cmdclass={"build_py": BuildPyWithImportHook})
