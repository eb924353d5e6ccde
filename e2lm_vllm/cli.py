"""`e2lm-vllm` command line: one sub-command per module, imported only when used.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help). Modules are imported lazily so `e2lm-vllm score`
# never pays for importing vLLM or torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("e2lm_vllm.models.cli", "prepare or locate the embedded real models (offline)"),
    "parity": ("e2lm_vllm.proof.parity", "compare e2lm_vllm with the same engine without prefix reuse, and with HF"),
    "doctor": ("e2lm_vllm.proof.doctor", "check this machine: platform, parity on bundled samples, a one-minute benchmark"),
    "ladder": ("e2lm_vllm.models.ladder", "write synthetic checkpoints from random init to real weights"),
    "sweep": ("e2lm_vllm.sweep.cli", "evaluate every checkpoint x task on a local Ray cluster"),
    "score": ("e2lm_vllm.quality.cli", "benchmark-quality metrics (E2LM signal quality, SNR, ...)"),
    "report": ("e2lm_vllm.quality.report", "plots and a markdown report of a results table"),
    "log": ("e2lm_vllm.sweep.log", "push a sweep folder's metrics, scores and plots into W&B, TensorBoard or MLflow"),
    "curriculum": ("e2lm_vllm.curriculum.cli", "build and validate the MMLU-Curriculum task"),
    "submission": ("e2lm_vllm.curriculum.submission", "package a task as an E2LM competition submission"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e2lm-vllm", description=__doc__.splitlines()[0])
    from e2lm_vllm import __version__

    parser.add_argument("--version", action="version", version=f"e2lm-vllm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help / version / the usage error
        parser.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    command_parser = argparse.ArgumentParser(prog=f"e2lm-vllm {name}", description=COMMANDS[name][1])
    module.add_arguments(command_parser)
    args = command_parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
