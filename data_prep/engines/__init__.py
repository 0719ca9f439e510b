"""Engines that run ingest's chunk tasks: ``run_tasks(engine, fn, tasks, opts, ...)`` calls
``fn(task, opts)`` for every task and yields the results as they complete (any order).

- ``local``: in this process (``workers`` <= 1) or a process pool of ``workers``.
- ``ray``: Ray tasks (``data_prep.engines.ray_engine``): a local Ray instance of ``workers`` CPUs,
  or the cluster at ``address`` ('auto', 'ray://HOST:10001'); a task whose worker dies or raises
  is retried (the chunk task is idempotent and writes atomically, so a retry never duplicates a
  shard).

PySpark would run the same tasks (``rdd.map`` over the task list); it needs a Java runtime, which a
fresh machine may lack, so Ray is the engine here and Spark is future work.
"""

from __future__ import annotations

import multiprocessing
from functools import partial
from typing import Any, Callable, Iterator, Sequence

ENGINES = ("local", "ray")


def run_local(fn: Callable[[Any, Any], dict], tasks: Sequence[Any], opts: Any, workers: int) -> Iterator[dict]:
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield fn(task, opts)
        return
    with multiprocessing.get_context().Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap_unordered(partial(fn, opts=opts), tasks, chunksize=1)


def run_tasks(engine: str, fn: Callable[[Any, Any], dict], tasks: Sequence[Any], opts: Any, *,
              workers: int = 1, address: str | None = None, max_retries: int = 3) -> Iterator[dict]:
    """``fn(task, opts)`` for every task on ``engine``; results as they complete."""
    if engine == "local":
        if address:
            raise ValueError("--ray-address applies to --engine ray")
        return run_local(fn, tasks, opts, workers)
    if engine == "ray":
        from data_prep.engines.ray_engine import run_ray

        return run_ray(fn, tasks, opts, workers=workers, address=address, max_retries=max_retries)
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
