"""``--log-to`` targets: ``wandb:project=P[,entity=E,name=N,group=G]``, ``tensorboard:DIR``,
``mlflow:URI[,experiment=X]``; parsed and checked before any engine starts."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

FORMS = "wandb:project=P[,entity=E,name=N,group=G], tensorboard:DIR or mlflow:URI[,experiment=X]"
OPTIONS = {"wandb": ("project", "entity", "name", "group"), "mlflow": ("experiment",)}
# The module a tracker imports, and the extra that installs it.
PACKAGES = {"wandb": "wandb", "tensorboard": "tensorboardX", "mlflow": "mlflow"}


class TrackerSpecError(ValueError):
    """A ``--log-to`` target that does not parse, or whose package is not installed."""


@dataclass(frozen=True)
class TrackerSpec:
    kind: str  # "wandb", "tensorboard" or "mlflow"
    target: str  # the W&B project, the TensorBoard folder (absolute), the MLflow tracking URI
    options: tuple[tuple[str, str], ...] = ()

    def option(self, name: str, default: str | None = None) -> str | None:
        return dict(self.options).get(name, default)

    @property
    def key(self) -> str:
        """The target's identity in the ledger: a second target of the same kind gets its own."""
        if self.kind == "wandb":
            return f"wandb:{self.option('entity') or ''}/{self.target}"
        if self.kind == "mlflow":
            return f"mlflow:{without_password(self.target)},experiment={self.option('experiment')}"
        return f"tensorboard:{self.target}"

    def __str__(self) -> str:
        if self.kind == "wandb":
            return "wandb:" + ",".join(f"{name}={value}" for name, value in (("project", self.target), *self.options))
        return f"{self.kind}:{without_password(self.target)}" + "".join(f",{name}={value}" for name, value in self.options)


def without_password(uri: str) -> str:
    """``uri`` with the password of ``scheme://user:password@host`` left out: what logs and the ledger may hold.

    An MLflow server's basic auth may ride in its URI (requests takes it from there); the target's
    name in warnings and in ``OUTPUT/trackers.json`` keeps the user and host only.
    """
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))


def parse_spec(text: str) -> TrackerSpec:
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in PACKAGES:
        raise TrackerSpecError(f"--log-to {text!r}: unknown tracker {kind!r}; expected {FORMS}")
    if kind == "tensorboard":
        if not rest.strip():
            raise TrackerSpecError(f"--log-to {text!r}: expected a folder for the event files (tensorboard:DIR)")
        return TrackerSpec(kind, str(Path(rest.strip()).absolute()))
    items = [item.strip() for item in rest.split(",") if item.strip()]
    target = ""
    if kind == "mlflow":
        if not items or "=" in items[0].split("/")[0].split(":")[0]:
            raise TrackerSpecError(f"--log-to {text!r}: expected a tracking URI or folder first (mlflow:URI[,experiment=X])")
        target = _mlflow_uri(items.pop(0))
    options = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or name.strip() not in OPTIONS[kind] or not value.strip():
            allowed = ", ".join(f"{o}=..." for o in OPTIONS[kind])
            raise TrackerSpecError(f"--log-to {text!r}: unknown option {item!r}; expected {allowed}")
        options[name.strip()] = value.strip()
    if kind == "wandb":
        if "project" not in options:
            raise TrackerSpecError(f"--log-to {text!r}: expected project=P (wandb:project=P[,entity=E,name=N,group=G])")
        target = options.pop("project")
    else:
        options.setdefault("experiment", "e2lm-vllm")
    return TrackerSpec(kind, target, tuple(sorted(options.items())))


def _mlflow_uri(text: str) -> str:
    # A bare folder is MLflow's local file store; keep it absolute so a restart elsewhere finds it.
    if "://" in text or text.startswith(("file:", "databricks", "sqlite:")):
        return text
    return Path(text).absolute().as_uri()


def parse_specs(texts: list[str] | None) -> list[TrackerSpec]:
    specs = [parse_spec(text) for text in texts or []]
    keys = [spec.key for spec in specs]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise TrackerSpecError(f"--log-to: each target once, got {', '.join(duplicated)} twice")
    return specs


def require_packages(specs: list[TrackerSpec]) -> None:
    """One line naming the extra to install when a tracker's package is missing (before any engine starts)."""
    for spec in specs:
        module = PACKAGES[spec.kind]
        try:
            importlib.import_module(module)
        except ImportError:
            raise TrackerSpecError(
                f"--log-to {spec}: the {module} package is not installed; pip install 'e2lm-vllm[{spec.kind}]'"
            ) from None
        if spec.kind == "wandb":
            _require_wandb_credentials(spec)


def _require_wandb_credentials(spec: TrackerSpec) -> None:
    # Online without a key, wandb.init would prompt on a terminal (a sweep waiting for a keypress) or fail
    # mid-run: say it now. Offline and disabled modes need no account.
    import wandb

    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        return
    if not wandb.login(prompt=False, verify=False):
        raise TrackerSpecError(
            f"--log-to {spec}: no W&B credentials; set WANDB_API_KEY or run `wandb login`, "
            "or set WANDB_MODE=offline and `wandb sync OUTPUT/wandb/offline-run-*` later"
        )
