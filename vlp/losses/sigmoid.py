"""SigLIP: pairwise sigmoid loss with a learnable temperature and bias (init t = log 10, b = -10).

Every (image, text) pair is an independent binary problem: +1 on the diagonal, -1 elsewhere.
There is no softmax over the batch, so the global loss is a sum over blocks: each rank scores its
local images against one rank's text block at a time (text embeddings gathered with gradient),
never holding the [B, R*B] logits at once. Normalised like open_clip's SigLipLoss: the sum over
all pairs of this rank's images divided by the local batch size; averaging over ranks (as data
parallel gradient averaging does) gives the one-process loss on the global batch.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from vlp.losses.distributed import gather_with_grad, world_info


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


def siglip_term(outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Registry adapter; needs ``logit_bias`` in the outputs (set model.init_logit_bias)."""
    if "logit_bias" not in outputs:
        raise KeyError("the siglip objective needs a learnable bias: set model.init_logit_bias (SigLIP: -10)")
    return siglip_loss(outputs["image_emb"], outputs["text_emb"], outputs["logit_scale"], outputs["logit_bias"])
