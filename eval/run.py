"""``python -m eval run``: every requested task on every dataset it applies to, through one
encoder (embedding cache + data parallel), writing one JSON per (dataset, task), a merged CSV,
a markdown summary, and for retrieval a PNG grid of the top-5 images of a few text queries.

Dataset specs are paths, optionally prefixed by their kind (``KIND:PATH``); the kind is detected
otherwise (see :func:`detect_kind`). Each task runs on the datasets of the kinds it declares
(:mod:`eval.tasks.registry`):

    zeroshot, linear_probe      classification  (CLIP_benchmark folder, image folder, CSV)
    retrieval, diagnostics      retrieval       (CLIP_benchmark folder, Karpathy JSON, CSV)
    compositionality            compositional (ours), aro, sugarcrepe, winoground

A single-task sub-command (``eval zeroshot ...``) is :func:`run_single`: the same task, the same
reader, one dataset.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from eval.datasets.kinds import DatasetSpec
from eval.datasets.kinds import detect_kind as detect_generic_kind
from eval.encoding.encoder import Encoder
from eval.report import write_result
from eval.tasks import registry
from eval.tasks.task import Outputs, Task

log = logging.getLogger(__name__)


def detect_kind(path: Path) -> str:
    """The kind of dataset at ``path`` from its files: a published format a task tells apart
    (``Task.detect``), else classification / retrieval / compositional (ValueError when it cannot tell)."""
    for task in registry.all_tasks():
        if task.detect is not None and task.detect(path):
            return task.kinds[0]
    kind = detect_generic_kind(path)
    if kind is None:
        what = "file" if path.is_file() else "folder"
        raise ValueError(f"cannot tell the kind of dataset {what} {path}; prefix it with KIND: "
                         f"({', '.join(registry.kinds())})")
    return kind


def parse_dataset_specs(items: Iterable[str]) -> list[DatasetSpec]:
    """``[KIND:]PATH`` items -> specs (kind detected when not given)."""
    kinds = registry.kinds()
    specs = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        kind, sep, rest = item.partition(":")
        if sep and kind in kinds:
            specs.append(DatasetSpec(kind, Path(rest)))
        else:
            specs.append(DatasetSpec(detect_kind(Path(item)), Path(item)))
    missing = [str(s.path) for s in specs if not s.path.exists()]
    if missing:
        raise FileNotFoundError(f"dataset not found: {', '.join(missing)}")
    return specs


def parse_tasks(text: str) -> list[str]:
    """Comma-separated ``eval run`` task names, checked against the registry."""
    names = registry.families()
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in names]
    if unknown or not tasks:
        raise ValueError(f"unknown task(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(names)}")
    return list(dict.fromkeys(tasks))


class RunOptions:
    """The task options of one run, by ``dest`` (``grid_queries``, ``search``, ``aro_exclude``,
    ``keep_symmetric``, ...: what the tasks declare for ``eval run``); the others keep their
    declared defaults. Encoding options (batch size, workers, progress) belong to the encoder."""

    def __init__(self, **values: Any) -> None:
        known = registry.defaults("run")
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown run option(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
        self.values = {**known, **values}

    def task_options(self, outputs: Outputs | None = None) -> dict[str, Any]:
        return {**self.values, "outputs": outputs}


def output_names(specs: Sequence[DatasetSpec]) -> dict[DatasetSpec, str]:
    """A distinct file-name stem per dataset: its name, prefixed by its parent folder's name (then
    a number) when two datasets share a name, so no result overwrites another."""
    names: dict[DatasetSpec, str] = {}
    taken: set[tuple[str, str]] = set()
    # datasets of different kinds write different task names, so only a name shared within a kind clashes
    clashing = {(s.kind, s.name) for s in specs if sum((o.kind, o.name) == (s.kind, s.name) for o in specs) > 1}
    for spec in specs:
        clash = (spec.kind, spec.name) in clashing
        name = f"{spec.path.resolve().parent.name}-{spec.name}" if clash else spec.name
        base, n = name, 2
        while (spec.kind, name) in taken:
            name, n = f"{base}-{n}", n + 1
        names[spec] = name
        taken.add((spec.kind, name))
    return names


def open_for(tasks: Sequence[Task], spec: DatasetSpec, options: dict[str, Any]) -> list[tuple[Task, list[Any]]]:
    """Each task's readers of ``spec``; tasks that open a dataset the same way share its reader
    (so one encoding pass serves them all)."""
    opened: dict[Any, list[Any]] = {}
    plan = []
    for task in tasks:
        if task.open not in opened:
            readers = task.open(spec, options)
            opened[task.open] = readers if isinstance(readers, list) else [readers]
        plan.append((task, opened[task.open]))
    return plan


def plan_runs(tasks: Sequence[str], datasets: Sequence[DatasetSpec], options: dict[str, Any]
              ) -> list[tuple[DatasetSpec, list[tuple[Task, list[Any]]]]]:
    """(spec, [(task, its readers)]) per dataset some requested task reads.

    Opens every reader first, so a missing file or a dataset no task reads is reported before an
    hour of encoding, not after.
    """
    plan = []
    for spec in datasets:
        wanted = registry.readers_of(spec.kind, list(tasks))
        if not wanted:
            readers = ", ".join(dict.fromkeys(t.family for t in registry.readers_of(spec.kind)))
            log.warning("no requested task reads %s dataset %s (%s would)", spec.kind, spec.path, readers)
            continue
        plan.append((spec, open_for(wanted, spec, options)))
    if not plan:
        raise ValueError("none of the requested tasks reads any of the given datasets")
    return plan


def finish(encoder: Encoder, result: dict[str, Any]) -> dict[str, Any]:
    """The fields every result JSON carries besides the task's own: model warnings, language."""
    result.setdefault("model_warnings", encoder.model_warnings())
    result.setdefault("language", "en")  # CLIP_benchmark's result keys
    return result


