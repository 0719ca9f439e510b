"""Evaluation metrics as pure functions on tensors.

Definitions follow LAION-AI/CLIP_benchmark (``clip_benchmark/metrics/zeroshot_classification.py``
and ``zeroshot_retrieval.py``):

* zero-shot classifier: per class, L2-normalise each template's text embedding, average over
  templates, renormalise; ``logits = 100 * image_emb @ classifier.T``.
* ``acc1`` / ``acc5``: top-k accuracy from ``logits.topk(k, largest=True, sorted=True)``; with
  fewer than 5 classes ``acc5`` is NaN and ``acc1`` comes from ``topk(1)``.
* ``mean_per_class_recall``: sklearn's ``balanced_accuracy_score(target, logits.argmax(1))``,
  i.e. the mean over classes *present in the targets* of that class's recall.
* retrieval recall@k: for each query, take ``scores.topk(k)`` and count a hit when at least one
  positive is among those k indices; average the 0/1 hits over queries.

Ties. ``torch.topk`` returns exactly k indices; among equal scores which ones it keeps is
unspecified by PyTorch (on CPU it is not the lowest index). So at a tie that straddles the k-th
place a positive may or may not be retrieved, exactly as in CLIP_benchmark; ties are neither all
counted as hits (optimistic) nor all as misses (pessimistic). A tie entirely inside the top k
does not matter. ``argmax`` (used for ``mean_per_class_recall``) returns the first maximal index.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

RECALL_KS: tuple[int, ...] = (1, 5, 10)
LOGIT_SCALE: float = 100.0


def build_classifier(template_embeddings: torch.Tensor) -> torch.Tensor:
    """[C, T, D] text embeddings (class x template) -> [C, D] zero-shot classifier rows."""
    if template_embeddings.dim() != 3:
        raise ValueError(f"expected [classes, templates, dim], got {tuple(template_embeddings.shape)}")
    per_template = F.normalize(template_embeddings.float(), dim=-1)
    return F.normalize(per_template.mean(dim=1), dim=-1)


def zeroshot_logits(image_emb: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """[N, D] image embeddings, [C, D] classifier -> [N, C] logits (100 * cosine)."""
    return LOGIT_SCALE * F.normalize(image_emb.float(), dim=-1) @ classifier.float().T


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1,)) -> list[float]:
    """Fraction of rows whose target is in ``logits.topk(max(ks))[:k]``, for each k in ``ks``."""
    n = int(targets.numel())
    if n == 0:
        return [math.nan for _ in ks]
    pred = logits.topk(max(ks), dim=1, largest=True, sorted=True).indices  # [N, K]
    correct = pred.eq(targets.view(-1, 1))
    return [correct[:, :k].any(dim=1).float().sum().item() / n for k in ks]


def per_class_recall(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C] recall of each class (correct / true count); NaN for a class with no samples."""
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes}), got {targets.min()}..{targets.max()}")
    true_count = torch.bincount(targets, minlength=num_classes).double()
    hit_count = torch.bincount(targets[preds == targets], minlength=num_classes).double()
    return torch.where(true_count > 0, hit_count / true_count.clamp(min=1), torch.full_like(true_count, math.nan))


