"""`e2lm-vllm ladder`: synthetic checkpoints that move from a seeded random init to real weights.

Offline stand-in for a training run, so a sweep has something whose scores rise with step.
Rung ``k`` of ``N`` holds ``lerp(random_init, real, alpha_k)`` with

    alpha_k = 1 - (1 - k / (N - 1)) ** power

(``power`` > 1 puts most rungs close to the real weights: a linear blend of a random and a
trained network is near chance until alpha ~0.8, so linear spacing would leave the rise to the
last rung or two). The last rung is the real weights bit for bit.

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

log = logging.getLogger(__name__)

DEFAULT_STEP_INTERVAL = 1000
DEFAULT_TOKENS_PER_STEP = 1024 * 4096  # global batch of 1024 sequences x 4096 tokens
DEFAULT_POWER = 3.0
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
    power: float

    @property
    def folder_name(self) -> str:
        return f"step_{self.step:06d}"


def alpha_schedule(steps: int, power: float = DEFAULT_POWER) -> list[float]:
    """Blend weight per rung: 0 for the random init, exactly 1 for the real weights."""
    if steps < 2:
        raise ValueError(f"a ladder needs at least 2 steps (random init and real weights), got {steps}")
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")
    return [1.0 - (1.0 - k / (steps - 1)) ** power for k in range(steps)]


def plan_ladder(
    source: str,
    steps: int,
    seed: int = 0,
    power: float = DEFAULT_POWER,
    step_interval: int = DEFAULT_STEP_INTERVAL,
    tokens_per_step: int = DEFAULT_TOKENS_PER_STEP,
) -> list[Rung]:
    if step_interval < 1 or tokens_per_step < 1:
        raise ValueError("step_interval and tokens_per_step must be positive integers")
    return [
        Rung(True, source, k * step_interval, k * step_interval * tokens_per_step, alpha, seed, k, steps, power)
        for k, alpha in enumerate(alpha_schedule(steps, power))
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
    power: float = DEFAULT_POWER,
    step_interval: int = DEFAULT_STEP_INTERVAL,
    tokens_per_step: int = DEFAULT_TOKENS_PER_STEP,
    force: bool = False,
) -> list[Path]:
    """Write ``steps`` checkpoint folders under ``out_dir``; return them in step order.

    Existing rungs with the same recipe are kept (unless ``force``); one written with another
    recipe is an error, since mixing two ladders in one folder would make a meaningless curve.
    """
    source_name = str(source)
    plan = plan_ladder(source_name, steps, seed, power, step_interval, tokens_per_step)
    source_dir = resolve_source(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    todo: list[Rung] = []
    for rung in plan:
        existing = _existing_rung(out / rung.folder_name)
        if existing is None or force:
            todo.append(rung)
        elif existing != asdict(rung):
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
        _save_atomically(model, source_dir, out, rung.folder_name)
    del model.config.e2lm


def _save_atomically(model, source_dir: Path, out: Path, folder_name: str) -> None:
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
    tmp = out / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST_NAME)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True,
                        help="embedded model name (e.g. smollm2-135m) or an HF folder")
    parser.add_argument("--steps", type=int, required=True, help="number of checkpoints (>= 2)")
    parser.add_argument("-o", "--out", required=True, help="output folder (one step_NNNNNN folder per rung)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init (default 0)")
    parser.add_argument("--power", type=float, default=DEFAULT_POWER,
                        help=f"alpha_k = 1 - (1 - k/(N-1))^power (default {DEFAULT_POWER})")
    parser.add_argument("--step-interval", type=int, default=DEFAULT_STEP_INTERVAL,
                        help=f"training steps between rungs (default {DEFAULT_STEP_INTERVAL})")
    parser.add_argument("--tokens-per-step", type=int, default=DEFAULT_TOKENS_PER_STEP,
                        help=f"tokens per training step (default {DEFAULT_TOKENS_PER_STEP} = 1024 x 4096)")
    parser.add_argument("--force", action="store_true", help="rewrite rungs that already exist")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from e2lm_vllm.models.registry import ModelPackageMissingError

    try:
        plan_ladder(args.source, args.steps, args.seed, args.power, args.step_interval, args.tokens_per_step)
        folders = write_ladder(args.source, args.steps, args.out, seed=args.seed, power=args.power,
                               step_interval=args.step_interval, tokens_per_step=args.tokens_per_step,
                               force=args.force)
    except (ValueError, ModelPackageMissingError) as error:
        print(f"e2lm-vllm ladder: {error}", file=sys.stderr)
        return 2
    for folder in folders:
        print(folder)
    return 0
