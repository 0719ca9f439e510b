"""Intra-modal and multi-view contrastive terms.

* ``intra_modal``: SLIP/TCL-style InfoNCE between two augmented views of the same modality
  (image-image: ``image_emb`` vs ``image_emb_aug``; text-text: ``text_emb`` vs ``text_emb_aug``),
  symmetric, over the global batch, with its own fixed temperature.
* ``mv_infonce``: MV-InfoNCE (A Principled Framework for Multi-View Contrastive Learning): one
  term per data point over all of its V views at once: -log( sum_{l != m} e^{s(z_i^l, z_i^m)} /
  (sum_{l != m} e^{s(z_i^l, z_i^m)} + sum_{j != i} sum_{l, m} e^{s(z_i^l, z_j^m)}) ).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F

from vlp.losses.distributed import gather_with_grad, world_info
from vlp.losses.registry import register_term


def view_infonce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two views [B, D] of the same samples, negatives from all ranks."""
    rank, _ = world_info()
    dtype = torch.promote_types(a.dtype, torch.float32)
    a, b = a.to(dtype), b.to(dtype)
    labels = torch.arange(a.shape[0], device=a.device) + rank * a.shape[0]
    logits_ab = a @ gather_with_grad(b).T / temperature
    logits_ba = b @ gather_with_grad(a).T / temperature
    return (F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits_ba, labels)) / 2


def mv_infonce(views: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """MV-InfoNCE over V >= 2 views, each [B, D] (this rank's rows; negatives from all ranks)."""
    if len(views) < 2:
        raise ValueError(f"mv_infonce needs at least 2 views, got {len(views)}")
    rank, _ = world_info()
    dtype = torch.promote_types(views[0].dtype, torch.float32)
    local = torch.stack([v.to(dtype) for v in views])                       # [V, B, D]
    everyone = torch.stack([gather_with_grad(v.to(dtype)) for v in views])  # [V, N, D]
    n_views, batch = local.shape[0], local.shape[1]
    # sims[l, m, i, j] = <z_i^l, z_j^m> / T for local i, global j
    sims = torch.einsum("lid,mjd->lmij", local, everyone) / temperature
    own = torch.arange(batch, device=local.device) + rank * batch
    is_self = torch.zeros(batch, everyone.shape[1], dtype=torch.bool, device=local.device)
    is_self[torch.arange(batch), own] = True
    same_view = torch.eye(n_views, dtype=torch.bool, device=local.device)[:, :, None, None]
    positive_mask = is_self[None, None] & ~same_view                   # i's own views, l != m
    negative_mask = (~is_self)[None, None].expand_as(sims)             # every view of every j != i
    neg_inf = torch.finfo(sims.dtype).min
    positive = torch.logsumexp(sims.masked_fill(~positive_mask, neg_inf).permute(2, 0, 1, 3).flatten(1), dim=1)
    everything = torch.logsumexp(sims.masked_fill(~(positive_mask | negative_mask), neg_inf).permute(2, 0, 1, 3).flatten(1), dim=1)
    return (everything - positive).mean()


MODALITIES = {"both": ["image", "text"], "image": ["image"], "text": ["text"]}


def _intra_modal_inputs(options: Dict[str, Any]) -> List[str]:
    """The embeddings and the second views of the modalities ``intra_modal`` compares."""
    names = MODALITIES.get(options.get("modalities", "both"), [])
    return [f"{name}_emb{suffix}" for name in names for suffix in ("", "_aug")]


@register_term("intra_modal", inputs=_intra_modal_inputs)
def intra_modal_term(outputs: Dict[str, torch.Tensor], modalities: str = "both", temperature: float = 0.1) -> torch.Tensor:
    """Needs the second augmented view(s): ``image_emb_aug`` and/or ``text_emb_aug``."""
    if modalities not in MODALITIES:
        raise ValueError(f"intra_modal: modalities must be one of {', '.join(MODALITIES)}, got {modalities!r}")
    names: List[str] = MODALITIES[modalities]
    terms = []
    for name in names:
        if f"{name}_emb_aug" not in outputs:
            raise KeyError(f"the intra_modal objective needs {name}_emb_aug (a second augmented {name} view)")
        terms.append(view_infonce(outputs[f"{name}_emb"], outputs[f"{name}_emb_aug"], temperature))
    return sum(terms) / len(terms)


@register_term("mv_infonce", inputs=("image_emb", "text_emb", "image_emb_aug|text_emb_aug"))
def mv_infonce_term(outputs: Dict[str, torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
    """All views present in the outputs: image_emb, text_emb and any *_emb_aug."""
    keys = [k for k in ("image_emb", "text_emb", "image_emb_aug", "text_emb_aug") if k in outputs]
    return mv_infonce([outputs[k] for k in keys], temperature)
