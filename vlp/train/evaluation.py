"""The evaluations the trainer calls, implemented by an application: at the end, and periodic.

The library never imports its applications, so the trainer receives its evaluation as a
function ``evaluate(model, cfg, run_dir) -> results or None``, called on every rank after the
final checkpoint (each rank may encode its part; files are the implementation's to write, once).
``train.py`` hands in eval's (``eval.training.evaluate_at_end``); a caller that passes nothing
gets the one an installed distribution declares under the entry-point group ``vlp.evaluation``
with the name ``at_end`` (this project's pyproject.toml declares eval's), or none when no
distribution declares one.

The periodic evaluation (every ``eval.every`` steps) is the same kind of interface:
``evaluate(model, cfg, run_dir, step) -> {"eval/<entry>/<metric>": number}``, called on every
rank (all get the same dict, which the trainer logs with the step), resolved by
:func:`resolve_periodic` from a function, :data:`INSTALLED` (entry point name ``periodic``;
eval's is ``eval.training.evaluate_periodic``) or None. A periodic evaluation may carry a
``check(cfg)`` attribute that refuses a config it cannot run; :func:`check_periodic` calls it
before any work, so a bad ``eval.every_tasks`` stops the run at its start, not at step ``eval.every``.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

log = logging.getLogger(__name__)

EvaluateAtEnd = Callable[[Any, Any, Path], Optional[Dict[str, Any]]]
EvaluatePeriodic = Callable[[Any, Any, Path, int], Dict[str, float]]
"""``evaluate(model, cfg, run_dir, step) -> {"eval/<entry>/<metric>": number}`` on every rank."""
ENTRY_POINT_GROUP = "vlp.evaluation"
ENTRY_POINT_NAME = "at_end"
PERIODIC_ENTRY_POINT_NAME = "periodic"


class InstalledEvaluation:
    """The default of ``train(evaluate=...)``: the evaluation an installed application provides."""

    def __repr__(self) -> str:
        return "INSTALLED"


INSTALLED = InstalledEvaluation()
EvaluationChoice = Union[EvaluateAtEnd, InstalledEvaluation, None]
"""What ``train(evaluate=...)`` takes: a function, :data:`INSTALLED`, or None for no evaluation."""
PeriodicChoice = Union[EvaluatePeriodic, InstalledEvaluation, None]
"""What the trainer takes for its periodic evaluation: a function, :data:`INSTALLED`, or None for none."""


def _installed(name: str, what: str, without: str) -> Optional[Callable[..., Any]]:
    found = list(entry_points(group=ENTRY_POINT_GROUP, name=name))
    if not found:
        log.warning("no %s is installed (entry point %s:%s; install the project with `pip install -e .` to get "
                    "eval's), so %s", what, ENTRY_POINT_GROUP, name, without)
        return None
    return found[0].load()


def installed_evaluation() -> Optional[EvaluateAtEnd]:
    """The evaluation declared under ``vlp.evaluation:at_end``, or None (with a warning) when none is."""
    return _installed(ENTRY_POINT_NAME, "end-of-training evaluation", "training ends without one")


def installed_periodic() -> Optional[EvaluatePeriodic]:
    """The evaluation declared under ``vlp.evaluation:periodic``, or None (with a warning) when none is."""
    return _installed(PERIODIC_ENTRY_POINT_NAME, "periodic evaluation", "eval.every is ignored")


def _resolved(choice: Any, installed: Callable[[], Any], what: str) -> Any:
    if isinstance(choice, InstalledEvaluation):
        return installed()
    if choice is not None and not callable(choice):
        raise TypeError(f"{what} must be a function, INSTALLED or None, got {choice!r}")
    return choice


def resolve_evaluation(evaluate: EvaluationChoice) -> Optional[EvaluateAtEnd]:
    """``evaluate`` itself, the installed one for :data:`INSTALLED`, None for None."""
    return _resolved(evaluate, installed_evaluation, "evaluate")


def resolve_periodic(choice: PeriodicChoice) -> Optional[EvaluatePeriodic]:
    """The periodic evaluation: ``choice`` itself, the installed one (``vlp.evaluation:periodic``)
    for :data:`INSTALLED`, None for None."""
    return _resolved(choice, installed_periodic, "periodic evaluation")


def check_periodic(evaluate: Optional[EvaluatePeriodic], cfg: Any) -> None:
    """Let the periodic evaluation refuse ``cfg`` before any work: its ``check(cfg)`` when it has one
    (raising ConfigError); nothing for None or a function without one."""
    check = getattr(evaluate, "check", None)
    if check is not None:
        check(cfg)
