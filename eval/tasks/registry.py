"""The one table of eval tasks: every ``TASK`` / ``TASKS`` declared by a module of
:mod:`eval.tasks` (see :mod:`eval.tasks.task`), found by listing the package.

Adding a task is one new file in ``eval/tasks/`` holding its ``TASK = Task(...)``; the CLI
sub-commands, ``eval run`` (its task list, its dataset kinds and which task reads which kind),
the built-in suite and the end-of-training evaluation all read it from here.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, Optional

from eval.tasks.task import Option, Task

_TASKS: Optional[dict[str, Task]] = None


def _discover() -> dict[str, Task]:
    declared: list[Task] = []
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        module = importlib.import_module(f"eval.tasks.{info.name}")
        declared += [module.TASK] if hasattr(module, "TASK") else list(getattr(module, "TASKS", ()))
    tasks: dict[str, Task] = {}
    for task in sorted(declared, key=lambda t: (t.order, t.name)):
        if task.name in tasks:
            raise RuntimeError(f"two eval tasks are named {task.name!r}")
        tasks[task.name] = task
    return tasks


def all_tasks() -> list[Task]:
    """Every declared task, in order (``Task.order``)."""
    global _TASKS
    if _TASKS is None:
        _TASKS = _discover()
    return list(_TASKS.values())


def register_task(task: Task) -> Task:
    """Add ``task`` to the table: for a task declared outside ``eval/tasks/`` (a plugin, a test).
    A task inside the package needs no call: its module's ``TASK`` is found by listing."""
    all_tasks()
    assert _TASKS is not None
    if task.name in _TASKS:
        raise RuntimeError(f"two eval tasks are named {task.name!r}")
    _TASKS[task.name] = task
    ordered = sorted(_TASKS.values(), key=lambda t: (t.order, t.name))
    _TASKS.clear()
    _TASKS.update((t.name, t) for t in ordered)
    return task


def get_task(name: str) -> Task:
    for task in all_tasks():
        if task.name == name:
            return task
    raise ValueError(f"unknown task {name!r}; choose from {', '.join(t.name for t in all_tasks())}")


def families() -> list[str]:
    """The task names ``eval run --tasks`` takes, in order."""
    return list(dict.fromkeys(t.family for t in all_tasks()))


def kinds() -> list[str]:
    """Every dataset kind some task reads, in order."""
    return list(dict.fromkeys(k for t in all_tasks() for k in t.kinds))


def readers_of(kind: str, wanted: list[str] | None = None) -> list[Task]:
    """The tasks (of the ``wanted`` families; all when None) that read datasets of ``kind``, in order."""
    return [t for t in all_tasks() if kind in t.kinds and (wanted is None or t.family in wanted)]


def builtin_tasks() -> list[Task]:
    """The built-in suite: the tasks with a folder under the built-in root, in order."""
    return [t for t in all_tasks() if t.builtin]


def options(scope: str) -> list[Option]:
    """The options of every task on commands of ``scope`` (one per flag), in task order."""
    seen: dict[tuple[str, ...], Option] = {}
    for task in all_tasks():
        for option in task.options:
            if scope in option.scopes:
                seen.setdefault(option.flags, option)
    return list(seen.values())


def defaults(scope: str) -> dict[str, Any]:
    """{dest: default} of the options of ``scope``."""
    return {option.dest: option.default for option in options(scope)}
