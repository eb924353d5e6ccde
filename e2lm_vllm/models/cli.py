"""`e2lm-vllm models {list,prepare,path}`: the embedded real models, offline.

``path`` prints only the folder on stdout (logs go to stderr), so
``$(e2lm-vllm models path smollm2-135m)`` can be used as a model argument.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from e2lm_vllm.models.registry import EMBEDDED_MODELS, ModelPackageMissingError, UnknownModelError
from e2lm_vllm.offline import set_offline_defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="list the embedded models and whether they are prepared")
    prepare = actions.add_parser("prepare", help="convert a model's GGUF into a float32 HF folder")
    prepare.add_argument("name", help="model name (see `models list`)")
    prepare.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    path = actions.add_parser("path", help="print the prepared folder (preparing it first if needed)")
    path.add_argument("name", help="model name (see `models list`)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    set_offline_defaults(datasets=False)
    from e2lm_vllm.models import prepare

    try:
        if args.action == "list":
            return _list(prepare)
        # Anything a library prints while converting must not end up in `$(... models path ...)`.
        with contextlib.redirect_stdout(sys.stderr):
            folder = prepare.prepare_model(args.name, force=getattr(args, "force", False))
        print(folder)
        return 0
    except (UnknownModelError, ModelPackageMissingError) as error:
        print(f"e2lm-vllm models: {error}", file=sys.stderr)
        return 2


def _list(prepare) -> int:
    root = prepare.models_dir()
    for model in EMBEDDED_MODELS.values():
        folder = root / model.name
        if model.unsupported_reason:
            state = f"unsupported: {model.unsupported_reason}"
        elif prepare.read_marker(folder) is not None:
            state = f"prepared at {folder}"
        else:
            state = "not prepared"
        print(f"{model.name}\t{model.architecture}\t{state}\t[{model.license}]")
    return 0
