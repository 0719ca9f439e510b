"""Engines that run independent tasks: ``run_tasks(engine, fn, tasks, *args, ...)`` calls
``fn(task, *args)`` for every task and yields the results as they complete (any order), so a
caller can show progress. ``fn`` must be a module-level function (or a ``functools.partial`` of
one) of an importable module; ``tasks`` and ``args`` must pickle. Ingest runs its chunk tasks so.

- ``local`` (:mod:`data_prep.engines.local`): in this process (``workers`` <= 1) or a process
  pool of ``workers``; no retries (a rerun resumes).
- ``ray`` (:mod:`data_prep.engines.ray_engine`): Ray tasks on a local instance of ``workers``
  CPUs, or on the cluster at ``address`` (``'auto'``, ``'ray://HOST:10001'``); a task that raises
  or whose worker dies is retried ``max_retries`` times; the project's code is shipped to the
  workers. Ray is imported only here, and its absence is a clear error.

A task that fails for good raises :class:`TaskFailedError` naming it (the local engine re-raises
the task's own exception, with a note naming the task). PySpark would run the same tasks
(``sc.parallelize(tasks).map(...)``, ``local[2]`` or a master URL); it needs a Java runtime that a
fresh machine may lack, so Ray is the distributed engine and Spark is future work.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from data_prep.engines.local import run_local
from data_prep.engines.task_failed import TaskFailedError, task_name

ENGINES = ("local", "ray")

__all__ = ["ENGINES", "TaskFailedError", "run_local", "run_tasks", "task_name"]


def run_tasks(engine: str, fn: Callable[..., dict], tasks: Iterable[Any], *args: Any, workers: int = 1,
              address: str | None = None, max_retries: int = 3) -> Iterator[dict]:
    """``fn(task, *args)`` for every task on ``engine``; the results as they complete.

    ``workers``: processes (local) or CPUs of a local Ray instance; ``address``: a Ray cluster
    (``--engine ray`` only); ``max_retries``: further attempts of a failing Ray task."""
    if engine == "local":
        if address:
            raise ValueError("--ray-address applies to --engine ray, not --engine local")
        return run_local(fn, tasks, *args, workers=workers)
    if engine == "ray":
        from data_prep.engines.ray_engine import import_ray, run_ray

        import_ray()  # a missing Ray fails here, before any work
        return run_ray(fn, tasks, *args, workers=workers, address=address, max_retries=max_retries)
    raise ValueError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
