"""Zero-shot retrieval task: CLIP_benchmark webdataset set (several captions per image) + recall@k."""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Sequence

import torch

from eval.datasets import RetrievalShards
from eval.embed import EvalModel
from eval.encoder import Encoder
from eval.metrics import RECALL_KS
from eval.search import recall_search_plan, search_recall

TASK = "zeroshot_retrieval"


class RetrievalEmbeddings(NamedTuple):
    """A retrieval set encoded: L2-normalised images [I, D] and texts [T, D], each text's image."""

    dataset: str
    images: torch.Tensor
    texts: torch.Tensor
    text_to_image: torch.Tensor
    skipped: int
    records: tuple = ()  # the encoded records (image None), row i of ``images`` is records[i]


def encode_retrieval(encoder: Encoder, dataset: Any, desc: str = "retrieval") -> RetrievalEmbeddings:
    """Every image and every caption of a retrieval dataset (records with ``captions``), encoded
    once (cached); captions are numbered image by image, in dataset order."""
    images = encoder.images(dataset, desc=f"{desc} {dataset.name}")
    captions = [caption for r in images.records for caption in r.captions]
    texts = encoder.texts(captions) if captions else torch.zeros(0, max(images.embeddings.shape[-1], 1))
    text_to_image = [i for i, r in enumerate(images.records) for _ in r.captions]
    image_emb = images.embeddings if len(images.records) else torch.zeros(0, 1)
    return RetrievalEmbeddings(dataset.name, image_emb, texts, torch.tensor(text_to_image, dtype=torch.long),
                               images.skipped, tuple(images.records))


def encode_retrieval_set(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "retrieval",
) -> RetrievalEmbeddings:
    """Encode every image and caption of a CLIP_benchmark retrieval folder (no cache)."""
    encoder = Encoder.for_loaded(loaded, batch_size, device, num_workers, progress)
    return encode_retrieval(encoder, RetrievalShards(dataset_dir), desc)


def retrieval_result(model_name: str, enc: RetrievalEmbeddings, ks: Sequence[int] = RECALL_KS,
                     backend: str = "auto") -> dict[str, Any]:
    """Image<->text retrieval metrics of an encoded retrieval set; the result dict.

    Search is exact top-k (torch, chunked: the full score matrix is never held, up to
    100k gallery items; faiss flat up to a million) and faiss IVF beyond (``backend``: see
    :func:`eval.search.search_plan`); ties are resolved exactly as
    :func:`eval.metrics.retrieval_recall` resolves them.

    Keys: dataset, model, task, metrics {image_retrieval_recall@k, text_retrieval_recall@k for k
    in ``ks``}, num_images, num_texts, skipped, and search: the backend each direction ran, with
    its parameters (:func:`eval.search.recall_search_plan`). Scores are cosine similarities
    (texts x images).
    """
    num_images, num_texts = int(enc.images.shape[0]), int(enc.texts.shape[0])
    return {
        "dataset": enc.dataset,
        "model": model_name,
        "task": TASK,
        "metrics": search_recall(enc.texts, enc.images, enc.text_to_image, ks, backend=backend),
        "num_images": num_images,
        "num_texts": num_texts,
        "skipped": enc.skipped,
        "search": recall_search_plan(backend, num_texts, num_images),
    }


def retrieval_task(encoder: Encoder, dataset: Any, ks: Sequence[int] = RECALL_KS) -> dict[str, Any]:
    """Retrieval of ``encoder``'s model on a retrieval dataset; see :func:`retrieval_result`."""
    return retrieval_result(encoder.source.name, encode_retrieval(encoder, dataset), ks)


def evaluate_retrieval(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, Any]:
    """Retrieval of an in-memory model on a CLIP_benchmark retrieval folder (no cache, one
    process); see :func:`retrieval_task`."""
    encoder = Encoder.for_loaded(loaded, batch_size, device, num_workers, progress)
    return retrieval_task(encoder, RetrievalShards(dataset_dir), ks)
