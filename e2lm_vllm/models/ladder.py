"""`e2lm-vllm ladder`: synthetic checkpoints that move from a seeded random init to real weights.

Offline stand-in for a training run, so a sweep has something whose scores rise with step.
Rung ``k`` of ``N`` holds ``lerp(random_init, real, alpha_k)``. Rung 0 is the random init
(alpha 0) and the last rung is the real weights bit for bit (alpha 1); in between the *gap*
``1 - alpha`` shrinks geometrically from ``first_gap`` to ``last_gap``::

    gap_k = first_gap * (last_gap / first_gap) ** ((k - 1) / (N - 3))    for k = 1 .. N-2

A ladder built with ``reaches_real=False`` (``--no-real``) stands for a weaker training run of the
same model: rungs 1 .. N-1 all shrink the gap geometrically from ``first_gap`` to ``last_gap`` and no
rung holds the real weights, so at every rung it is behind a default ladder with smaller gaps. The
demo pairs the two as a reference pair for compliance.

Why geometric and not linear: a blend of a random and a trained network stays at chance until the
gap is small and reaches the real model's accuracy only at a smaller one (docs/measurements.md#ladders,
scripts/ladder_accuracy.py), so linear spacing would put the whole rise in the last rung; geometric
gaps spread it over the ladder, like a loss curve that is linear in log steps.

Step and token labels: ``step = k * step_interval`` and ``tokens = step * tokens_per_step``,
by default 1000 steps per rung and 1024 sequences x 4096 tokens per step. Every config.json carries
``"e2lm": {"synthetic": true, "source", "step", "tokens", "alpha", "seed", ...}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from e2lm_vllm.atomic import write_text_atomic
from e2lm_vllm.offline import set_offline_defaults

log = logging.getLogger(__name__)

DEFAULT_STEP_INTERVAL = 1000
DEFAULT_TOKENS_PER_STEP = 1024 * 4096  # global batch of 1024 sequences x 4096 tokens
DEFAULT_FIRST_GAP = 0.2  # 1 - alpha of rung 1: still near chance
DEFAULT_LAST_GAP = 0.02  # 1 - alpha of the last synthetic rung: about the real accuracy
MANIFEST_NAME = "ladder.json"
# Files of the source folder that are not tokenizer/generation data and so are not copied.
_WEIGHT_FILES = ("config.json", ".e2lm-prepared.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass(frozen=True)
class Rung:
    """What one synthetic checkpoint is; stored as the ``e2lm`` section of its config.json."""

    synthetic: bool
    source: str
    step: int
    tokens: int
    alpha: float
    seed: int
    rung: int
    rungs: int
    first_gap: float
    last_gap: float
    reaches_real: bool = True

    @property
    def folder_name(self) -> str:
        return f"step_{self.step:06d}"


def alpha_schedule(
    steps: int, first_gap: float = DEFAULT_FIRST_GAP, last_gap: float = DEFAULT_LAST_GAP, reaches_real: bool = True
) -> list[float]:
    """Blend weight per rung: 0 for the random init, exactly 1 for the real weights (unless not ``reaches_real``)."""
    if steps < 2:
        raise ValueError(f"a ladder needs at least 2 steps (random init and real weights), got {steps}")
    if not 0 < last_gap <= first_gap < 1:
        raise ValueError(f"expected 0 < last_gap <= first_gap < 1, got first_gap={first_gap} last_gap={last_gap}")
    middle = steps - 2 if reaches_real else steps - 1
    gaps = [first_gap * (last_gap / first_gap) ** (i / max(middle - 1, 1)) for i in range(middle)]
    return [0.0] + [1.0 - gap for gap in gaps] + ([1.0] if reaches_real else [])


def plan_ladder(
    source: str,
    steps: int,
    seed: int = 0,
    first_gap: float = DEFAULT_FIRST_GAP,
    last_gap: float = DEFAULT_LAST_GAP,
    step_interval: int = DEFAULT_STEP_INTERVAL,
    tokens_per_step: int = DEFAULT_TOKENS_PER_STEP,
    reaches_real: bool = True,
) -> list[Rung]:
    if step_interval < 1 or tokens_per_step < 1:
        raise ValueError("step_interval and tokens_per_step must be positive integers")
    return [
        Rung(True, source, k * step_interval, k * step_interval * tokens_per_step, alpha, seed, k, steps,
             first_gap, last_gap, reaches_real)
        for k, alpha in enumerate(alpha_schedule(steps, first_gap, last_gap, reaches_real))
    ]


def resolve_source(source: str | os.PathLike[str]) -> Path:
    """An embedded model name (prepared on demand) or a path to an HF folder."""
    from e2lm_vllm.models.registry import EMBEDDED_MODELS

    if str(source) in EMBEDDED_MODELS:
        from e2lm_vllm.models.prepare import prepare_model

        return prepare_model(str(source))
    folder = Path(source)
    if not (folder / "config.json").is_file():
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise ValueError(f"--from {source!r}: expected an embedded model ({known}) or an HF folder with config.json")
    return folder


def _existing_rung(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("e2lm")
    except (OSError, ValueError):
        return None


def write_ladder(
    source: str | os.PathLike[str],
    steps: int,
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    first_gap: float = DEFAULT_FIRST_GAP,
    last_gap: float = DEFAULT_LAST_GAP,
    step_interval: int = DEFAULT_STEP_INTERVAL,
    tokens_per_step: int = DEFAULT_TOKENS_PER_STEP,
    force: bool = False,
    reaches_real: bool = True,
) -> list[Path]:
    """Write ``steps`` checkpoint folders under ``out_dir``; return them in step order.

    Existing rungs with the same recipe are kept (unless ``force``); one written with another
    recipe is an error, since mixing two ladders in one folder would make a meaningless curve.
    """
    source_name = str(source)
    plan = plan_ladder(source_name, steps, seed, first_gap, last_gap, step_interval, tokens_per_step, reaches_real)
    source_dir = resolve_source(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    todo: list[Rung] = []
    for rung in plan:
        existing = _existing_rung(out / rung.folder_name)
        if existing is None or force:
            todo.append(rung)
        elif {"reaches_real": True, **existing} != asdict(rung):  # rungs written before the field reached the real weights
            raise ValueError(
                f"{out / rung.folder_name} holds another ladder ({existing}); use another -o or --force"
            )
    if todo:
        _write_rungs(source_dir, todo, out, seed)
    _write_manifest(out, plan)
    return [out / rung.folder_name for rung in plan]


def _write_rungs(source_dir: Path, rungs: list[Rung], out: Path, seed: int) -> None:
    import torch
    from tqdm import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM

    log.info("loading real weights from %s", source_dir)
    model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32)
    real = {name: param.detach().clone() for name, param in model.named_parameters()}
    # HF's own init for this architecture (normal(0, initializer_range) matrices, unit norms), seeded:
    # the same seed gives the same rung 0 on any machine.
    config = AutoConfig.from_pretrained(source_dir)
    torch.manual_seed(seed)
    random_init = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    init = dict(random_init.named_parameters())
    missing = sorted(set(real) - set(init))
    if missing:
        raise RuntimeError(f"random init lacks parameters of the real model: {missing[:5]}")

    for rung in tqdm(rungs, desc="ladder rungs", unit="ckpt", file=sys.stderr):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if rung.alpha == 1.0:
                    param.copy_(real[name])  # bit-exact real weights on the last rung
                else:
                    param.copy_(torch.lerp(init[name].detach(), real[name], rung.alpha))
        model.config.e2lm = asdict(rung)
        save_atomically(model, source_dir, out, rung.folder_name)
    del model.config.e2lm


def save_atomically(model, source_dir: Path, out: Path, folder_name: str) -> None:
    """Write the rung into a work folder beside its target and move it in with os.replace."""
    work = Path(tempfile.mkdtemp(prefix=f".{folder_name}.tmp-", dir=out))
    try:
        staged = work / folder_name
        model.save_pretrained(staged)
        for item in source_dir.iterdir():
            if item.is_file() and item.name not in _WEIGHT_FILES and not item.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copy2(item, staged / item.name)
        target = out / folder_name
        if target.exists():
            os.replace(target, work / "previous")  # os.replace cannot overwrite a non-empty folder
        os.replace(staged, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_manifest(out: Path, plan: list[Rung]) -> None:
    manifest = [{"path": rung.folder_name, **asdict(rung)} for rung in plan]
    write_text_atomic(out / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True,
                        help="embedded model name (e.g. smollm2-135m) or an HF folder")
    parser.add_argument("--steps", type=int, required=True, help="number of checkpoints (>= 2)")
    parser.add_argument("-o", "--out", required=True, help="output folder (one step_NNNNNN folder per rung)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init (default 0)")
    parser.add_argument("--first-gap", type=float, default=DEFAULT_FIRST_GAP,
                        help=f"1 - alpha of rung 1 (default {DEFAULT_FIRST_GAP})")
    parser.add_argument("--last-gap", type=float, default=DEFAULT_LAST_GAP,
                        help=f"1 - alpha of the last rung before the real weights (default {DEFAULT_LAST_GAP})")
    parser.add_argument("--step-interval", type=int, default=DEFAULT_STEP_INTERVAL,
                        help=f"training steps between rungs (default {DEFAULT_STEP_INTERVAL})")
    parser.add_argument("--tokens-per-step", type=int, default=DEFAULT_TOKENS_PER_STEP,
                        help=f"tokens per training step (default {DEFAULT_TOKENS_PER_STEP} = 1024 x 4096)")
    parser.add_argument("--no-real", dest="reaches_real", action="store_false",
                        help="no rung holds the real weights: the gap shrinks to --last-gap on the last rung (a weaker run)")
    parser.add_argument("--force", action="store_true", help="rewrite rungs that already exist")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    set_offline_defaults(datasets=False)
    from e2lm_vllm.models.registry import ModelPackageMissingError

    try:
        plan_ladder(args.source, args.steps, args.seed, args.first_gap, args.last_gap, args.step_interval,
                    args.tokens_per_step, args.reaches_real)
        folders = write_ladder(args.source, args.steps, args.out, seed=args.seed, first_gap=args.first_gap,
                               last_gap=args.last_gap,
                               step_interval=args.step_interval, tokens_per_step=args.tokens_per_step,
                               force=args.force, reaches_real=args.reaches_real)
    except (ValueError, ModelPackageMissingError) as error:
        print(f"e2lm-vllm ladder: {error}", file=sys.stderr)
        return 2
    for folder in folders:
        print(folder)
    return 0
