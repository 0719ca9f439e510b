"""The built-in suite: zero-shot, retrieval and compositionality on ROOT/{zeroshot,retrieval,compositional}.

It is ``eval run`` on those three folders (:func:`eval.run.run_tasks`): the same tasks, readers,
files and, from the CLI, the same embedding cache. :func:`evaluate_builtin` runs it on a model in
memory (the trainer's final evaluation) without writing anything.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from eval.embed import EvalModel
from eval.encoder import Encoder
from eval.run import DatasetSpec, RunOptions, run_tasks

#: suite entry name -> (sub-directory under the root, task of ``eval run``, dataset kind)
BUILTIN_TASKS: dict[str, tuple[str, str, str]] = {
    "zeroshot": ("zeroshot", "zeroshot", "classification"),
    "retrieval": ("retrieval", "retrieval", "retrieval"),
    "compositional": ("compositional", "compositionality", "compositional"),
}


def builtin_datasets(root: str | os.PathLike[str]) -> list[DatasetSpec]:
    """The suite's datasets under ``root``; all three folders must exist (FileNotFoundError)."""
    root = Path(root)
    missing = [str(root / sub) for sub, _, _ in BUILTIN_TASKS.values() if not (root / sub).is_dir()]
    if missing:
        raise FileNotFoundError(f"built-in eval root {root} lacks: {', '.join(missing)}")
    return [DatasetSpec(kind, root / sub) for sub, _, kind in BUILTIN_TASKS.values()]


def run_builtin(encoder: Encoder, root: str | os.PathLike[str], output_dir: str | os.PathLike[str] | None,
                options: RunOptions | None = None) -> dict[str, dict[str, Any]]:
    """``eval run`` of the suite's tasks on its datasets (files in ``output_dir`` as ``eval run
    --output`` writes them; none when None); return {entry name: result dict}."""
    specs = builtin_datasets(root)
    tasks = [task for _, task, _ in BUILTIN_TASKS.values()]
    results = run_tasks(encoder, tasks, specs, output_dir, options)
    if len(results) != len(BUILTIN_TASKS):  # one result per folder, in folder order
        raise RuntimeError(f"built-in suite expected {len(BUILTIN_TASKS)} results, got {len(results)}")
    return dict(zip(BUILTIN_TASKS, results))


def evaluate_builtin(
    loaded: EvalModel,
    root: str | os.PathLike[str],
    batch_size: int = 256,
    *,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Run every built-in task of an in-memory model on its folder under ``root`` (no cache, one
    process, no files); return {entry name: result dict}.

    All three folders must exist (checked before any work starts).
    """
    encoder = Encoder.for_loaded(loaded, batch_size, device, num_workers, progress)
    return run_builtin(encoder, root, None, RunOptions(batch_size, num_workers, progress, grid_queries=0))


def flat_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{"<entry>/<metric>": value} plus "<entry>/skipped", e.g. for a training logger."""
    flat: dict[str, float] = {}
    for name, result in results.items():
        for key, value in result["metrics"].items():
            flat[f"{name}/{key}"] = float(value)
        flat[f"{name}/skipped"] = float(result.get("skipped", 0))
    return flat


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one row per (task, metric), then the skipped count of each task."""
    rows = [("task", "dataset", "metric", "value")]
    for name, result in results.items():
        for key, value in result["metrics"].items():
            rows.append((name, str(result.get("dataset", "")), key, _fmt(value)))
        rows.append((name, str(result.get("dataset", "")), "skipped", _fmt(result.get("skipped", 0))))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
