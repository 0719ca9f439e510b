"""The end-of-training evaluation: an interface the trainer calls, implemented by an application.

The library never imports its applications, so the trainer receives its evaluation as a
function ``evaluate(model, cfg, run_dir) -> results or None``, called on every rank after the
final checkpoint (each rank may encode its part; files are the implementation's to write, once).
``train.py`` hands in eval's (``eval.training.evaluate_at_end``); a caller that passes nothing
gets the one an installed distribution declares under the entry-point group ``vlp.evaluation``
with the name ``at_end`` (this project's pyproject.toml declares eval's), or none when no
distribution declares one.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

log = logging.getLogger(__name__)

EvaluateAtEnd = Callable[[Any, Any, Path], Optional[Dict[str, Any]]]
ENTRY_POINT_GROUP = "vlp.evaluation"
ENTRY_POINT_NAME = "at_end"
class InstalledEvaluation:
    """The default of ``train(evaluate=...)``: the evaluation an installed application provides."""

    def __repr__(self) -> str:
        return "INSTALLED"


INSTALLED = InstalledEvaluation()
EvaluationChoice = Union[EvaluateAtEnd, InstalledEvaluation, None]
"""What ``train(evaluate=...)`` takes: a function, :data:`INSTALLED`, or None for no evaluation."""


def installed_evaluation() -> Optional[EvaluateAtEnd]:
    """The evaluation declared under ``vlp.evaluation:at_end``, or None (with a warning) when none is."""
    found = list(entry_points(group=ENTRY_POINT_GROUP, name=ENTRY_POINT_NAME))
    if not found:
        log.warning("no end-of-training evaluation is installed (entry point %s:%s; install the project with "
                    "`pip install -e .` to get eval's), so training ends without one", ENTRY_POINT_GROUP,
                    ENTRY_POINT_NAME)
        return None
    return found[0].load()


def resolve_evaluation(evaluate: EvaluationChoice) -> Optional[EvaluateAtEnd]:
    """``evaluate`` itself, the installed one for :data:`INSTALLED`, None for None."""
    if isinstance(evaluate, InstalledEvaluation):
        return installed_evaluation()
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate must be a function, INSTALLED or None, got {evaluate!r}")
    return evaluate
