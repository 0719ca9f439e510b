"""The built-in suite: the tasks that declare a folder under the built-in root (``Task.builtin``:
zero-shot, retrieval and compositionality on ROOT/{zeroshot,retrieval,compositional}), plus
captioning on ROOT/retrieval for a model with a caption head (CoCa).

It is ``eval run`` on those folders (:func:`eval.run.run_tasks`): the same tasks, readers, files
and embedding cache. :func:`evaluate_builtin` runs it on a model in memory without writing
anything; :func:`eval.training.evaluate_at_end` is the trainer's end-of-training evaluation, and
:func:`eval.training.evaluate_periodic` its evaluation during training (the tasks of ``eval.every_tasks``:
:func:`run_builtin` takes such a selection).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from eval.datasets.kinds import DatasetSpec
from eval.encoding.embed import EvalModel
from eval.encoding.encoder import Encoder
from eval.run import RunOptions, run_tasks
from eval.tasks import registry
from eval.tasks.task import Task


def builtin_datasets(root: str | os.PathLike[str], tasks: Sequence[Task] | None = None) -> list[DatasetSpec]:
    """The datasets under ``root`` of the suite's ``tasks`` (default: all); every folder must exist (FileNotFoundError)."""
    root = Path(root)
    tasks = registry.builtin_tasks() if tasks is None else tasks
    missing = [str(root / t.builtin) for t in tasks if not (root / str(t.builtin)).is_dir()]
    if missing:
        raise FileNotFoundError(f"built-in eval root {root} lacks: {', '.join(missing)}")
    return [DatasetSpec(t.kinds[0], root / str(t.builtin)) for t in tasks]


def builtin_selection(only: Sequence[str] | None = None) -> list[Task]:
    """The suite's tasks, or those of them ``only`` names (a task's name or family; ``captioning``
    rides on retrieval); ValueError naming the choices for any other name."""
    tasks = registry.builtin_tasks()
    if only is None:
        return tasks
    choices = list(dict.fromkeys([n for t in tasks for n in (t.name, t.family)] + [CAPTIONING]))
    unknown = [name for name in only if name not in choices]
    if unknown:
        raise ValueError(f"unknown built-in eval task(s) {', '.join(unknown)}; choose from {', '.join(choices)}")
    if CAPTIONING in only and not any(t.builtin == CAPTIONED_FOLDER and {t.name, t.family} & set(only) for t in tasks):
        raise ValueError(f"{CAPTIONING} scores the {CAPTIONED_FOLDER} folder: name {CAPTIONED_FOLDER} with it")
    return [t for t in tasks if t.name in only or t.family in only]


def run_builtin(encoder: Encoder, root: str | os.PathLike[str], output_dir: str | os.PathLike[str] | None,
                options: RunOptions | None = None, only: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """``eval run`` of the suite's tasks (those ``only`` names, see :func:`builtin_selection`) on
    its datasets (files in ``output_dir`` as ``eval run --output`` writes them; none when None);
    return {entry name (its folder): result dict}."""
    tasks = builtin_selection(only)
    specs = builtin_datasets(root, tasks)
    families, names = [t.family for t in tasks], [str(t.builtin) for t in tasks]
    # a CoCa model also captions the retrieval folder's images, after retrieval
    if (only is None or CAPTIONING in only) and _captions(encoder):
        families.append(CAPTIONING)
        names.insert(names.index(CAPTIONED_FOLDER) + 1, CAPTIONING)
    results = run_tasks(encoder, families, specs, output_dir, options)
    if len(results) != len(names):  # one result per folder (and captioning), in folder order
        raise RuntimeError(f"built-in suite expected {len(names)} results, got {len(results)}")
    return dict(zip(names, results))


CAPTIONING = "captioning"
CAPTIONED_FOLDER = "retrieval"
"""The built-in folder whose reference captions the captioning task scores (for models with a caption head)."""


def _captions(encoder: Encoder) -> bool:
    """True when the encoder's model has a caption head and the captioning task is registered."""
    if CAPTIONING not in registry.families():
        return False
    from eval.captioning.generate import caption_head_reason

    return caption_head_reason(encoder) is None


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

    All folders must exist (checked before any work starts).
    """
    encoder = Encoder.for_loaded(loaded, batch_size, device, num_workers, progress)
    return run_builtin(encoder, root, None, RunOptions(grid_queries=0))


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
