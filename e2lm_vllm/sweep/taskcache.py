"""lm-eval's tasks and their requests, built once per sweep worker and reused for every checkpoint.

Neither depends on the weights, and both cost more than a weight swap
(docs/measurements.md#task-building). The cache lives in the worker (`SweepWorker`)
for the whole sweep, keyed by `TaskKey`. The third weight-independent step, tokenizing and
planning those requests, is cached by the lm itself (`E2LMVLLM._pair_tokens` and `._plans`), whose
lifetime is one tokenizer, max length and block size.

Results equal `lm_eval.simple_evaluate` on the same tasks (the sweep tests compare with the
`lm_eval` CLI): the task settings and seeds below are the ones `simple_evaluate` applies.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from typing import Any

# `simple_evaluate`'s defaults (lm_eval.evaluator: DEFAULT_RANDOM_SEED, DEFAULT_OTHER_SEED).
RANDOM_SEED = 0
OTHER_SEED = 1234


@dataclass(frozen=True)
class TaskKey:
    """Everything the requests of an evaluation depend on (the text, not the tokens)."""

    include_paths: tuple[str, ...]
    tasks: tuple[str, ...]
    num_fewshot: int | None
    limit: float | None
    fewshot_seed: int = OTHER_SEED


def task_manager_for(include_paths: list[str] | tuple[str, ...], task_names: list[str] | tuple[str, ...]) -> Any:
    """lm-eval's task index; the built-in tasks are indexed (slow) only when a task needs them."""
    from lm_eval.tasks import TaskManager

    from e2lm_vllm.sweep.config import is_task_yaml_path

    if include_paths:
        local = TaskManager(include_path=list(include_paths), include_defaults=False)
        # A YAML path is loaded from its file (`TaskManager.load` takes paths), whatever the index holds.
        if all(name in local.all_tasks or is_task_yaml_path(name) for name in task_names):
            return local
        return TaskManager(include_path=list(include_paths))
    return TaskManager()


def _configure_like_simple_evaluate(task: Any, num_fewshot: int | None, fewshot_seed: int) -> None:
    if num_fewshot is not None:
        if task.get_config("num_fewshot") != 0:  # a task that pins 0 shots keeps it, as in lm-eval
            task.set_config(key="num_fewshot", value=num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=fewshot_seed)


def _build_requests_once(task: Any, cache: TaskCache) -> None:
    """Make `task.build_all_requests` build once per argument set and hand out fresh copies after.

    lm-eval's `evaluate` calls it on every run; the instances it builds are text and documents,
    and `evaluate` only fills their `resps`/`filtered_resps`, which start empty in each copy.
    """
    build = task.build_all_requests
    built: dict[str, list[Any]] = {}

    def build_all_requests(**kwargs: Any) -> None:
        key = repr(sorted((name, value) for name, value in kwargs.items() if name != "chat_template"))
        if key not in built:
            started = time.perf_counter()
            build(**kwargs)
            built[key] = task._instances
            cache.build_seconds += time.perf_counter() - started
        task._instances = [dataclasses.replace(instance, resps=[], filtered_resps={}) for instance in built[key]]

    task.build_all_requests = build_all_requests


class TaskCache:
    """Loaded lm-eval tasks (with their built requests) per `TaskKey`, and task indexes per include path."""

    def __init__(self) -> None:
        self._managers: dict[tuple[tuple[str, ...], tuple[str, ...]], Any] = {}
        self._loaded: dict[TaskKey, dict[str, Any]] = {}
        self.build_seconds = 0.0  # spent loading tasks and building requests, in total

    def __contains__(self, key: TaskKey) -> bool:
        return key in self._loaded

    def tasks(self, key: TaskKey) -> dict[str, Any]:
        """lm-eval's `{"tasks": ..., "groups": ...}` for `key`, configured as `simple_evaluate` does."""
        loaded = self._loaded.get(key)
        if loaded is None:
            started = time.perf_counter()
            index = (key.include_paths, key.tasks)
            manager = self._managers.get(index)
            if manager is None:
                manager = self._managers[index] = task_manager_for(key.include_paths, key.tasks)
            loaded = manager.load(list(key.tasks))
            for task in loaded["tasks"].values():
                _configure_like_simple_evaluate(task, key.num_fewshot, key.fewshot_seed)
                _build_requests_once(task, self)
            self._loaded[key] = loaded
            self.build_seconds += time.perf_counter() - started
        return loaded


def evaluate(lm: Any, key: TaskKey, cache: TaskCache) -> dict[str, Any]:
    """lm-eval's results of `lm` on the tasks of `key`, with per-sample logs."""
    import numpy as np
    from lm_eval.evaluator import evaluate as lm_eval_evaluate
    from lm_eval.utils import set_torch_seed

    loaded = cache.tasks(key)
    # Seeded before every checkpoint as `simple_evaluate` seeds before every run (metric bootstraps).
    random.seed(RANDOM_SEED)
    np.random.seed(OTHER_SEED)
    set_torch_seed(OTHER_SEED)
    return lm_eval_evaluate(lm=lm, task_dict=loaded, limit=key.limit, log_samples=True) or {}
