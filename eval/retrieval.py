"""Zero-shot retrieval task: CLIP_benchmark webdataset set (several captions per image) + recall@k."""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Sequence

import torch

from eval.datasets import RecordBatches, RetrievalShards
from eval.embed import EvalModel, encode_image_batch, encode_texts, eval_mode, model_device
from eval.metrics import RECALL_KS, retrieval_recall

TASK = "zeroshot_retrieval"


class RetrievalEmbeddings(NamedTuple):
    """A retrieval set encoded: L2-normalised images [I, D] and texts [T, D], each text's image."""

    dataset: str
    images: torch.Tensor
    texts: torch.Tensor
    text_to_image: torch.Tensor
    skipped: int


def encode_retrieval_set(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "retrieval",
) -> RetrievalEmbeddings:
    """Encode every image and every caption of a CLIP_benchmark retrieval set once."""
    dataset = RetrievalShards(dataset_dir, transform=loaded.image_transform)
    model = loaded.model
    device = device if device is not None else model_device(model)
    image_chunks, text_chunks, text_to_image = [], [], []
    num_images = 0
    records_in = RecordBatches(dataset, batch_size, num_workers, f"{desc} {dataset.name}", progress)
    with eval_mode(model):
        for records in records_in:
            image_chunks.append(encode_image_batch(model, [r.image for r in records], device))
            captions = [caption for r in records for caption in r.captions]
            text_chunks.append(encode_texts(model, loaded.tokenizer, captions, batch_size, device))
            text_to_image.extend(num_images + i for i, r in enumerate(records) for _ in r.captions)
            num_images += len(records)
    images = torch.cat(image_chunks) if image_chunks else torch.zeros(0, 1)
    texts = torch.cat(text_chunks) if text_chunks else torch.zeros(0, images.shape[1])
    return RetrievalEmbeddings(dataset.name, images, texts, torch.tensor(text_to_image, dtype=torch.long),
                               records_in.skipped)


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
    enc = encode_retrieval_set(loaded, dataset_dir, batch_size, device, num_workers, progress)
    return {
        "dataset": enc.dataset,
        "model": loaded.name,
        "task": TASK,
        "metrics": retrieval_recall(enc.texts @ enc.images.T, enc.text_to_image, ks),
        "num_images": int(enc.images.shape[0]),
        "num_texts": int(enc.texts.shape[0]),
        "skipped": enc.skipped,
    }
