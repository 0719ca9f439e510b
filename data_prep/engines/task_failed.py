"""The error an engine raises when a task cannot be completed, naming the task."""

from __future__ import annotations

from typing import Any


def task_name(task: Any) -> str:
    """What an error calls ``task``: its ``name`` (ingest's ``ChunkTask``: the shard), else its repr."""
    name = getattr(task, "name", None)
    if isinstance(name, str) and name:
        return name
    text = repr(task)
    return text if len(text) <= 120 else text[:117] + "..."


class TaskFailedError(RuntimeError):
    """Task ``task`` failed for good (on every attempt its engine allows, or its worker died);
    ``__cause__`` holds the last error. Finished tasks keep their output: rerunning resumes."""

    def __init__(self, task: Any, reason: str) -> None:
        self.task = task
        super().__init__(f"task {task_name(task)!r} {reason}")
