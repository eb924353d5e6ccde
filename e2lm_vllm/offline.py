"""The offline environment: Hugging Face libraries read no network, unless the user said otherwise.

One home for the variables that the CLI entry points, the demo and bench set before loading a model
or a task (``os.environ.setdefault``: a value the user exported wins). Importing this is cheap.
"""

from __future__ import annotations

import os

HUB_OFFLINE = {"HF_HUB_OFFLINE": "1"}
"""Models and tokenizers come from local folders only."""

DATASETS_OFFLINE = {"HF_DATASETS_OFFLINE": "1"}
"""``datasets`` builds task data from local files only."""


def offline_environment(*, datasets: bool = True) -> dict[str, str]:
    """The offline variables and their values (``datasets=False``: only the Hub's)."""
    return {**HUB_OFFLINE, **(DATASETS_OFFLINE if datasets else {})}


def set_offline_defaults(*, datasets: bool = True) -> None:
    """``os.environ.setdefault`` each of :func:`offline_environment`'s variables."""
    for name, value in offline_environment(datasets=datasets).items():
        os.environ.setdefault(name, value)
