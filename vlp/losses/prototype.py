"""Prototype-level objectives (SwAV's swapped prediction across modalities, ProtoCLIP's back translation).

Reads the prototype head's outputs (``vlp.models.heads.prototypes``): ``proto_image_scores`` /
``proto_text_scores`` [B, K] (cosine similarities to the prototypes), with ``back_translation``
also ``proto_image_emb`` / ``proto_text_emb`` [B, d], and, for the within-modality term, the
second views' scores when the outputs have them.

- Codes: :func:`sinkhorn_codes`, Sinkhorn-Knopp equal partition of ``exp(scores / epsilon)``
  over the *global* batch, without gradient; the marginals (prototype sums over the batch, and
  the batch size) are all-reduced, so every rank's codes are the rows one process would give on
  the concatenated batch. Each code row sums to 1, each prototype gets about B_global / K.
- Swapped prediction: ``ce(image_scores / T, text_codes)`` and ``ce(text_scores / T, image_codes)``
  (soft-target cross-entropy), averaged.
- Back translation (``back_translation=True``, ProtoCLIP's PBT): the text prototypes are
  translated into image space as the image-embedding centroids of the samples the text codes
  assign to them, ``c_k = normalize(sum_i q_text[i, k] * z_image[i])`` over the global batch
  (detached); the image side is then scored against these, ``z_image @ c.T / T``, and predicts
  the text codes. Symmetrically, the text side is scored against the text-space centroids of the
  image codes and predicts the image codes. The codes still come from the prototype scores; the
  cross-modal term then gives the prototypes no gradient (the within-modality term and the
  episodic k-means move them).
- Within-modality (``within_weight`` > 0): for a modality with a second view, SwAV's own swapped
  prediction between the two views (each view's scores predict the other's codes); otherwise the
  scores predict their own codes. The image and text parts are averaged.

Exact under data parallelism: every cross-entropy is a sum over this rank's rows times the world
size over the global number of rows, so DDP's gradient average equals one process's gradient.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vlp.losses.distributed import world_info
from vlp.losses.registry import register_term


def _all_reduce(tensor: torch.Tensor, op: "dist.ReduceOp" = dist.ReduceOp.SUM) -> torch.Tensor:
    """``tensor`` reduced over ranks (no gradient; identity on one process)."""
    _, world = world_info()
    if world > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=op)
    return tensor


def global_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The number of rows of ``tensor`` summed over ranks (float64 scalar)."""
    return _all_reduce(torch.tensor(float(tensor.shape[0]), dtype=torch.float64, device=tensor.device))


@torch.no_grad()
def sinkhorn_codes(scores: torch.Tensor, iterations: int = 3, epsilon: float = 0.05) -> torch.Tensor:
    """SwAV's equal-partition codes [B, K] of this rank's ``scores`` [B, K], over the global batch.

    ``Q = exp(scores / epsilon)`` (shifted by the global maximum), then ``iterations`` rounds of:
    each prototype's sum over the global batch to 1 / K, each sample's sum to 1 / B_global. The
    result times B_global: rows sum to 1. Computed in float64; returned in the scores' dtype
    (at least float32), detached.
    """
    if iterations < 1 or epsilon <= 0:
        raise ValueError(f"sinkhorn: iterations >= 1 and epsilon > 0, got {iterations} and {epsilon}")
    logits = scores.detach().to(torch.float64) / epsilon
    peak = _all_reduce(logits.max(), dist.ReduceOp.MAX)
    q = torch.exp(logits - peak).T  # [K, B]
    k, total = q.shape[0], global_rows(scores)
    q = q / _all_reduce(q.sum())
    for _ in range(iterations):
        q = q / _all_reduce(q.sum(dim=1, keepdim=True)) / k
        q = q / q.sum(dim=0, keepdim=True) / total
    return (q * total).T.to(torch.promote_types(scores.dtype, torch.float32))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the *global* batch of ``-sum_k targets * log_softmax(logits)``, as this rank's
    share: its rows' sum times the world size over the global row count."""
    _, world = world_info()
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    per_row = -(targets.to(logits.dtype) * F.log_softmax(logits, dim=1)).sum(dim=1)
    return per_row.sum() * world / global_rows(logits).to(logits.dtype)


