"""Zero-shot retrieval task: CLIP_benchmark webdataset set (several captions per image) + recall@k."""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from tqdm import tqdm

from eval.datasets import RetrievalShards, batches, split_skipped
from eval.embed import EvalModel, encode_image_batch, encode_texts, eval_mode, model_device
from eval.metrics import RECALL_KS, retrieval_recall

TASK = "zeroshot_retrieval"


def evaluate_retrieval(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, Any]:
    """Run image<->text retrieval of ``loaded`` on ``dataset_dir``; return the result dict.

    Keys: dataset, model, task, metrics {image_retrieval_recall@k, text_retrieval_recall@k for k
    in ``ks``}, num_images, num_texts, skipped. Scores are cosine similarities (texts x images).
    """
    dataset = RetrievalShards(dataset_dir, transform=loaded.image_transform)
    model = loaded.model
    device = device if device is not None else model_device(model)
    image_chunks, text_chunks, text_to_image = [], [], []
    skipped = 0
    with eval_mode(model), tqdm(desc=f"retrieval {dataset.name}", unit="img", disable=not progress) as bar:
        for items in batches(dataset, batch_size, num_workers):
            records, dropped = split_skipped(items)
            skipped += len(dropped)
            bar.update(len(items))
            if not records:
                continue
            first = sum(len(c) for c in image_chunks)
            image_chunks.append(encode_image_batch(model, [r.image for r in records], device))
            captions = [caption for r in records for caption in r.captions]
            text_chunks.append(encode_texts(model, loaded.tokenizer, captions, batch_size, device))
            text_to_image.extend(first + i for i, r in enumerate(records) for _ in r.captions)
    images = torch.cat(image_chunks) if image_chunks else torch.zeros(0, 1)
    texts = torch.cat(text_chunks) if text_chunks else torch.zeros(0, images.shape[1])
    scores = texts @ images.T
    metrics = retrieval_recall(scores, torch.tensor(text_to_image, dtype=torch.long), ks)
    return {
        "dataset": dataset.name,
        "model": loaded.name,
        "task": TASK,
        "metrics": metrics,
        "num_images": int(images.shape[0]),
        "num_texts": int(texts.shape[0]),
        "skipped": skipped,
    }
