"""What a sweep evaluates: model families and their checkpoints, tasks, engine arguments, output.

A sweep is written as YAML (``load_sweep_config``) or built from command-line flags
(``config_from_flags``); both give the same validated ``SweepConfig``. Validation errors name
the field path and what was expected (``SweepConfigError``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from e2lm_vllm.settings import EngineSettings, LmName, ModelArgs, ModelArgsError, refusal


class SweepConfigError(ValueError):
    """A sweep definition that does not validate; the message lists ``field.path: what was expected``."""


class _Strict(BaseModel):
    # Typos in a config must fail loudly rather than be ignored.
    model_config = ConfigDict(extra="forbid")


def _no_refused_args(value: dict[str, Any]) -> dict[str, Any]:
    """Model args passed as given (`engine.extra`, a family's `model_args`) are refused here, before any
    work, as `lm_eval --model_args` refuses them (`e2lm_vllm.settings.REFUSED_VLLM_ARGS`)."""
    refused = [reason for key, item in value.items() if (reason := refusal(key, item)) is not None]
    if refused:
        raise ValueError("; ".join(refused))
    return value


# --- checkpoints -------------------------------------------------------------------------------


class CheckpointEntry(_Strict):
    """One checkpoint named explicitly, with its training step and (optionally) tokens seen."""

    name: str = Field(description="local folder, HF revision or HF subfolder, depending on the source")
    step: int | None = Field(default=None, ge=0, description="training step; read from the checkpoint when absent")
    tokens: float | None = Field(default=None, ge=0, description="tokens seen at this step (raw count)")


def _entries(value: Any) -> Any:
    # A bare string is shorthand for {name: string}.
    if isinstance(value, list):
        return [{"name": item} if isinstance(item, (str, int)) and not isinstance(item, bool) else item for item in value]
    return value


class StepRange(_Strict):
    """``start``, ``start + every``, ... up to ``stop`` inclusive: E2LM saves every 2000 steps."""

    start: int = Field(ge=0)
    stop: int = Field(ge=0)
    every: int = Field(gt=0)

    def steps(self) -> list[int]:
        return list(range(self.start, self.stop + 1, self.every))


class LocalCheckpoints(_Strict):
    """Local checkpoint folders, each a path or a glob (``runs/ladder/step_*``)."""

    paths: list[CheckpointEntry] = Field(min_length=1)
    _normalise = field_validator("paths", mode="before")(_entries)


class HFRevisions(_Strict):
    """An HF repo with one checkpoint per revision (branch, tag or commit)."""

    repo: str
    revisions: list[CheckpointEntry] = Field(min_length=1)
    _normalise = field_validator("revisions", mode="before")(_entries)


class HFSubfolders(_Strict):
    """An HF repo with one checkpoint per subfolder: the E2LM layout (``tiiuae/dense-1b-arch1/iter_0002000``).

    Either list ``subfolders`` or give a ``subfolder_template`` (Python format with ``step``) and ``steps``.
    Nothing touches the network until a worker loads the checkpoint.
    """

    repo: str
    subfolders: list[CheckpointEntry] | None = None
    subfolder_template: str | None = Field(default=None, examples=["iter_{step:07d}"])
    steps: list[int] | StepRange | None = None
    revision: str | None = None
    _normalise = field_validator("subfolders", mode="before")(_entries)

    def model_post_init(self, _context: Any) -> None:
        if self.subfolders is None and (self.subfolder_template is None or self.steps is None):
            raise ValueError("expected `subfolders`, or both `subfolder_template` and `steps`")
        if self.subfolders is not None and self.subfolder_template is not None:
            raise ValueError("expected either `subfolders` or `subfolder_template`, not both")


def _source_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "paths" in value:
            return "paths"
        if "revisions" in value:
            return "revisions"
        if "subfolders" in value or "subfolder_template" in value:
            return "subfolders"
        return None
    if isinstance(value, BaseModel):
        return {LocalCheckpoints: "paths", HFRevisions: "revisions", HFSubfolders: "subfolders"}[type(value)]
    return None


CheckpointSource = Annotated[
    Annotated[LocalCheckpoints, Tag("paths")] | Annotated[HFRevisions, Tag("revisions")] | Annotated[HFSubfolders, Tag("subfolders")],
    Discriminator(
        _source_kind,
        custom_error_type="checkpoint_source",
        custom_error_message="expected a checkpoint source with `paths`, `repo` + `revisions`, or `repo` + `subfolders`",
    ),
]


# --- token schedule ----------------------------------------------------------------------------


class ConstantTokens(_Strict):
    """``tokens = step x tokens_per_step``: a run with one batch size throughout."""

    kind: Literal["constant"]
    tokens_per_step: float = Field(gt=0)


class ListedTokens(_Strict):
    """Tokens seen at each step, listed (``{2000: 2.097e9, 4000: ...}``); a checkpoint at a step not listed is an error."""

    kind: Literal["list"]
    tokens: dict[int, float] = Field(min_length=1)

    @field_validator("tokens")
    @classmethod
    def _non_negative(cls, value: dict[int, float]) -> dict[int, float]:
        bad = {step: tokens for step, tokens in value.items() if step < 0 or not tokens >= 0}
        if bad:
            raise ValueError(f"expected steps and token counts >= 0, got {bad}")
        return value


class RampupTokens(_Strict):
    """Megatron batch-size ramp-up (``--global-batch-size``, ``--seq-length``,
    ``--rampup-batch-size START INCREMENT SAMPLES``), converted by
    ``e2lm_vllm.quality.tokens.iteration_to_tokens``, the function ``score`` uses.

    The E2LM models: ``global_batch_size: 1024, seq_length: 4096, rampup_start: 256,
    rampup_increment: 256, rampup_samples: 4882812``.
    """

    kind: Literal["rampup"]
    global_batch_size: int = Field(gt=0, description="final global batch, in sequences")
    seq_length: int = Field(gt=0, description="tokens per sequence")
    rampup_start: int = Field(gt=0, description="first global batch, in sequences")
    rampup_increment: int = Field(gt=0, description="batch growth at each ramp step, in sequences")
    rampup_samples: int = Field(ge=0, description="samples consumed over the whole ramp")
    method: Literal["e2lm", "megatron"] = Field(
        default="e2lm", description="e2lm: the organisers' conversion (their gtokens); megatron: the samples Megatron consumed"
    )

    def model_post_init(self, _context: Any) -> None:
        gap = self.global_batch_size - self.rampup_start
        if gap < 0 or gap % self.rampup_increment:
            raise ValueError(
                "expected global_batch_size = rampup_start + k * rampup_increment for some k >= 0, got "
                f"{self.global_batch_size} = {self.rampup_start} + k * {self.rampup_increment}"
            )


TOKEN_SCHEDULE_KINDS = ("constant", "list", "rampup")

TokenSchedule = Annotated[ConstantTokens | ListedTokens | RampupTokens, Field(discriminator="kind")]


def _schedule_kind(value: Any) -> Any:
    # Named here rather than by pydantic's union error, so the message lists the valid kinds.
    if isinstance(value, dict) and value.get("kind") not in TOKEN_SCHEDULE_KINDS:
        kinds = ", ".join(repr(kind) for kind in TOKEN_SCHEDULE_KINDS)
        raise ValueError(f"expected `kind` to be one of {kinds}, got {value.get('kind')!r}")
    return value


class ModelFamily(_Strict):
    """One model family (one row label in the results, e.g. ``dense-1b-arch1``) and its checkpoints."""

    name: str = Field(min_length=1)
    checkpoints: list[CheckpointSource] = Field(min_length=1)
    architecture: str | None = Field(
        default=None, description="checkpoints sharing it may reuse one engine (weight swap); default: the name"
    )
    tokenizer: str | None = Field(default=None, description="tokenizer path or repo when checkpoints lack one")
    tokens_per_step: float | None = Field(default=None, gt=0, description="tokens = step * tokens_per_step")
    token_schedule: TokenSchedule | None = Field(
        default=None, description="tokens seen at each step: constant, list, or a batch ramp-up (`kind:`)"
    )
    model_args: dict[str, Any] = Field(default_factory=dict, description="extra constructor kwargs for this family")

    @field_validator("checkpoints", mode="before")
    @classmethod
    def _one_source(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    _kind = field_validator("token_schedule", mode="before")(_schedule_kind)
    _refused = field_validator("model_args")(_no_refused_args)

    def model_post_init(self, _context: Any) -> None:
        if self.tokens_per_step is not None and self.token_schedule is not None:
            raise ValueError("expected either `tokens_per_step` or `token_schedule`, not both")


# --- tasks and engine --------------------------------------------------------------------------


def is_task_yaml_path(name: str) -> bool:
    """A `tasks:` entry that names a task YAML file (loaded from that path), not a registered task."""
    return name.endswith((".yaml", ".yml"))


class TaskSpec(_Strict):
    """An lm-eval task (or group) name, or a path to a task YAML."""

    name: str = Field(min_length=1)
    num_fewshot: int | None = Field(default=None, ge=0)
    limit: float | None = Field(default=None, gt=0, description="docs per task (int) or fraction (< 1)")


class SweepEngineSettings(EngineSettings):
    """The ``engine:`` section: the model args' `EngineSettings`, given to every checkpoint, and
    which lm-eval model loads it. Typos fail (``extra="forbid"``, inherited)."""

    lm: LmName = Field(default="e2lm_vllm", description="lm-eval model: our vLLM wrapper, or lm-eval's own HF model")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="other constructor kwargs of the lm, passed as given (`--model-args`)"
    )

    _refused = field_validator("extra")(_no_refused_args)

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        # `enforce_eager: null` meant the lm's default in the first sweeps, as None does in `ModelArgs.from_kwargs`.
        return {key: value for key, value in data.items() if value is not None} if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _one_engine_per_worker(self) -> SweepEngineSettings:
        size = self.extra.get("data_parallel_size", self.data_parallel_size)  # `--model-args` land in `extra`
        if str(size) != "1":
            raise ValueError(
                f"data_parallel_size={size}: a sweep already runs one engine per worker and "
                "as many workers as fit (set `workers:`); data_parallel_size is for one lm-eval run"
            )
        return self

    def settings_args(self) -> dict[str, Any]:
        """The settings set in the section, as the lm's flat model args (unset ones keep `EngineSettings`' defaults)."""
        return {key: value for key, value in self.overrides().items() if key not in _SWEEP_ONLY}

    def hash_payload(self) -> dict[str, Any]:
        """The section as the config hash reads it (see `HASHED_ENGINE_SECTION`)."""
        return {**HASHED_ENGINE_SECTION, **self.model_dump(mode="json", exclude_unset=True)}


# Fields of the section that are about the sweep, not settings of the lm.
_SWEEP_ONLY = set(SweepEngineSettings.model_fields) - set(EngineSettings.model_fields)

# A frozen record that only the hashes read: the `engine:` section as the first sweeps declared it.
# Cell hashes (which part files a rerun finds done) and the config hash read the section in this
# shape, so a config written then keeps its hashes: these fields count at their value, set or not;
# settings added since count only when set. Never passed to the lm (its defaults are `EngineSettings`').
# The values are the defaults, so a changed default changes the hashes (the cells it changes are
# recomputed), except enforce_eager and batch_size, which the first section recorded as None.
HASHED_ENGINE_SECTION: dict[str, Any] = {
    "lm": SweepEngineSettings.model_fields["lm"].default,
    **{
        name: EngineSettings.model_fields[name].default
        for name in ("backend", "dtype", "max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "seed")
    },
    "enforce_eager": None,
    "batch_size": None,
    "extra": {},
}
# What locates a checkpoint's weights: a family's `checkpoints:` say it, never its model args.
_LOCATION_ARGS = set(ModelArgs.model_fields) - set(EngineSettings.model_fields)


class SweepConfig(_Strict):
    """A whole sweep: every checkpoint of every family x every task."""

    models: list[ModelFamily] = Field(min_length=1)
    tasks: list[TaskSpec] = Field(min_length=1)
    include_paths: list[str] = Field(default_factory=list, description="folders of task YAMLs")
    num_fewshot: int | None = Field(default=None, ge=0, description="default for tasks that do not set it")
    limit: float | None = Field(default=None, gt=0, description="default for tasks that do not set it")
    engine: SweepEngineSettings = Field(default_factory=SweepEngineSettings)
    output: str = "results/sweep"
    workers: int | None = Field(
        default=None, ge=1, description="engines at once; default: all that fit, per node GPUs // tensor_parallel_size (no GPUs: 1)"
    )
    cpus_per_worker: int | None = Field(default=None, ge=1, description="default: its node's CPUs / workers on that node")
    max_attempts: int = Field(default=3, ge=1, description="tries per checkpoint before it is recorded as failed")
    checkpoint_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="seconds a worker may take over one checkpoint (its start, load and every task) before it is "
        "killed and the checkpoint retried; default: 4 h on a cluster with GPUs, 24 h without",
    )
    log_to: list[str] = Field(
        default_factory=list,
        description="trackers that get every checkpoint's metrics: wandb:project=P[,...], tensorboard:DIR, mlflow:URI[,experiment=X]",
    )
    worker_lifetime: Literal["sweep", "checkpoint"] = Field(
        default="sweep",
        description="sweep: one worker per device evaluates checkpoint after checkpoint, swapping weights; "
        "checkpoint: a fresh worker process and engine per checkpoint (slower; for comparison)",
    )

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [name for name in value.split(",") if name.strip()]
        if isinstance(value, list):
            return [{"name": item.strip()} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("log_to", mode="before")
    @classmethod
    def _tracker_specs(cls, value: Any) -> Any:
        from e2lm_vllm.trackers.spec import parse_specs

        value = [value] if isinstance(value, str) else value
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            parse_specs(value)  # the format only; whether the package is there is checked when the sweep starts
        return value

    @field_validator("include_paths", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("models")
    @classmethod
    def _unique_names(cls, value: list[ModelFamily]) -> list[ModelFamily]:
        names = [family.name for family in value]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"expected unique model family names, got duplicates: {duplicated}")
        return value

    @model_validator(mode="after")
    def _model_args_valid(self) -> SweepConfig:
        # On the driver, before any worker starts: a typo in `--model-args` fails here, not on a worker.
        for family in self.models:
            self.family_settings(family)
        return self

    def family_args(self, family: ModelFamily) -> dict[str, Any]:
        """The model args set for `family`'s checkpoints, flat as lm-eval's: the `engine:` settings given,
        `engine.extra` (`--model-args`), then the family's `tokenizer` and `model_args`; None is unset."""
        return {key: value for key, value in self._given_args(family).items() if value is not None}

    def _given_args(self, family: ModelFamily) -> dict[str, Any]:
        tokenizer = {"tokenizer": family.tokenizer} if family.tokenizer is not None else {}
        return {**self.engine.settings_args(), **tokenizer, **self.engine.extra, **family.model_args}

    def family_settings(self, family: ModelFamily) -> EngineSettings:
        """`family_args` validated: what its checkpoints' lms are built with (`EngineSettings.located`)."""
        args = self.family_args(family)
        located = sorted(_LOCATION_ARGS & set(args))
        if located:
            raise ValueError(
                f"model args of family {family.name!r}: {', '.join(located)} is where the weights are, which "
                "the family's `checkpoints:` say"
            )
        try:
            return EngineSettings.from_kwargs(args)
        except ModelArgsError as error:
            raise ValueError(f"model args of family {family.name!r}: {error}") from None

    def family_hash_args(self, family: ModelFamily) -> dict[str, Any]:
        """`family_args` as the cell hash and engine key read them: over `HASHED_ENGINE_SECTION`."""
        first = {key: value for key, value in HASHED_ENGINE_SECTION.items() if key not in _SWEEP_ONLY}
        args = {**first, **self._given_args(family)}  # a None given unsets a recorded field too
        return {key: value for key, value in args.items() if value is not None}

    def task_fewshot(self, task: TaskSpec) -> int | None:
        return task.num_fewshot if task.num_fewshot is not None else self.num_fewshot

    def task_limit(self, task: TaskSpec) -> float | None:
        return task.limit if task.limit is not None else self.limit


