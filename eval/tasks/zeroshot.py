"""Zero-shot classification task: prompt-ensemble classifier + acc@k / mean per-class recall."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch

from eval.datasets.kinds import DatasetSpec, open_reader
from eval.datasets.shards import ClassificationShards
from eval.encoding.embed import EvalModel, encode_texts, eval_mode
from eval.encoding.encoder import Encoder
from eval.metrics import build_classifier, per_class_recall, zeroshot_logits, zeroshot_metrics
from eval.tasks.task import Task

RESULT_TASK = "zeroshot_classification"  # the result's `task` field (CLIP_benchmark's name)


def class_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All prompts, class-major: prompt ``c * T + t`` is ``templates[t].format(c=classnames[c])``."""
    return [template.format(c=name) for name in classnames for template in templates]


def zeroshot_classifier(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """[C, D] classifier: every class x template prompt encoded in batches, then averaged."""
    prompts = class_prompts(classnames, templates)
    with eval_mode(model):
        emb = encode_texts(model, tokenizer, prompts, batch_size=batch_size, device=device)
    return build_classifier(emb.view(len(classnames), len(templates), -1))


def zeroshot_task(encoder: Encoder, dataset: Any, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Zero-shot classification of ``encoder``'s model on a classification dataset (any reader
    with ``classnames`` and ``templates``); the result dict in CLIP_benchmark's format.

    Keys: dataset, model, task, metrics {acc1, acc5, mean_per_class_recall}, per_class_recall
    {class name: recall or None when the class has no samples}, num_samples, skipped.
    """
    images = encoder.images(dataset, desc=f"zeroshot {dataset.name}")
    num_classes, num_templates = len(dataset.classnames), len(dataset.templates)
    prompts = class_prompts(dataset.classnames, dataset.templates)
    classifier = build_classifier(encoder.texts(prompts).view(num_classes, num_templates, -1))
    targets = torch.tensor([r.label for r in images.records], dtype=torch.long)
    logits = zeroshot_logits(images.embeddings, classifier) if len(targets) else torch.zeros(0, num_classes)
    metrics = zeroshot_metrics(logits, targets)
    preds = logits.argmax(dim=1) if targets.numel() else targets
    recall = per_class_recall(preds, targets, num_classes).tolist()
    return {
        "dataset": dataset.name,
        "model": encoder.source.name,
        "task": RESULT_TASK,
        "metrics": metrics,
        "per_class_recall": {
            name: (None if r != r else r) for name, r in zip(dataset.classnames, recall)  # NaN -> None
        },
        "num_samples": int(targets.numel()),
        "skipped": images.skipped,
    }


def evaluate_zeroshot(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """The task on a model in memory and a CLIP_benchmark webdataset folder (no cache, one
    process); see :func:`zeroshot_task`."""
    encoder = Encoder.for_loaded(loaded, batch_size, device, num_workers, progress)
    return zeroshot_task(encoder, ClassificationShards(dataset_dir))


def open_classification_set(spec: DatasetSpec, options: dict[str, Any]) -> Any:
    """The classification reader of ``spec`` (CLIP_benchmark folder, image folder, CSV)."""
    return open_reader(spec)


TASK = Task(name="zeroshot", kinds=("classification",), open=open_classification_set, run=zeroshot_task,
            help="run the zeroshot task on one dataset", order=10, builtin="zeroshot")
