"""Embedding diagnostics on a retrieval set: modality gap, uniformity, alignment, effective rank, histograms.

Definitions (embeddings are L2-normalised, computed in float64):

* ``modality_gap``: Euclidean distance between the image centroid and the text centroid
  (Liang et al. 2022, "Mind the Gap").
* ``uniformity_<modality>``: ``log mean_{i<j} exp(-2 ||x_i - x_j||^2)`` over distinct pairs within
  one modality (Wang & Isola 2020, t = 2); lower is more uniform.
* ``alignment``: ``mean_i ||x_i - y_i||^2`` over matching (caption, its image) pairs (alpha = 2).
* ``effective_rank_<modality>``: ``exp(H(p))`` with ``p = s / sum(s)`` the normalised singular values
  of the (uncentred) embedding matrix (Roy & Vetterli 2007).
* similarity histogram: cosine of every matching (positive) and non-matching (negative)
  caption-image pair, drawn as a PNG bar chart of the fraction of pairs per bin.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from eval.encoding.embed import EvalModel
from eval.encoding.encoder import Encoder
from eval.metrics import positive_pairs
from eval.tasks.retrieval import RetrievalEmbeddings, encode_retrieval, encode_retrieval_set, open_retrieval_set
from eval.tasks.task import Task, option
from vlp.utils.atomic import write_bytes_atomic

RESULT_TASK = "embedding_diagnostics"  # the result's `task` field (CLIP_benchmark's name)
POSITIVE_COLOR, NEGATIVE_COLOR = (46, 139, 87), (200, 60, 60)


def modality_gap(image_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """Distance between the two modality centroids."""
    return (image_emb.double().mean(0) - text_emb.double().mean(0)).norm().item()


def uniformity(emb: torch.Tensor, t: float = 2.0) -> float:
    """``log mean exp(-t ||x_i - x_j||^2)`` over distinct pairs i < j (NaN with fewer than 2 rows)."""
    if emb.shape[0] < 2:
        return math.nan
    return torch.pdist(emb.double()).pow(2).mul(-t).exp().mean().log().item()


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    """``mean ||x_i - y_i||^alpha`` over row-aligned pairs (NaN when empty)."""
    if x.shape != y.shape:
        raise ValueError(f"alignment needs row-aligned pairs, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not x.shape[0]:
        return math.nan
    return (x.double() - y.double()).norm(dim=1).pow(alpha).mean().item()


def effective_rank(emb: torch.Tensor) -> float:
    """exp of the Shannon entropy of the normalised singular values (NaN for an empty or zero matrix)."""
    if not emb.numel():
        return math.nan
    s = torch.linalg.svdvals(emb.double())
    if s.sum() <= 0:
        return math.nan
    p = s / s.sum()
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def similarity_split(scores: torch.Tensor, text_to_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, I] scores -> (positive similarities [T], negative similarities [T*I - T])."""
    mask = positive_pairs(text_to_image, scores.shape[1])
    return scores[mask], scores[~mask]


def histogram(values: torch.Tensor, bins: int = 40, low: float = -1.0, high: float = 1.0) -> list[float]:
    """Fraction of ``values`` in each of ``bins`` equal bins over [low, high] (values clamped in)."""
    if not values.numel():
        return [0.0] * bins
    counts = torch.histc(values.double().clamp(low, high), bins=bins, min=low, max=high)
    return (counts / values.numel()).tolist()


