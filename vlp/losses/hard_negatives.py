"""Feature-space hard negatives: MoCHi mixing, and CACR-style positive/negative weighting.

MoCHi (Hard Negative Mixing): for each image, take the ``hardest`` most similar non-matching
texts of the global batch, synthesise ``synthetic`` negatives as renormalised convex mixtures of
random pairs of them (and ``query_mixed`` more by mixing the image itself in with weight < 0.5),
and append their logits as extra columns of the image->text cross-entropy. Synthetic points carry
no gradient, as in MoCHi. Random draws are made for the global batch and sliced per rank, so one
process and R ranks mix the same points (ranks share the seed).

CACR weighting (Contrastive Attraction and Contrastive Repulsion) of InfoNCE: the positive term of
row i is weighted by exp(a * d_ii) / mean_k exp(a * d_kk) (far positives attract more) and each
negative inside the log-sum-exp by exp(r * c_ij) / mean_{k != i} exp(r * c_ik) (near negatives
repel more), with d = squared distance and c = cosine similarity; weights are detached.
"""

from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F

from vlp.losses.distributed import gather_with_grad, global_pairs, world_info
from vlp.losses.registry import register_term


def mochi_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor, hardest: int = 16,
               synthetic: int = 8, query_mixed: int = 0) -> torch.Tensor:
    """Symmetric InfoNCE whose image->text rows gain MoCHi's synthetic hard negatives."""
    g = global_pairs(image_emb, text_emb, logit_scale)
    rank, _ = world_info()
    batch, total, dtype, device = g.image.shape[0], g.all_text.shape[0], g.image.dtype, g.image.device
    logits_per_image = g.scale * g.image @ g.all_text.T
    hardest = min(hardest, total - 1)
    with torch.no_grad():
        sims = (g.image @ g.all_text.T).scatter(1, g.positives[:, None], float("-inf"))
        hard = g.all_text[sims.topk(hardest, dim=1).indices]                         # [B, H, D]
        rows = slice(rank * batch, (rank + 1) * batch)
        pairs = torch.randint(hardest, (total, synthetic, 2), device=device)[rows]
        alpha = torch.rand(total, synthetic, 1, device=device, dtype=dtype)[rows]
        pick = lambda k: hard.gather(1, pairs[:, :, k, None].expand(-1, -1, hard.shape[-1]))  # noqa: E731
        mixed = [F.normalize(alpha * pick(0) + (1 - alpha) * pick(1), dim=-1)]
        if query_mixed:
            which = torch.randint(hardest, (total, query_mixed), device=device)[rows]
            beta = 0.5 * torch.rand(total, query_mixed, 1, device=device, dtype=dtype)[rows]
            chosen = hard.gather(1, which[:, :, None].expand(-1, -1, hard.shape[-1]))
            mixed.append(F.normalize(beta * g.image[:, None, :] + (1 - beta) * chosen, dim=-1))
        mixed = torch.cat(mixed, dim=1)                                                 # [B, S, D]
    extra = g.scale * torch.einsum("bd,bsd->bs", g.image, mixed)
    loss_i = F.cross_entropy(torch.cat([logits_per_image, extra], dim=1), g.positives)
    loss_t = F.cross_entropy(g.scale * g.text @ g.all_image.T, g.positives)
    return (loss_i + loss_t) / 2


def cacr_weighted_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                            attract: float = 0.0, repel: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE with CACR weights; attract = repel = 0 is the plain CLIP loss."""
    g = global_pairs(image_emb, text_emb, logit_scale)
    own = g.positives
    with torch.no_grad():
        distance = (g.image - g.text).pow(2).sum(dim=1)
        everyone = gather_with_grad(distance)
        peak = everyone.max()
        positive_weight = torch.exp(attract * (distance - peak)) / torch.exp(attract * (everyone - peak)).mean()
    total = g.image.new_zeros(())
    for queries, keys in ((g.image, g.all_text), (g.text, g.all_image)):
        cosine = queries @ keys.T
        with torch.no_grad():
            log_w = (repel * cosine).scatter(1, own[:, None], float("-inf"))
            log_w = log_w - torch.logsumexp(log_w, dim=1, keepdim=True) + math.log(keys.shape[0] - 1)
            log_w = log_w.scatter(1, own[:, None], 0.0)  # the positive keeps weight 1 in the denominator
        logits = g.scale * cosine
        positive = logits.gather(1, own[:, None]).squeeze(1)
        total = total + (torch.logsumexp(logits + log_w, dim=1) - positive_weight * positive).mean()
    return total / 2


@register_term("mochi")
def mochi_term(outputs: Dict[str, torch.Tensor], hardest: int = 16, synthetic: int = 8, query_mixed: int = 0) -> torch.Tensor:
    return mochi_loss(outputs["image_emb"], outputs["text_emb"], outputs["logit_scale"], hardest, synthetic, query_mixed)
