"""The built-in suite: zero-shot, retrieval and compositionality on ROOT/{zeroshot,retrieval,compositional}."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

import torch

from eval.compositionality import evaluate_compositional
from eval.embed import EvalModel
from eval.retrieval import evaluate_retrieval
from eval.zeroshot import evaluate_zeroshot

Task = Callable[..., dict[str, Any]]

#: suite entry name -> (sub-directory under the root, task function)
BUILTIN_TASKS: dict[str, tuple[str, Task]] = {
    "zeroshot": ("zeroshot", evaluate_zeroshot),
    "retrieval": ("retrieval", evaluate_retrieval),
    "compositional": ("compositional", evaluate_compositional),
}


def evaluate_builtin(
    loaded: EvalModel,
    root: str | os.PathLike[str],
    batch_size: int = 256,
    *,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Run every built-in task on its folder under ``root``; return {entry name: result dict}.

    All three folders must exist (checked before any work starts).
    """
    root = Path(root)
    missing = [str(root / sub) for sub, _ in BUILTIN_TASKS.values() if not (root / sub).is_dir()]
    if missing:
        raise FileNotFoundError(f"built-in eval root {root} lacks: {', '.join(missing)}")
    return {
        name: task(loaded, root / sub, batch_size=batch_size, device=device, num_workers=num_workers, progress=progress)
        for name, (sub, task) in BUILTIN_TASKS.items()
    }


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
