"""Zero-shot classification task: CLIP_benchmark webdataset set + acc@k / mean per-class recall."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch

from eval.datasets import ClassificationShards, RecordBatches
from eval.embed import EvalModel, encode_image_batch, encode_texts, eval_mode, model_device
from eval.metrics import build_classifier, per_class_recall, zeroshot_logits, zeroshot_metrics

TASK = "zeroshot_classification"


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


def evaluate_zeroshot(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run zero-shot classification of ``loaded`` on ``dataset_dir``; return the result dict.

    Keys: dataset, model, task, metrics {acc1, acc5, mean_per_class_recall}, per_class_recall
    {class name: recall or None when the class has no samples}, num_samples, skipped.
    """
    dataset = ClassificationShards(dataset_dir, transform=loaded.image_transform)
    model = loaded.model
    device = device if device is not None else model_device(model)
    classifier = zeroshot_classifier(model, loaded.tokenizer, dataset.classnames, dataset.templates, batch_size, device)
    logits, targets = [], []
    records_in = RecordBatches(dataset, batch_size, num_workers, f"zeroshot {dataset.name}", progress)
    with eval_mode(model):
        for records in records_in:
            emb = encode_image_batch(model, [r.image for r in records], device)
            logits.append(zeroshot_logits(emb, classifier))
            targets.append(torch.tensor([r.label for r in records], dtype=torch.long))
    num_classes = len(dataset.classnames)
    all_logits = torch.cat(logits) if logits else torch.zeros(0, num_classes)
    all_targets = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long)
    metrics = zeroshot_metrics(all_logits, all_targets)
    preds = all_logits.argmax(dim=1) if all_targets.numel() else all_targets
    recall = per_class_recall(preds, all_targets, num_classes).tolist()
    return {
        "dataset": dataset.name,
        "model": loaded.name,
        "task": TASK,
        "metrics": metrics,
        "per_class_recall": {
            name: (None if r != r else r) for name, r in zip(dataset.classnames, recall)  # NaN -> None
        },
        "num_samples": int(all_targets.numel()),
        "skipped": records_in.skipped,
    }
