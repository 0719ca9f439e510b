"""Eval tasks, one file each, each declaring a :class:`~eval.tasks.task.Task` that
:mod:`eval.tasks.registry` picks up (CLI sub-commands, ``eval run``, the built-in suite)."""
