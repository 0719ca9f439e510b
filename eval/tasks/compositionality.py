"""Compositionality: pick the true caption over hard negatives (a strictly higher score), on our
compositional shards and on the published ARO, SugarCrepe and Winoground formats
(:mod:`eval.benchmarks`).

All four are the ``eval run`` task ``compositionality`` (files ``<dataset>_compositionality.json``),
each with its own sub-command (``compositional``, ``aro``, ``sugarcrepe``, ``winoground``) and
dataset kind; every image and caption is encoded through the one encoder (embedding cache, data
parallel).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import torch

from eval.benchmarks import aro, sugarcrepe, winoground
from eval.datasets.kinds import DatasetSpec
from eval.datasets.shards import CompositionalShards
from eval.encoding.embed import EvalModel
from eval.encoding.encoder import Encoder
from eval.metrics import caption_selection
from eval.tasks.task import Task, option

RESULT_TASK = "image_caption_selection"  # the result's `task` field (CLIP_benchmark's name for SugarCrepe-style sets)
FAMILY = "compositionality"


def compositional_task(encoder: Encoder, dataset: CompositionalShards,
                       options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Caption selection on our compositional shards; the result dict.

    Keys: dataset, model, task, metrics {acc, acc_<negative type>}, count_per_type {type: number
    of samples with a negative of that type}, num_samples, skipped. A tie is a miss.
    """
    images = encoder.images(dataset, desc=f"compositional {dataset.name}")
    texts = [t for r in images.records for t in [r.caption, *r.negatives]]
    text_emb = encoder.texts(texts) if texts else torch.zeros(0, 0)
    positive, negatives, owner, types = [], [], [], []
    count_per_type: Counter[str] = Counter()
    start = 0
    for i, record in enumerate(images.records):
        scores = text_emb[start : start + 1 + len(record.negatives)] @ images.embeddings[i]
        start += 1 + len(record.negatives)
        positive.append(scores[0])
        negatives.append(scores[1:])
        owner.extend([i] * len(record.negatives))
        types.extend(record.negative_types)
        count_per_type.update(set(record.negative_types))
    metrics = caption_selection(
        torch.stack(positive) if positive else torch.zeros(0),
        torch.cat(negatives) if negatives else torch.zeros(0),
        torch.tensor(owner, dtype=torch.long),
        types,
    )
    return {
        "dataset": dataset.name,
        "model": encoder.source.name,
        "task": RESULT_TASK,
        "metrics": metrics,
        "count_per_type": dict(sorted(count_per_type.items())),
        "num_samples": len(images.records),
        "skipped": images.skipped,
    }


def evaluate_compositional(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`compositional_task` on a model in memory (no cache, one process)."""
    encoder = Encoder.for_loaded(loaded, batch_size, device, num_workers, progress)
    return compositional_task(encoder, CompositionalShards(dataset_dir))


def _names(value: str | Iterable[str] | None) -> list[str]:
    """Comma-separated names (or a sequence of them)."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    return [item.strip() for item in items if item.strip()]


def _open_aro(spec: DatasetSpec, options: dict[str, Any]) -> list[aro.AroSet]:
    subsets = [options["subset"]] if options.get("subset") else aro.present_subsets(spec.path)
    return [aro.open_aro(spec.path, subset, _names(options.get("aro_exclude"))) for subset in subsets]


def _run_aro(encoder: Encoder, aro_set: aro.AroSet, options: dict[str, Any]) -> dict[str, Any]:
    return aro.score_aro(encoder, aro_set, symmetric_filter=not options.get("keep_symmetric", False))


def _open_sugarcrepe(spec: DatasetSpec, options: dict[str, Any]) -> sugarcrepe.SugarCrepeSet:
    given = options.get("subset")
    subsets = sugarcrepe.parse_subsets(given) if given else sugarcrepe.present_subsets(spec.path)
    return sugarcrepe.open_sugarcrepe(spec.path, subsets, image_root=options.get("image_root"))


def _run_sugarcrepe(encoder: Encoder, data: sugarcrepe.SugarCrepeSet, options: dict[str, Any]) -> dict[str, Any]:
    return sugarcrepe.score_sugarcrepe(encoder, data)


def _open_winoground(spec: DatasetSpec, options: dict[str, Any]) -> winoground.WinogroundSet:
    return winoground.open_winoground(spec.path)


def _run_winoground(encoder: Encoder, data: winoground.WinogroundSet, options: dict[str, Any]) -> dict[str, Any]:
    return winoground.score_winoground(encoder, data)


def _open_ours(spec: DatasetSpec, options: dict[str, Any]) -> CompositionalShards:
    return CompositionalShards(spec.path)


ARO_OPTIONS = (
    option("--subset", required=True, choices=aro.SUBSETS, help="which ARO set"),
    option("--exclude", dest="aro_exclude", metavar="EXCLUDE", default="",
           help="comma-separated relations/attribute pairs to leave out"),
    option("--aro-exclude", scopes=("run",), default="",
           help="comma-separated ARO relations/attribute pairs to leave out"),
    option("--keep-symmetric", scopes=("task", "run"), action="store_true",
           help="VG-Relation headline macro accuracy over all relations (default: without the symmetric ones, "
                "as ARO publishes)"),
)
SUGARCREPE_OPTIONS = (
    option("--subset", default=",".join(sugarcrepe.SUBSETS), help="comma-separated subsets (default: all seven)"),
    option("--image-root", default=None, help="COCO val2017 folder (default DIR/val2017 or DIR)"),
)


def _is(detect: Any) -> Any:
    return lambda path: Path(path).is_dir() and detect(Path(path))


TASKS = (
    Task(name="compositional", kinds=("compositional",), open=_open_ours, run=compositional_task, family=FAMILY,
         help="run the compositional task on one dataset", order=30, builtin="compositional"),
    Task(name="aro", kinds=("aro",), open=_open_aro, run=_run_aro, options=ARO_OPTIONS, family=FAMILY,
         help="ARO VG-Relation/VG-Attribution/COCO-Order/Flickr30k-Order from the published files", order=31,
         detect=_is(aro.is_aro_folder), folder=True, named_by_result=True),
    Task(name="sugarcrepe", kinds=("sugarcrepe",), open=_open_sugarcrepe, run=_run_sugarcrepe,
         options=SUGARCREPE_OPTIONS, family=FAMILY, order=32,
         help="SugarCrepe subsets from the published JSON files and COCO val2017 images",
         detect=_is(sugarcrepe.is_sugarcrepe_folder), folder=True, named_by_result=True),
    Task(name="winoground", kinds=("winoground",), open=_open_winoground, run=_run_winoground, family=FAMILY,
         help="Winoground from examples.jsonl and images/", order=33,
         detect=_is(winoground.is_winoground_folder), folder=True, named_by_result=True),
)
