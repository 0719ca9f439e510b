"""Experiment trackers through accelerate: TensorBoard event files and Weights & Biases runs.

``train.report_to`` names them ('tensorboard', 'wandb', both comma-separated, or 'none');
metrics.jsonl is written whatever it says. The Accelerator exists before the run directory is
known (its name may be broadcast from rank 0), so the trackers are built here, once the run
directory is, as accelerate's own tracker classes (``TensorBoardTracker``, ``WandBTracker``)
handed to that Accelerator (``log_with`` + ``init_trackers``); from then on ``accelerator.log``
writes them on rank 0 only, and ``accelerator.end_training`` would finish any left open.

TensorBoard writes into ``<run>/tensorboard/``; a resumed run appends a new event file there and
hides what the old files hold after the step it resumes from (``purge_step``), as metrics.jsonl
moves those lines aside. A W&B run is named after the run directory with an id derived from its
path, so a resumed run continues the same W&B run (``resume="allow"``; offline with
``WANDB_MODE=offline``). A tracker whose package is missing is skipped with one warning that
names the pip command.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import numbers
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, TensorBoardTracker, WandBTracker

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
INSTALL_HINT = "pip install 'vlp[track]'"
WANDB_PROJECT = "vlp"
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
"""The package each tracker needs (``torch.utils.tensorboard`` needs ``tensorboard``)."""


def tracker_names(report_to: str) -> List[str]:
    """The trackers ``train.report_to`` names, in order ('none': none)."""
    return [name for name in (part.strip() for part in report_to.split(",")) if name and name != "none"]


def package_available(name: str) -> bool:
    """Whether the package tracker ``name`` needs imports."""
    try:
        importlib.import_module(PACKAGES[name])
    except ImportError:
        return False
    return True


def numeric_values(record: Mapping[str, Any]) -> Dict[str, float | int]:
    """The numbers of a metrics record (ints stay ints); strings, nested dicts and lists are left out."""
    out: Dict[str, float | int] = {}
    for key, value in record.items():
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, numbers.Integral):
            out[key] = int(value)
        elif isinstance(value, numbers.Real):
            out[key] = float(value)
    return out


def flat_config(cfg: Any) -> Dict[str, Any]:
    """The config as dotted keys with scalar values (lists and dicts in a leaf become strings), for W&B."""
    def walk(value: Any, prefix: str, out: Dict[str, Any]) -> Dict[str, Any]:
        if isinstance(value, Mapping) and value:
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key), out)
        elif isinstance(value, (list, tuple, dict)):
            out[prefix] = str(value)
        else:
            out[prefix] = value
        return out

    return walk(asdict(cfg), "", {})


def wandb_run_id(run_root: Path) -> str:
    """A W&B run id that is the same for every start of the run in ``run_root``."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", run_root.name)[:48]
    return f"{name}-{hashlib.sha1(str(run_root.resolve()).encode()).hexdigest()[:8]}"


class Trackers:
    """The run's trackers, registered with its Accelerator: :meth:`log` a record at a step,
    :meth:`close` at the end (or on an error). Empty on ranks other than 0 and for 'none'."""

    def __init__(self, accelerator: Accelerator, trackers: List[GeneralTracker], root: Path) -> None:
        self.accelerator = accelerator
        self.trackers = trackers
        self.root = root

    @property
    def names(self) -> List[str]:
        return [t.name for t in self.trackers]

    @property
    def tensorboard_dir(self) -> Optional[Path]:
        """Where the event files go, when TensorBoard is one of the trackers."""
        return self.root / TENSORBOARD_DIR if "tensorboard" in self.names else None

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """The numbers of ``record`` at ``step`` to every tracker (rank 0; nothing elsewhere)."""
        values = numeric_values(record)
        values.pop("step", None)  # the x axis, not a series
        if self.trackers and values:
            self.accelerator.log(values, step=step)

    def close(self) -> None:
        """Finish every tracker (flushing its files) and hand it back from the Accelerator; idempotent."""
        for tracker in self.trackers:
            tracker.finish()
            for registry in (self.accelerator.trackers, self.accelerator.log_with):
                if tracker in registry:
                    registry.remove(tracker)
        self.trackers = []


def _build(name: str, cfg: Any, run_root: Path, start_step: int) -> GeneralTracker:
    if name == "tensorboard":
        # a resumed run hides the old files' events after the step it continues from
        return TensorBoardTracker(TENSORBOARD_DIR, run_root, **({"purge_step": start_step + 1} if start_step else {}))
    return WandBTracker(WANDB_PROJECT, name=run_root.name, id=wandb_run_id(run_root), resume="allow",
                        dir=str(run_root))


def open_trackers(accelerator: Accelerator, cfg: Any, run_root: Path | str, start_step: int = 0) -> Trackers:
    """The trackers ``cfg.train.report_to`` names for the run in ``run_root`` (created on rank 0
    by now), continuing from ``start_step`` (the step a resumed run restarts at; 0 for a new run).

    Only rank 0 builds any; a tracker whose package is missing is skipped with a warning naming
    the pip command, and the run goes on. W&B also receives the config (flattened).
    """
    run_root = Path(run_root)
    if not accelerator.is_main_process:
        return Trackers(accelerator, [], run_root)
    built: List[GeneralTracker] = []
    for name in tracker_names(cfg.train.report_to):
        if not package_available(name):
            log.warning("train.report_to=%s: the %s package is not installed, so this run logs without it "
                        "(metrics.jsonl is still written); install it with: %s", cfg.train.report_to, name,
                        INSTALL_HINT)
            continue
        built.append(_build(name, cfg, run_root, start_step))
    if built:
        before = list(accelerator.log_with)
        accelerator.log_with = built  # init_trackers starts what log_with holds: these, once
        try:
            accelerator.init_trackers(WANDB_PROJECT)  # the tensorboard one makes its folder
        finally:
            accelerator.log_with = before + built
        for tracker in built:
            if isinstance(tracker, WandBTracker):
                tracker.store_init_configuration(flat_config(cfg))  # TensorBoard: config.yaml is beside it
    return Trackers(accelerator, built, run_root)
