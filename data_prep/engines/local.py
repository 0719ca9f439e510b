"""The ``local`` engine: tasks in this process (``workers`` <= 1) or in a pool of ``workers``
processes, results as they complete, at most twice the workers' worth of tasks submitted at a time.

No retries: a task's exception propagates with its type kept (a note names the task), and a
worker that dies (killed, out of memory) ends the run with :class:`TaskFailedError` instead of a
hang. Finished tasks keep their output, so rerunning resumes; Ray retries in place.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, Sized

from data_prep.engines.task_failed import TaskFailedError, task_name


def _noted(err: BaseException, task: Any) -> BaseException:
    err.add_note(f"(in task {task_name(task)!r})")
    return err


def _in_process(fn: Callable[..., dict], tasks: Iterable[Any], args: tuple) -> Iterator[dict]:
    for task in tasks:
        try:
            result = fn(task, *args)
        except BaseException as err:
            raise _noted(err, task)
        yield result


def _outcome(future: Future, task: Any) -> dict:
    try:
        return future.result()
    except BrokenProcessPool as err:
        raise TaskFailedError(task, "did not finish: a worker process of the local pool died (killed? out "
                              "of memory?); the local engine does not retry: rerun to resume, or use --engine ray") from err
    except BaseException as err:
        raise _noted(err, task)


def run_local(fn: Callable[..., dict], tasks: Iterable[Any], *args: Any, workers: int = 1) -> Iterator[dict]:
    """``fn(task, *args)`` for every task; yields each result as it completes (any order)."""
    if isinstance(tasks, Sized):
        workers = min(workers, len(tasks))
    if workers <= 1:
        yield from _in_process(fn, tasks, args)
        return
    todo = iter(tasks)
    pending: dict[Future, Any] = {}
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context())
    try:
        while True:
            for task in islice(todo, 2 * workers - len(pending)):
                pending[pool.submit(fn, task, *args)] = task
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield _outcome(future, pending.pop(future))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
