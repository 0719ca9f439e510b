"""SigLIP: pairwise sigmoid loss with a learnable temperature and bias (init t = log 10, b = -10).

Every (image, text) pair is an independent binary problem: +1 on the diagonal, -1 elsewhere.
There is no softmax over the batch, so the global loss is a sum over blocks: each rank scores its
local images against one rank's text block at a time (text embeddings gathered with gradient),
never holding the [B, R*B] logits at once. Normalised like open_clip's SigLipLoss: the sum over
all pairs of this rank's images divided by the local batch size; averaging over ranks (as data
parallel gradient averaging does) gives the one-process loss on the global batch.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

from vlp.losses.distributed import gather_with_grad, world_info
from vlp.losses.registry import CONTRASTIVE_INPUTS, register_term


def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor) -> torch.Tensor:
    """-sum_ij log sigmoid(z_ij * (scale * <x_i, y_j> + bias)) / B_local, z = +1 on matching pairs."""
    rank, world = world_info()
    dtype = torch.promote_types(image_emb.dtype, torch.float32)
    image_emb, text_emb = image_emb.to(dtype), text_emb.to(dtype)
    scale, bias = logit_scale.to(dtype), logit_bias.to(dtype)
    batch = image_emb.shape[0]
    all_text = gather_with_grad(text_emb)
    total = image_emb.new_zeros(())
    for block in range(world):
        logits = scale * image_emb @ all_text[block * batch:(block + 1) * batch].T + bias
        signs = -torch.ones_like(logits)
        if block == rank:
            signs.diagonal().fill_(1.0)
        total = total - F.logsigmoid(signs * logits).sum()
    return total / batch


class _ChunkedSigmoidLoss(torch.autograd.Function):
    """-sum_ij log sigmoid(z_ij (scale q_i.k_j + bias)) / rows, z = +1 at (i, offset + i), one
    [chunk, N] block at a time in forward and again in backward (nothing of size rows x N kept)."""

    @staticmethod
    def forward(ctx, queries, keys, scale, bias, offset: int, chunk: int):  # type: ignore[override]
        total = queries.new_zeros(())
        for start in range(0, queries.shape[0], chunk):
            logits = scale * (queries[start:start + chunk] @ keys.T) + bias
            rows = torch.arange(logits.shape[0], device=logits.device)
            signs = -torch.ones_like(logits)
            signs[rows, rows + start + offset] = 1.0
            total = total - F.logsigmoid(signs * logits).sum()
            del logits, signs
        ctx.save_for_backward(queries, keys, scale, bias)
        ctx.offset, ctx.chunk = offset, chunk
        return total / queries.shape[0]

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        queries, keys, scale, bias = ctx.saved_tensors
        weight = grad_out / queries.shape[0]
        grad_q, grad_k = torch.empty_like(queries), torch.zeros_like(keys)
        grad_scale = torch.zeros((), dtype=queries.dtype, device=queries.device)
        grad_bias = torch.zeros((), dtype=queries.dtype, device=queries.device)
        for start in range(0, queries.shape[0], ctx.chunk):
            q = queries[start:start + ctx.chunk]
            sims = q @ keys.T
            rows = torch.arange(sims.shape[0], device=sims.device)
            signs = -torch.ones_like(sims)
            signs[rows, rows + start + ctx.offset] = 1.0
            # d/dl [-log sigmoid(z l)] = -z sigmoid(-z l)
            g = -signs * torch.sigmoid(-signs * (scale * sims + bias)) * weight
            del signs
            grad_bias += g.sum()
            grad_scale += (g * sims).sum()
            g.mul_(scale)
            grad_q[start:start + ctx.chunk] = g @ keys
            grad_k.addmm_(g.T, q)
            del sims, g
        return grad_q, grad_k, grad_scale.reshape(scale.shape), grad_bias.reshape(bias.shape), None, None


def chunked_siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                        logit_bias: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
    """siglip_loss with O(chunk x global batch) memory: same value and gradients."""
    from vlp.losses.chunked import block_rows

    rank, _ = world_info()
    dtype = torch.promote_types(image_emb.dtype, torch.float32)
    all_text = gather_with_grad(text_emb.to(dtype))
    rows = block_rows(chunk, all_text.shape[0])
    return _ChunkedSigmoidLoss.apply(image_emb.to(dtype), all_text, logit_scale.to(dtype), logit_bias.to(dtype),
                                     rank * image_emb.shape[0], rows)


@register_term("siglip", inputs=(*CONTRASTIVE_INPUTS, "logit_bias"))
def siglip_term(outputs: Dict[str, torch.Tensor], chunked: bool = False, chunk_size: Optional[int] = None) -> torch.Tensor:
    """Registry adapter; needs ``logit_bias`` in the outputs (set model.init_logit_bias).
    ``chunked``: the memory-efficient form, same value and gradients."""
    if "logit_bias" not in outputs:
        raise KeyError("the siglip objective needs a learnable bias: set model.init_logit_bias (SigLIP: -10)")
    args = (outputs["image_emb"], outputs["text_emb"], outputs["logit_scale"], outputs["logit_bias"])
    return chunked_siglip_loss(*args, chunk=chunk_size) if chunked else siglip_loss(*args)
