"""Compositionality task: pick the true caption over typed hard negatives (strictly higher score)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import torch

from eval.batching import RecordBatches
from eval.datasets import CompositionalShards
from eval.embed import EvalModel, encode_image_batch, encode_texts, eval_mode, model_device
from eval.metrics import caption_selection

TASK = "image_caption_selection"  # CLIP_benchmark's task name for SugarCrepe-style sets


def evaluate_compositional(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run caption selection of ``loaded`` on ``dataset_dir``; return the result dict.

    Keys: dataset, model, task, metrics {acc, acc_<negative type>}, count_per_type {type: number
    of samples with a negative of that type}, num_samples, skipped. A tie is a miss.
    """
    dataset = CompositionalShards(dataset_dir, transform=loaded.image_transform)
    model = loaded.model
    device = device if device is not None else model_device(model)
    positive, negatives, owner, types = [], [], [], []
    count_per_type: Counter[str] = Counter()
    n = 0
    records_in = RecordBatches(dataset, batch_size, num_workers, f"compositional {dataset.name}", progress)
    with eval_mode(model):
        for records in records_in:
            images = encode_image_batch(model, [r.image for r in records], device)
            texts = [t for r in records for t in [r.caption, *r.negatives]]
            text_emb = encode_texts(model, loaded.tokenizer, texts, batch_size, device)
            start = 0
            for i, record in enumerate(records):
                scores = text_emb[start : start + 1 + len(record.negatives)] @ images[i]
                start += 1 + len(record.negatives)
                positive.append(scores[0])
                negatives.append(scores[1:])
                owner.extend([n + i] * len(record.negatives))
                types.extend(record.negative_types)
                count_per_type.update(set(record.negative_types))
            n += len(records)
    metrics = caption_selection(
        torch.stack(positive) if positive else torch.zeros(0),
        torch.cat(negatives) if negatives else torch.zeros(0),
        torch.tensor(owner, dtype=torch.long),
        types,
    )
    return {
        "dataset": dataset.name,
        "model": loaded.name,
        "task": TASK,
        "metrics": metrics,
        "count_per_type": dict(sorted(count_per_type.items())),
        "num_samples": n,
        "skipped": records_in.skipped,
    }
