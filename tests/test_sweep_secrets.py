"""The HF token stays out of Ray's runtime env and out of reprs. Fast: no Ray (the real cluster run is
tests/test_sweep_robust_ray.py::test_the_hf_token_reaches_the_workers_and_no_file)."""

from __future__ import annotations

import os
import pickle

from e2lm_vllm.cluster.ray_init import passed_environment, worker_environment
from e2lm_vllm.cluster.worker_secrets import WorkerSecrets

DRIVER = {"HF_TOKEN": "hf_abc", "HUGGING_FACE_HUB_TOKEN": "hf_def", "HF_HOME": "/shared/hf", "PATH": "/usr/bin"}


def test_the_token_is_not_passed_in_the_environment_but_as_secrets(monkeypatch):
    assert passed_environment(DRIVER) == {"HF_HOME": "/shared/hf"}
    monkeypatch.setenv("HF_TOKEN", "hf_abc")
    assert "HF_TOKEN" not in worker_environment(2, "sweep")
    secrets = WorkerSecrets.from_environ(DRIVER)
    assert secrets.env == {"HF_TOKEN": "hf_abc", "HUGGING_FACE_HUB_TOKEN": "hf_def"}
    assert "hf_abc" not in repr(secrets) and repr(secrets) == "WorkerSecrets(HF_TOKEN=***, HUGGING_FACE_HUB_TOKEN=***)"
    assert pickle.loads(pickle.dumps(secrets)) == secrets  # what Ray sends to the worker
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)  # both restored after the test
    secrets.apply()
    assert os.environ["HF_TOKEN"] == "hf_abc"
    assert WorkerSecrets.from_environ({"HF_TOKEN": ""}).env == {}  # an empty token is none
