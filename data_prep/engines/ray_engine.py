"""Ingest chunk tasks as Ray tasks: a local instance (``num_cpus=workers``) or a cluster.

Each task runs ``fn(task, opts)`` with ``opts`` put in the object store once; at most twice the
CPUs' worth of tasks are in flight (``ray.wait`` as they finish), so millions of chunks are not all
submitted at once. A task whose worker dies or raises is retried ``max_retries`` times (the chunk
task is idempotent and writes atomically); one that still fails raises :class:`RayTaskError`
naming it. A local instance started here is shut down at the end; a cluster is left running.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Sequence


class RayTaskError(RuntimeError):
    """A task failed on every attempt."""


def _ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ImportError("--engine ray needs Ray: pip install -e '.[prep]'") from err
    return ray


def _run(fn: Callable[[Any, Any], dict], task: Any, opts: Any) -> dict:
    return fn(task, opts)


def run_ray(fn: Callable[[Any, Any], dict], tasks: Sequence[Any], opts: Any, *, workers: int = 1,
            address: str | None = None, max_retries: int = 3) -> Iterator[dict]:
    ray = _ray()
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local instance: no token prompt or file
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR", runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
            started = True
    try:
        remote = ray.remote(max_retries=max_retries, retry_exceptions=True)(_run)
        shared = ray.put(opts)
        limit = 2 * max(1, int(ray.available_resources().get("CPU", workers)))
        pending: dict[Any, Any] = {}
        queue = list(tasks)
        while queue or pending:
            while queue and len(pending) < limit:
                task = queue.pop(0)
                pending[remote.remote(fn, task, shared)] = task
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            task = pending.pop(ref)
            try:
                yield ray.get(ref)
            except Exception as err:  # RayTaskError / WorkerCrashedError after the retries
                raise RayTaskError(f"task {getattr(task, 'name', task)!r} failed after {max_retries} retries: "
                                   f"{type(err).__name__}: {err}") from err
    finally:
        if started:
            ray.shutdown()
