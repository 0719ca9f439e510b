"""Checkpoints: atomic writes, safe loads (weights_only=True), newest-first discovery, pruning.

Files live in RUN_DIR/checkpoints/ as step-00001000.pt and final.pt. Each holds the model state,
the optimizer and scheduler states, the step and the resolved config as YAML text, so a checkpoint
alone rebuilds its model. Loading never runs code from the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from vlp.utils.atomic import open_atomic

STEP_PATTERN = re.compile(r"step-(\d+)\.pt$")
FINAL_NAME = "final.pt"


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same directory, then rename over ``path``."""
    with open_atomic(path, "wb") as handle:
        torch.save(obj, handle)


def step_checkpoints(ckpt_dir: Path) -> List[Path]:
    """Step checkpoints in ``ckpt_dir``, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in ckpt_dir.iterdir() if STEP_PATTERN.search(p.name)]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_or_file: Path) -> Optional[Path]:
    """The checkpoint to load from a file or run directory: final.pt, else the newest step file."""
    run_or_file = Path(run_or_file)
    if run_or_file.is_file():
        return run_or_file
    ckpt_dir = run_or_file / "checkpoints" if (run_or_file / "checkpoints").is_dir() else run_or_file
    if (ckpt_dir / FINAL_NAME).is_file():
        return ckpt_dir / FINAL_NAME
    steps = step_checkpoints(ckpt_dir)
    return steps[-1] if steps else None


def select_checkpoint(run_or_file: Path, which: str = "auto") -> Path:
    """The checkpoint ``which`` names in a run directory (or ``run_or_file`` itself when it is a file):
    'auto' (final.pt, else the newest step file), 'final', 'newest' (the most steps done, as resume
    picks) or a file name in the run's checkpoints folder (``step-00001000.pt``) or a path.
    FileNotFoundError naming what exists when there is no such checkpoint."""
    run_or_file = Path(run_or_file)
    if not run_or_file.exists():
        raise FileNotFoundError(f"model not found: {run_or_file}")
    if run_or_file.is_file():
        if which not in ("auto", "final", "newest"):
            raise ValueError(f"--checkpoint {which!r} names a checkpoint of a run directory, but {run_or_file} is a file")
        return run_or_file
    ckpt_dir = run_or_file / "checkpoints" if (run_or_file / "checkpoints").is_dir() else run_or_file
    found = ([ckpt_dir / FINAL_NAME] if (ckpt_dir / FINAL_NAME).is_file() else []) + step_checkpoints(ckpt_dir)
    names = ", ".join(p.name for p in found) or "none"
    if which == "auto":
        chosen = latest_checkpoint(run_or_file)
    elif which == "final":
        chosen = ckpt_dir / FINAL_NAME if (ckpt_dir / FINAL_NAME).is_file() else None
    elif which == "newest":
        newest = newest_for_resume(ckpt_dir)
        chosen = newest[0] if newest else None
    else:
        named = Path(which)
        chosen = next((p for p in (named, ckpt_dir / named.name) if p.is_file()), None)
    if chosen is None:
        raise FileNotFoundError(f"no checkpoint {which!r} in {ckpt_dir} (checkpoints there: {names})")
    return chosen


def newest_for_resume(ckpt_dir: Path) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The checkpoint with the most steps done, and its state: final.pt, unless a step file is
    further on (a run extended past its first final.pt that stopped before its new end)."""
    final = ckpt_dir / FINAL_NAME
    state = load_checkpoint(final) if final.is_file() else None
    steps = step_checkpoints(ckpt_dir)
    if steps and (state is None or checkpoint_step(steps[-1]) > int(state["step"])):
        return steps[-1], load_checkpoint(steps[-1])
    return (final, state) if state is not None else None


def checkpoint_step(path: Path) -> int:
    """The step in a step checkpoint's file name."""
    match = STEP_PATTERN.search(Path(path).name)
    if match is None:
        raise ValueError(f"not a step checkpoint name: {path}")
    return int(match.group(1))


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """The checkpoint dict at ``path``, loaded with weights_only=True on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def prune_step_checkpoints(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (final.pt is never touched)."""
    for path in step_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)