def histogram_png(positive: list[float], negative: list[float], low: float = -1.0, high: float = 1.0,
                  size: tuple[int, int] = (720, 400)) -> bytes:
    """PNG bytes of a bar chart: per bin, a green positive bar beside a red negative bar."""
    if len(positive) != len(negative) or not positive:
        raise ValueError("positive and negative histograms need the same, non-zero number of bins")
    width, height = size
    left, right, top, bottom = 50, 20, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(max(positive), max(negative)) or 1.0
    bin_w = plot_w / len(positive)
    for i, (pos, neg) in enumerate(zip(positive, negative)):
        x0 = left + i * bin_w
        for offset, value, color in ((0.0, pos, POSITIVE_COLOR), (bin_w / 2, neg, NEGATIVE_COLOR)):
            if value > 0:
                bar_h = max(1.0, value / peak * plot_h)
                x = x0 + offset
                draw.rectangle([x, top + plot_h - bar_h, x + bin_w / 2 - 1, top + plot_h], fill=color)
    draw.line([(left, top + plot_h), (left + plot_w, top + plot_h)], fill="black")
    draw.line([(left, top), (left, top + plot_h)], fill="black")
    for fraction in (0.0, 0.5, 1.0):
        x = left + fraction * plot_w
        draw.text((x - 10, top + plot_h + 5), f"{low + fraction * (high - low):.1f}", fill="black", font=font)
    draw.text((5, top - 5), f"{peak:.2f}", fill="black", font=font)
    draw.text((left + plot_w / 2 - 60, height - 18), "cosine similarity", fill="black", font=font)
    draw.rectangle([left + 10, 8, left + 20, 18], fill=POSITIVE_COLOR)
    draw.text((left + 24, 6), "positive pairs", fill="black", font=font)
    draw.rectangle([left + 130, 8, left + 140, 18], fill=NEGATIVE_COLOR)
    draw.text((left + 144, 6), "negative pairs", fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def embedding_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor) -> dict[str, float]:
    """All scalar diagnostics of [I, D] image and [T, D] text embeddings with each text's image index."""
    positive, negative = similarity_split(text_emb.double() @ image_emb.double().T, text_to_image)
    return {
        "modality_gap": modality_gap(image_emb, text_emb),
        "uniformity_image": uniformity(image_emb),
        "uniformity_text": uniformity(text_emb),
        "alignment": alignment(text_emb, image_emb[text_to_image.long()]),
        "effective_rank_image": effective_rank(image_emb),
        "effective_rank_text": effective_rank(text_emb),
        "mean_positive_similarity": positive.mean().item() if positive.numel() else math.nan,
        "mean_negative_similarity": negative.mean().item() if negative.numel() else math.nan,
    }


def diagnostics_result(model_name: str, enc: RetrievalEmbeddings, histogram_path: str | os.PathLike[str] | None = None,
                       bins: int = 40) -> dict[str, Any]:
    """The diagnostics of an encoded retrieval set; the result dict.

    Keys: dataset, model, task, metrics, histogram {bins, positive, negative} (fractions per bin
    over [-1, 1]), num_images, num_texts, skipped, and histogram_png when ``histogram_path`` is
    given (the PNG is written there atomically).
    """
    images, texts, owners = enc.images, enc.texts, enc.text_to_image
    positive, negative = similarity_split(texts.double() @ images.double().T, owners)
    pos_hist, neg_hist = histogram(positive, bins), histogram(negative, bins)
    result: dict[str, Any] = {
        "dataset": enc.dataset,
        "model": model_name,
        "task": RESULT_TASK,
        "metrics": embedding_metrics(images, texts, owners),
        "histogram": {"bins": bins, "low": -1.0, "high": 1.0, "positive": pos_hist, "negative": neg_hist},
        "num_images": int(images.shape[0]),
        "num_texts": int(texts.shape[0]),
        "skipped": enc.skipped,
    }
    if histogram_path is not None:
        write_bytes_atomic(histogram_path, histogram_png(pos_hist, neg_hist))
        result["histogram_png"] = str(Path(histogram_path))
    return result


def evaluate_diagnostics(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    histogram_path: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
    bins: int = 40,
) -> dict[str, Any]:
    """Encode a CLIP_benchmark retrieval folder and compute the diagnostics (see
    :func:`diagnostics_result`)."""
    enc = encode_retrieval_set(loaded, dataset_dir, batch_size, device, num_workers, progress, desc="diagnostics")
    return diagnostics_result(loaded.name, enc, histogram_path, bins)


def diagnostics_task(encoder: Encoder, dataset: Any, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The diagnostics of ``encoder``'s model on a retrieval dataset (see :func:`diagnostics_result`);
    the histogram PNG goes to ``options["histogram"]``, else beside the results (``outputs``)."""
    options = options or {}
    outputs = options.get("outputs")
    png = None
    if outputs is not None:
        png = options.get("histogram") or outputs.file("similarity_histogram", ".png")
    return diagnostics_result(encoder.source.name, encode_retrieval(encoder, dataset), png)


TASK = Task(name="diagnostics", kinds=("retrieval",), open=open_retrieval_set, run=diagnostics_task,
            options=(option("--histogram", default=None,
                            help="similarity histogram PNG (default: the output path with .png)"),),
            help="modality gap, uniformity, alignment, effective rank, similarity histogram PNG", order=40)
