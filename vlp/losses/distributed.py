"""Collectives for objectives: gathering embeddings across ranks *with* gradient.

accelerate's ``gather`` (like ``torch.distributed.all_gather``) returns tensors without a graph,
so negatives from other ranks would receive no gradient. ``gather_with_grad`` concatenates every
rank's tensor in rank order and, in backward, sums the incoming gradients over ranks and hands
each rank the slice of its own input, which is exactly the gradient of the global objective.
Works with gloo (CPU) and NCCL; needs equal batch sizes on every rank.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
import torch.distributed as dist


def world_info() -> Tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rank, world = world_info()
        ctx.rank, ctx.batch = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.batch
        return grad[start:start + ctx.batch]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' ``tensor`` concatenated along dim 0 in rank order, differentiable. Identity on one process."""
    _, world = world_info()
    if world == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


class _AllReduceWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks, differentiable (for terms that normalise by a global sum)."""
    _, world = world_info()
    if world == 1:
        return tensor
    return _AllReduceWithGrad.apply(tensor)


class GlobalPairs(NamedTuple):
    """This rank's image/text embeddings and scale in at least float32, both modalities gathered
    from every rank (with gradient), and the global column of each local row's positive."""

    image: torch.Tensor
    text: torch.Tensor
    scale: torch.Tensor
    all_image: torch.Tensor
    all_text: torch.Tensor
    positives: torch.Tensor


def global_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> GlobalPairs:
    """The common start of every pairwise objective (half/bf16 -> float32; float64 stays)."""
    rank, _ = world_info()
    dtype = torch.promote_types(image_emb.dtype, torch.float32)
    image, text = image_emb.to(dtype), text_emb.to(dtype)
    positives = torch.arange(image.shape[0], device=image.device) + rank * image.shape[0]
    return GlobalPairs(image, text, logit_scale.to(dtype), gather_with_grad(image), gather_with_grad(text), positives)