def mean_per_class_recall(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """Balanced accuracy: mean recall over the classes that occur in ``targets`` (NaN if none)."""
    recall = per_class_recall(preds, targets, num_classes)
    present = recall[~torch.isnan(recall)]
    return present.mean().item() if present.numel() else math.nan


def zeroshot_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """``acc1``, ``acc5`` (NaN with < 5 classes) and ``mean_per_class_recall`` of [N, C] logits."""
    num_classes = logits.shape[1]
    targets = targets.long().view(-1)
    if num_classes >= 5:
        acc1, acc5 = topk_accuracy(logits, targets, (1, 5))
    else:
        (acc1,), acc5 = topk_accuracy(logits, targets, (1,)), math.nan
    preds = logits.argmax(dim=1) if targets.numel() else targets
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": mean_per_class_recall(preds, targets, num_classes)}


def positive_pairs(text_to_image: torch.Tensor, num_images: int) -> torch.Tensor:
    """[T] image index of each text -> [T, I] boolean matrix of matching (text, image) pairs."""
    text_to_image = text_to_image.long().view(-1)
    mask = torch.zeros(text_to_image.numel(), num_images, dtype=torch.bool)
    mask[torch.arange(text_to_image.numel()), text_to_image] = True
    return mask


def hit_at_k(scores: torch.Tensor, positives: torch.Tensor, k: int, chunk_size: int = 1024) -> torch.Tensor:
    """[Q, N] scores, [Q, N] positives -> [Q] bool: a positive is among the row's ``topk(k)``.

    ``k`` is clamped to N (CLIP_benchmark would raise instead; with k >= N every positive is
    retrieved). A row without positives is a miss, as in CLIP_benchmark (0/0 recall is not > 0).
    """
    k = min(k, scores.shape[1])
    hits = []
    for start in range(0, scores.shape[0], chunk_size):
        idx = scores[start : start + chunk_size].topk(k, dim=1, largest=True, sorted=True).indices
        hits.append(positives[start : start + chunk_size].gather(1, idx).any(dim=1))
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def retrieval_recall(
    scores: torch.Tensor, text_to_image: torch.Tensor, ks: Sequence[int] = RECALL_KS
) -> dict[str, float]:
    """CLIP_benchmark recall@k from [T, I] text-image scores and each text's image index.

    ``image_retrieval_recall@k``: per text, is its image among the top k images (text->image).
    ``text_retrieval_recall@k``: per image, is ANY of its captions among the top k texts.
    """
    scores = scores.float().cpu()
    positives = positive_pairs(text_to_image.cpu(), scores.shape[1])
    metrics: dict[str, float] = {}
    for k in ks:
        img_hits = hit_at_k(scores, positives, k)
        txt_hits = hit_at_k(scores.T, positives.T, k)
        metrics[f"image_retrieval_recall@{k}"] = img_hits.float().mean().item() if img_hits.numel() else math.nan
        metrics[f"text_retrieval_recall@{k}"] = txt_hits.float().mean().item() if txt_hits.numel() else math.nan
    return metrics


def _max_per_owner(values: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """[K] values grouped by [K] owner index -> [n] maximum per owner (-inf where none)."""
    out = torch.full((n,), -math.inf, dtype=values.dtype)
    return out.scatter_reduce(0, owner, values, reduce="amax", include_self=True)


def caption_selection(
    positive: torch.Tensor,
    negatives: torch.Tensor,
    owner: torch.Tensor,
    negative_types: Sequence[str],
) -> dict[str, float]:
    """Compositional accuracy: the true caption must score STRICTLY above every negative.

    ``positive``: [N] score of each image with its true caption. ``negatives``: [K] scores of all
    negatives, flattened; ``owner``: [K] sample index of each; ``negative_types``: K type names.
    Returns ``acc`` over all samples and ``acc_<type>`` over the samples having at least one
    negative of that type (a sample counts as correct for a type when it beats all of that type's
    negatives). A tie is a miss. (CLIP_benchmark's image_caption_selection takes ``argmax`` with
    the true caption first, so it counts a tie as a hit; we are deliberately stricter.)
    """
    positive = positive.double().view(-1)
    negatives, owner = negatives.double().view(-1), owner.long().view(-1)
    if len(negative_types) != negatives.numel() or owner.numel() != negatives.numel():
        raise ValueError("negatives, owner and negative_types must have the same length")
    n = positive.numel()
    metrics = {"acc": (positive > _max_per_owner(negatives, owner, n)).double().mean().item() if n else math.nan}
    for kind in sorted(set(negative_types)):
        mask = torch.tensor([t == kind for t in negative_types], dtype=torch.bool)
        has = torch.bincount(owner[mask], minlength=n) > 0
        best = _max_per_owner(negatives[mask], owner[mask], n)
        metrics[f"acc_{kind}"] = (positive[has] > best[has]).double().mean().item()
    return metrics
