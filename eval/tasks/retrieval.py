"""Zero-shot retrieval task: CLIP_benchmark webdataset set (several captions per image) + recall@k.

In ``eval run`` it also draws a PNG grid of the top-5 images of a few text queries
(``--grid-queries``), the true image framed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch

from eval.datasets.kinds import DatasetSpec, open_reader
from eval.datasets.shards import RetrievalShards
from eval.encoding.embed import EvalModel
from eval.encoding.encoder import Encoder, sample_id
from eval.encoding.search import BACKENDS, recall_search_plan, search_recall
from eval.metrics import RECALL_KS
from eval.tasks.task import Task, option

RESULT_TASK = "zeroshot_retrieval"  # the result's `task` field (CLIP_benchmark's name)


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
    :func:`eval.encoding.search.search_plan`); ties are resolved exactly as
    :func:`eval.metrics.retrieval_recall` resolves them.

    Keys: dataset, model, task, metrics {image_retrieval_recall@k, text_retrieval_recall@k for k
    in ``ks``}, num_images, num_texts, skipped, and search: the backend each direction ran, with
    its parameters (:func:`eval.encoding.search.recall_search_plan`). Scores are cosine similarities
    (texts x images).
    """
    num_images, num_texts = int(enc.images.shape[0]), int(enc.texts.shape[0])
    return {
        "dataset": enc.dataset,
        "model": model_name,
        "task": RESULT_TASK,
        "metrics": search_recall(enc.texts, enc.images, enc.text_to_image, ks, backend=backend),
        "num_images": num_images,
        "num_texts": num_texts,
        "skipped": enc.skipped,
        "search": recall_search_plan(backend, num_texts, num_images),
    }


def retrieval_task(encoder: Encoder, dataset: Any, options: dict[str, Any] | None = None,
                   ks: Sequence[int] = RECALL_KS) -> dict[str, Any]:
    """Retrieval of ``encoder``'s model on a retrieval dataset; see :func:`retrieval_result`.
    ``options``: ``search`` (the top-k backend), and in ``eval run`` ``outputs`` and
    ``grid_queries`` (the top-5 PNG)."""
    options = options or {}
    enc = encode_retrieval(encoder, dataset)
    result = retrieval_result(encoder.source.name, enc, ks, backend=options.get("search", "auto"))
    outputs = options.get("outputs")
    if outputs is not None and outputs.stem is not None:
        png = _grid(dataset, enc, outputs.file("retrieval_top5", ".png"), int(options.get("grid_queries", 0)))
        if png is not None:
            result["top5_grid_png"] = str(png)
    return result


def _grid(dataset: Any, enc: RetrievalEmbeddings, out_png: Path, queries: int) -> Path | None:
    """PNG of the top-5 images of ``queries`` captions spread over the set (true image framed)."""
    from eval.report import retrieval_grid_png

    if queries <= 0 or enc.texts.shape[0] == 0:
        return None
    records = enc.records  # row i of enc.images
    captions = [c for r in records for c in r.captions]
    picks = list(range(0, len(captions), max(1, len(captions) // queries)))[:queries]
    top = (enc.texts[picks] @ enc.images.T).topk(min(5, enc.images.shape[0]), dim=1).indices.tolist()
    state = (dataset.transform, dataset.decode_images)
    dataset.transform, dataset.decode_images = None, True
    dataset.only_keys = {records[i].key for row in top for i in row}
    dataset.partition(0, 1)
    try:
        pil = {sample_id(r): r.image for r in dataset if hasattr(r, "image")}
    finally:
        dataset.transform, dataset.decode_images = state
        dataset.only_keys = None
    rows = [[pil.get(sample_id(records[i])) for i in row] for row in top]
    truth = [int(enc.text_to_image[p]) for p in picks]
    correct = [row.index(t) if t in row else None for row, t in zip(top, truth)]
    return retrieval_grid_png([captions[p] for p in picks], rows, out_png, k=5, correct=correct)


def evaluate_retrieval(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, Any]:
    """The task on a model in memory and a CLIP_benchmark retrieval folder (no cache, one
    process); see :func:`retrieval_task`."""
    encoder = Encoder.for_loaded(loaded, batch_size, device, num_workers, progress)
    return retrieval_task(encoder, RetrievalShards(dataset_dir), ks=ks)


def open_retrieval_set(spec: DatasetSpec, options: dict[str, Any]) -> Any:
    """The retrieval reader of ``spec`` (CLIP_benchmark folder, Karpathy JSON with its images
    beside it, CSV); shared with the diagnostics task, so one pass encodes it for both."""
    return open_reader(spec)


SEARCH = option(
    "--search", scopes=("task", "run", "builtin"), default="auto", choices=BACKENDS,
    help="retrieval top-k: torch (exact), faiss-flat (exact), faiss-ivf (approximate); auto: torch up to "
         "100k gallery items, faiss-flat up to 1M, IVF beyond (the JSON's `search` says which ran)")
GRID_QUERIES = option("--grid-queries", scopes=("run", "builtin"), type=int, default=4,
                      help="text queries in the retrieval top-5 PNG (0: none)")

TASK = Task(name="retrieval", kinds=("retrieval",), open=open_retrieval_set, run=retrieval_task,
            options=(GRID_QUERIES, SEARCH), help="run the retrieval task on one dataset", order=20,
            builtin="retrieval")