# Fields that decide how a sweep runs, not what it computes: left out of the config hash.
_EXECUTION_FIELDS = {"output", "workers", "cpus_per_worker", "max_attempts", "worker_lifetime", "checkpoint_timeout_s", "log_to"}


def stable_hash(payload: Any, length: int = 12) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def config_hash(config: SweepConfig) -> str:
    """Hash of everything that changes results; stable across key order, output dir and worker count."""
    payload = config.model_dump(mode="json", exclude=_EXECUTION_FIELDS | {"engine"})
    return stable_hash({**payload, "engine": config.engine.hash_payload()})


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid sweep definition"]
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        got = item.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        lines.append(f"  {path}: {item['msg']}{shown}")
    return "\n".join(lines)


def validate_config(data: Any, source: str = "sweep config") -> SweepConfig:
    if not isinstance(data, dict):
        raise SweepConfigError(f"{source}: expected a mapping with `models` and `tasks`, got {type(data).__name__}")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as error:
        raise SweepConfigError(format_validation_error(error, source)) from None


def load_sweep_config(path: str | os.PathLike) -> SweepConfig:
    """Read and validate a sweep YAML.

    Relative local paths in it are relative to the current directory, as for the flags: the repo
    root both for ``e2lm-vllm sweep`` and for ``ray job submit --working-dir .`` (where it is the
    uploaded copy, so checkpoints and output outside the checkout must be given as absolute paths).
    """
    path = Path(path)
    if not path.is_file():
        raise SweepConfigError(f"{path}: sweep config not found (expected a YAML file)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SweepConfigError(f"{path}: not valid YAML: {error}") from None
    return _relative_to(validate_config(data, str(path)), Path.cwd())


def _relative_to(config: SweepConfig, base: Path) -> SweepConfig:
    """Resolve relative local paths (checkpoints, include paths, task YAMLs) against ``base``."""

    def resolve(text: str) -> str:
        return text if Path(text).is_absolute() else str(base / text)

    for family in config.models:
        for source in family.checkpoints:
            if isinstance(source, LocalCheckpoints):
                for entry in source.paths:
                    entry.name = resolve(entry.name)
    config.include_paths = [resolve(p) for p in config.include_paths]
    for task in config.tasks:
        if is_task_yaml_path(task.name):
            task.name = resolve(task.name)
    return config


def config_from_flags(
    checkpoints: list[str] | None = None,
    model_name: str | None = None,
    tasks: str | list[str] | None = None,
    include_path: list[str] | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    output: str | None = None,
    lm: str | None = None,
    model_args: dict[str, Any] | None = None,
    base: SweepConfig | None = None,
) -> SweepConfig:
    """The common case from flags alone, or flags overriding a loaded config (``base``)."""
    data: dict[str, Any] = {}
    if base is not None:  # the engine settings as given, so that the unset ones stay unset (hashes)
        data = {**base.model_dump(mode="python", exclude={"engine"}), "engine": base.engine.model_dump(exclude_unset=True)}
    if checkpoints:
        name = model_name or (data["models"][0]["name"] if data.get("models") else None)
        if name is None:
            name = _common_family_name(checkpoints)
        data["models"] = [{"name": name, "checkpoints": [{"paths": [str(Path(p).absolute()) for p in checkpoints]}]}]
    elif model_name and data.get("models"):
        if len(data["models"]) != 1:
            raise SweepConfigError("--model-name: expected a config with exactly one model family to rename")
        data["models"][0]["name"] = model_name
    if tasks:
        data["tasks"] = tasks
    if include_path:
        data["include_paths"] = [str(Path(p).absolute()) for p in include_path]
    if limit is not None:
        data["limit"] = limit
    if num_fewshot is not None:
        data["num_fewshot"] = num_fewshot
    if output is not None:
        data["output"] = output
    engine = dict(data.get("engine") or {})
    if lm is not None:
        engine["lm"] = lm
    if model_args:
        engine["extra"] = {**engine.get("extra", {}), **model_args}
    if engine:
        data["engine"] = engine
    missing = [flag for flag, key in (("--checkpoints", "models"), ("--tasks", "tasks")) if not data.get(key)]
    if missing:
        raise SweepConfigError(f"expected a sweep config file or the flags {' and '.join(missing)}")
    return validate_config(data, "command-line flags")


def _common_family_name(checkpoints: list[str]) -> str:
    """``runs/smollm2-ladder/step_*`` -> ``smollm2-ladder``: the parent folder names the family."""
    parents = {Path(p).absolute().parent.name for p in checkpoints}
    return parents.pop() if len(parents) == 1 and parents != {""} else "model"
