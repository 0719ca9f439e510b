"""The export-only modules the ONNX graphs are traced from: the DualEncoder's towers run through
open_clip's own forwards, with no data-dependent Python decisions.

The towers' training forwards (``vlp.models.towers``) are faster but make host decisions a graph
cannot hold: the text is cut after the batch's last end token (``.item()``), the last block runs
for gathered rows only, and the attention kernel is picked by device and dtype. These modules
compute the same features over the same parameters (nothing copied) the way open_clip computes
them, so they trace:

- image: ``visual(pixels)`` (open_clip's VisionTransformer, ModifiedResNet or timm trunk),
  then L2-normalised. An attentional pooler with one query keeps its axis ([B, 1, D]); it is dropped
  as the tower drops it.
- text, open_clip's causal tower pooled at an end token ('argmax' / 'eos', what
  ``vlp.models.towers.open_clip_text.can_trim_text`` accepts): open_clip's ``CLIP.encode_text`` on the
  ids as given, with the positional embedding and causal mask cut to their length. A position
  never attends to a later one and the pooled position is the same with or without the padding
  after it, so ids of any length up to the context give the features of the same ids padded to
  the context, at the cost of their length.
- text, every other tower (non-causal, other pooling, CoCa's ``embed_cls`` tower, an HF tower):
  the ids are padded to the context with the tower's pad id inside the graph, then the tower's
  open_clip forward (``CLIP.encode_text`` or the held ``text`` module) runs on the full context.
"""

from __future__ import annotations

from typing import Optional

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from vlp.models.towers.open_clip_image import OpenCLIPImageTower
from vlp.models.towers.open_clip_text import OpenCLIPCustomTextTower, OpenCLIPTextTower, can_trim_text


class ImageEncoderGraph(nn.Module):
    """pixel_values [B, 3, H, W] (normalised) -> image_embeds [B, D], L2-normalised."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if isinstance(self.tower, OpenCLIPImageTower):
            features = self.tower.visual(pixel_values)
            if features.ndim == 3 and features.shape[1] == 1:  # one attention-pooler query keeps its axis
                features = features[:, 0]
        else:  # another registered tower: its own forward (the parity check judges it)
            features = self.tower(pixel_values)
        return F.normalize(features, dim=-1)


def computes_at_given_length(tower: nn.Module) -> bool:
    """True when :class:`TextEncoderGraph` runs ``tower`` on the ids at their own length (a causal
    open_clip tower pooled at an end token the padding cannot create), False when it pads them to
    the context first."""
    if not isinstance(tower, OpenCLIPTextTower) or not can_trim_text(tower):
        return False
    return not (tower.text_pool_type == "eos" and tower.text_eos_id == tower.pad_id)


class TextEncoderGraph(nn.Module):
    """input_ids [B, L] int64, 1 <= L <= context -> text_embeds [B, D], L2-normalised; equal to the
    tower's features of the same ids padded to the context with its pad id (module docstring)."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self.context_length = int(tower.context_length)
        self.pad_id = int(getattr(tower, "pad_id", 0))
        self.at_given_length = computes_at_given_length(tower)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.at_given_length:
            return F.normalize(self._causal_features(input_ids), dim=-1)
        ids = F.pad(input_ids, (0, self.context_length - input_ids.shape[1]), value=self.pad_id)
        tower = self.tower
        if isinstance(tower, OpenCLIPTextTower):
            features = open_clip.CLIP.encode_text(tower, ids)  # it reads only the attributes the tower holds
        elif isinstance(tower, OpenCLIPCustomTextTower):
            features = tower.text(ids)
        else:  # another registered tower: its own forward (the parity check judges it)
            features = tower(ids)
        return F.normalize(features, dim=-1)

    def _causal_features(self, ids: torch.Tensor) -> torch.Tensor:
        """open_clip's ``CLIP.encode_text`` with the positional embedding and mask cut to the ids' length."""
        from open_clip.transformer import text_global_pool

        tower = self.tower
        length = ids.shape[1]
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(ids).to(cast_dtype) + tower.positional_embedding[:length].to(cast_dtype)
        x = tower.ln_final(tower.transformer(x, attn_mask=tower.attn_mask[:length, :length]))
        x = text_global_pool(x, ids, tower.text_pool_type, eos_token_id=tower.text_eos_id)
        projection: Optional[nn.Module | torch.Tensor] = tower.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def length_semantics(tower: nn.Module) -> str:
    """One line for the metadata: what a shorter ``input_ids`` row means to the text graph."""
    if computes_at_given_length(tower):
        return ("a row of length L gives the embedding of the same ids padded to context_length with pad_id; "
                "computed at length L (causal tower pooled at its end token), so cutting the padding after the "
                "batch's last end token is faster and changes nothing")
    return ("a row of length L gives the embedding of the same ids padded to context_length with pad_id: the "
            "graph pads them and computes at the full context")
