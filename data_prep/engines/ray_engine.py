"""The ``ray`` engine: every task is a Ray task, on a local instance or on a cluster.

- Where: the cluster at ``address`` (``'auto'``: the one ``ray start --head`` runs on this machine;
  ``'ray://HOST:10001'``: a remote head through Ray Client; ``RAY_ADDRESS`` when no address is
  given), else a local instance of ``workers`` CPUs (no dashboard, no token-auth file or warning,
  quiet logs). A Ray this process already initialized is used as it is and left running; an
  instance started here is shut down at the end, a cluster connection closed (the cluster runs on).
- Code: the project's packages (``data_prep``, ``vlp``) travel as ``runtime_env`` ``py_modules``
  to every worker, so a cluster runs the driver's code without installing the project; its nodes
  need the third-party dependencies (``pip install -e '.[prep]'`` on the image).
- Flow: ``fn`` and ``args`` go to the object store once; at most twice the cluster's CPUs of tasks
  are in flight (``ray.wait``), so millions of tasks are never submitted at once; results are
  yielded as they complete. A task that raises or whose worker dies is retried ``max_retries``
  times (ingest's chunk task is idempotent and writes atomically, so a retry duplicates nothing);
  one that fails on every attempt raises :class:`TaskFailedError` naming it, and cancels the rest.
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from data_prep.engines.task_failed import TaskFailedError

PROJECT_PACKAGES = ("data_prep", "vlp")
QUIET = {"log_to_driver": False, "logging_level": "ERROR"}


def import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ImportError("--engine ray needs Ray: pip install -e '.[prep]'") from err
    return ray


def start_local(workers: int, runtime_env: dict[str, Any] | None = None) -> Any:
    """Start a quiet local Ray instance of ``workers`` CPUs whose workers run this project's code;
    returns the ``ray`` module."""
    ray = import_ray()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance: no token file, no warning
    ray.init(num_cpus=max(1, workers), include_dashboard=False, runtime_env=code_runtime_env(runtime_env), **QUIET)
    return ray


def _connect(address: str | None, workers: int, runtime_env: dict[str, Any] | None) -> tuple[Any, bool]:
    """``(ray, whether this call initialized it)``. The code travels with ``ray.init`` (Ray uploads
    local directories only for a whole job), so a Ray initialized before is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        return start_local(workers, runtime_env), True
    ray.init(address=address, runtime_env=code_runtime_env(runtime_env), **QUIET)
    return ray, True


def code_runtime_env(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``runtime_env`` that ships the project's packages to the workers (``extra`` wins)."""
    import importlib

    dirs = [str(Path(importlib.import_module(name).__file__).parent) for name in PROJECT_PACKAGES]
    return {"py_modules": dirs, "excludes": ["__pycache__", "*.pyc"], **(extra or {})}


def _call(fn: Callable[..., dict], task: Any, *args: Any) -> dict:
    return fn(task, *args)


def _result(ray: Any, ref: Any, task: Any, max_retries: int) -> dict:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        cause = getattr(err, "cause", None) or err
        first_line = (str(cause).strip().splitlines() or [""])[0]
        raise TaskFailedError(task, f"failed on every attempt ({max_retries + 1}, max_retries={max_retries}): "
                              f"{type(cause).__name__}: {first_line}") from err


def run_ray(fn: Callable[..., dict], tasks: Iterable[Any], *args: Any, workers: int = 1,
            address: str | None = None, max_retries: int = 3, runtime_env: dict[str, Any] | None = None
            ) -> Iterator[dict]:
    """``fn(task, *args)`` for every task as Ray tasks; yields each result as it completes."""
    ray, owned = _connect(address, workers, runtime_env)
    pending: dict[Any, Any] = {}
    try:
        remote = ray.remote(max_retries=max_retries, retry_exceptions=True)(_call)
        shared = [ray.put(fn), *(ray.put(arg) for arg in args)]
        limit = 2 * max(1, int(ray.cluster_resources().get("CPU", workers)))
        todo = iter(tasks)
        while True:
            for task in islice(todo, limit - len(pending)):
                pending[remote.remote(shared[0], task, *shared[1:])] = task
            if not pending:
                return
            [ref], _ = ray.wait(list(pending), num_returns=1)
            yield _result(ray, ref, pending.pop(ref), max_retries)
    finally:
        if ray.is_initialized():
            for ref in pending:  # a failure or an abandoned generator: stop the rest
                ray.cancel(ref)
        if owned:
            ray.shutdown()