def run_tasks(encoder: Encoder, tasks: Sequence[str], datasets: Sequence[DatasetSpec],
              output_dir: str | os.PathLike[str] | None, options: RunOptions | None = None) -> list[dict[str, Any]]:
    """Run ``tasks`` on the datasets they apply to; rank 0 writes DIR/<dataset>_<task>.json
    (``task`` as named in ``tasks``: ``zeroshot``, ``retrieval``, ...; the JSON's own ``task``
    field keeps CLIP_benchmark's name), DIR/results.csv and DIR/summary.md, and the PNGs
    (nothing when ``output_dir`` is None). Returns the result dicts (on every rank), in order."""
    options = options or RunOptions()
    out = Path(output_dir) if output_dir is not None else None
    write = encoder.runtime.is_main and out is not None
    plan = plan_runs(tasks, datasets, options.task_options())  # every dataset opened (and checked) first
    if write:
        out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    written: set[str] = set()
    names = output_names([spec for spec, _ in plan])
    for spec, task_readers in plan:
        for task, readers in task_readers:
            for reader in readers:
                outputs = Outputs(stem=out / names[spec]) if write else None
                result = finish(encoder, task.run(encoder, reader, options.task_options(outputs)))
                # a published format names its files by the result (its subset), the others by the folder
                stem = str(result["dataset"]) if task.named_by_result else names[spec]
                file_name, n = f"{stem}_{task.family}.json", 2
                while file_name in written:  # e.g. two Winoground folders: both results are "winoground"
                    file_name, n = f"{stem}-{n}_{task.family}.json", n + 1
                written.add(file_name)
                if write:
                    result["path"] = str(write_result(out / file_name, result))
                results.append(result)
    if write and results:
        from eval.report import build_csv, write_markdown_summary

        build_csv(results, out / "results.csv")
        write_markdown_summary(results, out / "summary.md")
    encoder.cache.flush_digests()
    return results


def run_single(encoder: Encoder, task: Task, path: Path, options: dict[str, Any],
               output: Path | None) -> dict[str, Any]:
    """One task on one dataset (a single-task sub-command): the task's reader and run, as in
    ``eval run``; files besides the result go beside ``output`` (rank 0 only; None: none)."""
    spec = DatasetSpec(task.kinds[0], path)
    readers = open_for([task], spec, options)[0][1]
    if len(readers) != 1:
        raise ValueError(f"{task.name}: {path} gives {len(readers)} results; name the one to run")
    outputs = Outputs(result=output) if output is not None and encoder.runtime.is_main else None
    result = finish(encoder, task.run(encoder, readers[0], {**options, "outputs": outputs}))
    encoder.cache.flush_digests()
    return result
