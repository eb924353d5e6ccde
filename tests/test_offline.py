"""e2lm_vllm.offline: the offline variables' one home; a value the user exported wins."""

from __future__ import annotations

import os

from e2lm_vllm.offline import offline_environment, set_offline_defaults


def test_offline_environment():
    assert offline_environment() == {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    assert offline_environment(datasets=False) == {"HF_HUB_OFFLINE": "1"}


def test_set_offline_defaults_keeps_the_users_value(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    set_offline_defaults(datasets=False)
    assert os.environ["HF_HUB_OFFLINE"] == "0" and "HF_DATASETS_OFFLINE" not in os.environ
    set_offline_defaults()
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
