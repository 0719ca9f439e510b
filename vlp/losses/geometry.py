"""Geometry of the embedding clouds ("It's not a modality gap: the contrastive gap").

uniformity(x) = log mean_{i != j} exp(-t ||x_i - x_j||^2) over the global batch (lower: more
uniform on the sphere); alignment = mean_i ||x_i - y_i||^2 over matching pairs. Added to the CLIP
loss they close the gap between the image and the text clouds.
"""

from __future__ import annotations

from typing import Dict

import torch

from vlp.losses.distributed import all_reduce_sum_with_grad, gather_with_grad, world_info
from vlp.losses.registry import register_term


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log of the mean over all ordered pairs i != j of the global batch of exp(-t ||x_i - x_j||^2)."""
    rank, _ = world_info()
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    everyone = gather_with_grad(x)
    # ||a - b||^2 = 2 - 2 a.b for unit vectors; computed directly so unnormalised inputs work too
    sq = (x * x).sum(1, keepdim=True) + (everyone * everyone).sum(1)[None, :] - 2 * x @ everyone.T
    kernel = torch.exp(-t * sq.clamp(min=0))
    own = torch.arange(x.shape[0], device=x.device) + rank * x.shape[0]
    kernel = kernel.scatter(1, own[:, None], 0.0)  # drop i == j
    total = all_reduce_sum_with_grad(kernel.sum())
    n = everyone.shape[0]
    return torch.log(total / (n * (n - 1)))


def alignment(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between matching rows (the mean over ranks is the global mean)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return (x.to(dtype) - y.to(dtype)).pow(2).sum(dim=1).mean()


@register_term("uniformity", inputs=("image_emb", "text_emb"))
def uniformity_term(outputs: Dict[str, torch.Tensor], t: float = 2.0) -> torch.Tensor:
    """Mean of the image and the text clouds' uniformity."""
    return (uniformity(outputs["image_emb"], t) + uniformity(outputs["text_emb"], t)) / 2


@register_term("alignment", inputs=("image_emb", "text_emb"))
def alignment_term(outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
    return alignment(outputs["image_emb"], outputs["text_emb"])
