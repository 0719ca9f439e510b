"""Captioning (CoCa) loss: next-token cross-entropy over caption tokens, padding ignored.

Exact under data parallelism: each rank sums its token losses and divides by the number of
caption tokens of the *global* batch times the world size, so the mean over ranks is the global
token mean even when ranks hold different numbers of tokens.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vlp.losses.distributed import world_info
from vlp.losses.registry import register_term


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, pad_id: int = 0, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` [B, L, V] against ``labels`` [B, L] over the tokens that
    are neither ``pad_id`` nor negative (a head marks padding -100 when the tokenizer pads with
    another id than 0)."""
    _, world = world_info()
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    labels = labels.masked_fill(labels < 0, pad_id)
    per_token = F.cross_entropy(logits.permute(0, 2, 1), labels, ignore_index=pad_id,
                                label_smoothing=label_smoothing, reduction="sum")
    count = (labels != pad_id).sum().to(logits.dtype)
    if world > 1:
        count = count.clone()
        dist.all_reduce(count)
    return per_token * world / count.clamp(min=1)


@register_term("caption", inputs=("caption_logits", "caption_labels"))
def caption_term(outputs: Dict[str, torch.Tensor], pad_id: int = 0, label_smoothing: float = 0.0) -> torch.Tensor:
    """Needs ``caption_logits`` [B, L, V] and ``caption_labels`` [B, L] from a captioning head."""
    if "caption_logits" not in outputs:
        raise KeyError("the caption objective needs a captioning head (caption_logits in the model outputs)")
    return caption_loss(outputs["caption_logits"], outputs["caption_labels"], pad_id, label_smoothing)