@torch.no_grad()
def translated_prototypes(emb: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Back translation: unit-norm centroids [K, d] of ``emb`` [B, d] (one modality's embeddings)
    weighted by ``codes`` [B, K] (the *other* modality's codes), over the global batch, detached."""
    weighted = _all_reduce(codes.to(emb.dtype).T @ emb.detach())
    return F.normalize(weighted, dim=-1)


def _within(scores: torch.Tensor, codes: torch.Tensor, aug_scores: Optional[torch.Tensor], temperature: float,
            iterations: int, epsilon: float) -> torch.Tensor:
    """One modality's within-modality term: the two views' swapped prediction, or self-prediction."""
    if aug_scores is None:
        return soft_cross_entropy(scores / temperature, codes)
    aug_codes = sinkhorn_codes(aug_scores, iterations, epsilon)
    return (soft_cross_entropy(scores / temperature, aug_codes)
            + soft_cross_entropy(aug_scores / temperature, codes)) / 2


def _at_least_float32(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Half-precision inputs are scored in float32 (every division and matmul of the term)."""
    return None if tensor is None else tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def prototype_loss(image_scores: torch.Tensor, text_scores: torch.Tensor, temperature: float = 0.1,
                   sinkhorn_iterations: int = 3, epsilon: float = 0.05, within_weight: float = 0.0,
                   back_translation: bool = False, image_emb: Optional[torch.Tensor] = None,
                   text_emb: Optional[torch.Tensor] = None, image_aug_scores: Optional[torch.Tensor] = None,
                   text_aug_scores: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-modal swapped prediction (+ ``within_weight`` x within-modality term); see the module doc.

    ``image_scores`` / ``text_scores``: this rank's [B, K] cosine scores; ``image_emb`` /
    ``text_emb``: the embeddings in the prototype space, needed with ``back_translation``.
    """
    if temperature <= 0:
        raise ValueError(f"prototype: temperature must be > 0, got {temperature}")
    image_scores, text_scores, image_emb, text_emb, image_aug_scores, text_aug_scores = (
        _at_least_float32(t) for t in (image_scores, text_scores, image_emb, text_emb, image_aug_scores, text_aug_scores))
    image_codes = sinkhorn_codes(image_scores, sinkhorn_iterations, epsilon)
    text_codes = sinkhorn_codes(text_scores, sinkhorn_iterations, epsilon)
    if back_translation:
        if image_emb is None or text_emb is None:
            raise ValueError("prototype: back_translation needs the embeddings in the prototype space")
        image_logits = image_emb @ translated_prototypes(image_emb, text_codes).T
        text_logits = text_emb @ translated_prototypes(text_emb, image_codes).T
    else:
        image_logits, text_logits = image_scores, text_scores
    loss = (soft_cross_entropy(image_logits / temperature, text_codes)
            + soft_cross_entropy(text_logits / temperature, image_codes)) / 2
    if within_weight:
        within = (_within(image_scores, image_codes, image_aug_scores, temperature, sinkhorn_iterations, epsilon)
                  + _within(text_scores, text_codes, text_aug_scores, temperature, sinkhorn_iterations, epsilon)) / 2
        loss = loss + within_weight * within
    return loss


def _prototype_inputs(options: Mapping[str, object]) -> Sequence[str]:
    names: Tuple[str, ...] = ("proto_image_scores", "proto_text_scores")
    if options.get("back_translation"):
        names += ("proto_image_emb", "proto_text_emb")
    return names


@register_term("prototype", inputs=_prototype_inputs)
def prototype_term(outputs: Dict[str, torch.Tensor], temperature: float = 0.1, sinkhorn_iterations: int = 3,
                   epsilon: float = 0.05, within_weight: float = 0.0, back_translation: bool = False) -> torch.Tensor:
    """The prototype objective on the prototype head's outputs (``model.heads.prototypes``).

    ``temperature``: of the softmax over prototypes; ``sinkhorn_iterations`` / ``epsilon``: of the
    equal-partition codes; ``within_weight``: weight of the within-modality term (0: off);
    ``back_translation``: ProtoCLIP's prototypical back translation for the cross-modal term.
    """
    return prototype_loss(outputs["proto_image_scores"], outputs["proto_text_scores"], temperature,
                          sinkhorn_iterations, epsilon, within_weight, back_translation,
                          outputs.get("proto_image_emb"), outputs.get("proto_text_emb"),
                          outputs.get("proto_image_aug_scores"), outputs.get("proto_text_aug_scores"))
