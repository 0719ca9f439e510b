"""Symmetric InfoNCE (CLIP / ALIGN) over the global batch.

Local-loss form: each rank scores its own B local images against all R*B gathered texts (and its
B texts against all images), with the positives at columns ``rank * B + arange(B)``. The mean of
the R local losses equals the loss of one process on the concatenated batch, and with
``gather_with_grad`` plus data-parallel gradient averaging, so do the parameter gradients.
Logits and cross-entropy are computed in at least float32 whatever the autocast dtype.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

from vlp.losses.distributed import gather_with_grad, global_pairs
from vlp.losses.registry import CONTRASTIVE_INPUTS, register_term


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
              label_smoothing: float = 0.0) -> torch.Tensor:
    """Symmetric cross-entropy of ``logit_scale * image_emb @ text_emb.T`` against the diagonal.

    ``image_emb``, ``text_emb``: this rank's L2-normalised embeddings [B, D]; negatives come from
    every rank. Returns this rank's share: mean over its rows of (CE(image->text) + CE(text->image)) / 2.
    """
    g = global_pairs(image_emb, text_emb, logit_scale)
    loss_i = F.cross_entropy(g.scale * g.image @ g.all_text.T, g.positives, label_smoothing=label_smoothing)
    loss_t = F.cross_entropy(g.scale * g.text @ g.all_image.T, g.positives, label_smoothing=label_smoothing)
    return (loss_i + loss_t) / 2


def decoupled_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                   positive_weight_sigma: Optional[float] = None) -> torch.Tensor:
    """Decoupled contrastive loss (DCL): InfoNCE with the positive removed from the denominator,
    both directions, over the global batch. With ``positive_weight_sigma`` (DCLW) each positive
    term is weighted by 2 - exp(s_ii / sigma) / mean_k exp(s_kk / sigma) (weights from the
    detached local positives' cosine similarities)."""
    g = global_pairs(image_emb, text_emb, logit_scale)
    positive = g.scale * (g.image * g.text).sum(dim=1)
    weight = torch.ones_like(positive)
    if positive_weight_sigma is not None:
        cos = (g.image * g.text).sum(dim=1).detach() / positive_weight_sigma
        everyone = gather_with_grad(cos)  # detached: the weights carry no gradient
        peak = everyone.max()
        weight = 2 - torch.exp(cos - peak) / torch.exp(everyone - peak).mean()
    total = positive.new_zeros(())
    for queries, keys in ((g.image, g.all_text), (g.text, g.all_image)):
        logits = (g.scale * queries @ keys.T).scatter(1, g.positives[:, None], float("-inf"))
        total = total + (torch.logsumexp(logits, dim=1) - weight * positive).mean()
    return total / 2


def negclip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, neg_text_emb: torch.Tensor,
                 logit_scale: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """NegCLIP: CLIP whose image->text logits gain extra columns, the hard-negative captions of
    every sample of the global batch ([B, K, D] per rank); text->image is the plain CLIP row."""
    g = global_pairs(image_emb, text_emb, logit_scale)
    negatives = gather_with_grad(neg_text_emb.to(g.image.dtype).flatten(0, 1))
    logits_per_image = g.scale * g.image @ torch.cat([g.all_text, negatives]).T
    logits_per_text = g.scale * g.text @ g.all_image.T
    return (F.cross_entropy(logits_per_image, g.positives, label_smoothing=label_smoothing)
            + F.cross_entropy(logits_per_text, g.positives, label_smoothing=label_smoothing)) / 2


@register_term("dcl")
def dcl_term(outputs: Dict[str, torch.Tensor], positive_weight_sigma: Optional[float] = None) -> torch.Tensor:
    return decoupled_loss(outputs["image_emb"], outputs["text_emb"], outputs["logit_scale"], positive_weight_sigma)


@register_term("negclip", inputs=(*CONTRASTIVE_INPUTS, "neg_text_emb"))
def negclip_term(outputs: Dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
    """Needs ``neg_text_emb`` [B, K, D]: set data.num_negatives and shards with key.neg.json."""
    if "neg_text_emb" not in outputs:
        raise KeyError("the negclip objective needs hard-negative captions: set data.num_negatives > 0")
    return negclip_loss(outputs["image_emb"], outputs["text_emb"], outputs["neg_text_emb"],
                        outputs["logit_scale"], label_smoothing)


@register_term("clip")
def clip_term(outputs: Dict[str, torch.Tensor], label_smoothing: float = 0.0, chunked: bool = False,
              chunk_size: Optional[int] = None, cacr_attract: float = 0.0, cacr_repel: float = 0.0) -> torch.Tensor:
    """Registry adapter: the CLIP loss on an outputs dict {image_emb, text_emb, logit_scale}.

    ``chunked``: the memory-efficient form (vlp.losses.chunked), same value and gradients, for
    contrastive batches whose [B, B] logits would not fit; ``chunk_size`` rows per block (None: auto).
    ``cacr_attract`` / ``cacr_repel``: CACR weighting of positives / negatives (vlp.losses.hard_negatives).
    """
    if cacr_attract or cacr_repel:
        if chunked or label_smoothing:
            raise ValueError("clip: CACR weighting works with the dense form and no label smoothing")
        from vlp.losses.hard_negatives import cacr_weighted_clip_loss

        return cacr_weighted_clip_loss(outputs["image_emb"], outputs["text_emb"], outputs["logit_scale"],
                                       cacr_attract, cacr_repel)
    if chunked:
        from vlp.losses.chunked import chunked_clip_loss

        return chunked_clip_loss(outputs["image_emb"], outputs["text_emb"], outputs["logit_scale"],
                                 chunk=chunk_size, label_smoothing=label_smoothing)
    return clip_loss(outputs["image_emb"], outputs["text_emb"], outputs["logit_scale"], label_smoothing)
