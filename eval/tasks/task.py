"""What an eval task declares; :mod:`eval.tasks.registry` picks the declarations up.

A task module holds ``TASK = Task(...)`` (or ``TASKS = (Task(...), ...)`` for a family of
tasks). Everything else is generated from these declarations: the CLI sub-command of each task
(its name, its options), ``eval run``'s ``--tasks`` and ``KIND:`` choices and which task reads
which dataset, the built-in suite and the end-of-training evaluation. Example::

    TASK = Task(name="zeroshot", kinds=("classification",), open=open_classification_set, run=zeroshot_task,
                help="zero-shot classification (acc@1/5, mean per-class recall)", order=10, builtin="zeroshot")

``open(spec, options)`` gives the task's reader of one dataset (all are opened, so checked,
before anything is encoded), or a list of readers when one dataset gives several results (ARO:
one per subset file). ``run(encoder, dataset, options)`` encodes through ``encoder`` (embedding
cache, data parallel) and returns the result dict, in CLIP_benchmark's format (its ``task``
field keeps CLIP_benchmark's names). ``options`` maps each option's ``dest`` to its value (the
command line's, or its declared default), plus ``outputs``: where the task may write files
besides its result JSON (:class:`Outputs`; None on ranks other than 0 and when nothing is written).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

SCOPES = ("task", "run", "builtin")  # a task's own sub-command, `eval run`, `eval builtin`


@dataclass(frozen=True)
class Option:
    """One command-line option: argparse ``flags`` and ``add_argument`` keywords, on the
    commands named in ``scopes`` (see :data:`SCOPES`)."""

    flags: tuple[str, ...]
    kwargs: Mapping[str, Any]
    scopes: frozenset[str]

    @property
    def dest(self) -> str:
        return str(self.kwargs.get("dest") or self.flags[0].lstrip("-").replace("-", "_"))

    @property
    def default(self) -> Any:
        return self.kwargs.get("default", False if self.kwargs.get("action") == "store_true" else None)


def option(*flags: str, scopes: tuple[str, ...] = ("task",), **kwargs: Any) -> Option:
    """``Option(flags, kwargs, scopes)``: ``option("--search", scopes=("task", "run"), default="auto")``."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown option scope(s) {', '.join(unknown)}; choose from {', '.join(SCOPES)}")
    return Option(tuple(flags), dict(kwargs), frozenset(scopes))


@dataclass(frozen=True)
class Outputs:
    """Where a task may write files besides its result JSON: in ``eval run``, beside the results
    as ``<stem>_<what><suffix>`` (``stem`` = OUT/<dataset>); for a single-task command, beside
    its ``--output`` JSON with that file's name."""

    stem: Path | None = None
    result: Path | None = None

    def file(self, what: str, suffix: str) -> Path:
        if self.result is not None:
            return self.result.with_suffix(suffix)
        return Path(f"{self.stem}_{what}{suffix}")


@dataclass(frozen=True)
class Task:
    """One eval task (see the module docstring).

    ``name``: its sub-command. ``family``: the ``eval run --tasks`` name that selects it, which
    also names its files ``<dataset>_<family>.json`` (default: ``name``). ``kinds``: the dataset
    kinds it reads. ``order``: its place in listings and in the run order over one dataset.
    ``builtin``: its folder under the built-in eval root, when it is part of the built-in suite.
    ``detect``: for a kind only this task reads, tells that kind from a folder's files.
    ``folder``: its dataset is always a folder. ``named_by_result``: its files are named after
    the result's ``dataset`` (e.g. ``aro_vg_relation``), not after the dataset folder.
    """

    name: str
    kinds: tuple[str, ...]
    open: Callable[[Any, dict[str, Any]], Any]
    run: Callable[[Any, Any, dict[str, Any]], dict[str, Any]]
    options: tuple[Option, ...] = ()
    help: str = ""
    family: str = ""
    order: int = 100
    builtin: str | None = None
    detect: Callable[[Path], bool] | None = None
    folder: bool = False
    named_by_result: bool = False

    def __post_init__(self) -> None:
        if not self.family:
            object.__setattr__(self, "family", self.name)
