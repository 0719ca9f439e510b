"""The one mapping between our state-dict names and open_clip's, and open_clip's model over our parts.

Our names (a DualEncoder with the 'open_clip' towers) and open_clip's (CLIP / CustomTextCLIP):

    image_tower.visual.*          <->  visual.*
    text_tower.<part>.*           <->  <part>.*    (CLIP: transformer, token_embedding, positional_embedding,
                                                    ln_final, text_projection)
    text_tower.text.*             <->  text.*      (CustomTextCLIP: an HF or custom text tower)
    logit_head.logit_scale        <->  logit_scale
    logit_head.logit_bias         <->  logit_bias
    heads.caption.text_decoder.*  <->  text_decoder.*   (CoCa's multimodal decoder: the caption head)
    heads.<name>.*                      (no open_clip counterpart: left out of open_clip's layout)

Checkpoints written before the parts existed hold open_clip's names under ``clip.``
(``clip.visual.*``, ``clip.logit_scale``): :func:`as_vlp_state` reads those, open_clip's own
state dicts and ours alike.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import torch
from torch import nn

PART_PREFIXES = ("image_tower.", "text_tower.", "logit_head.", "heads.")
STATE_LAYOUT = "parts-1"
"""Names the layout above in exported files (safetensors metadata ``vlp_state_layout``); the
``clip.``-prefixed layout before it had no name."""
OLD_PREFIX = "clip."
LOGIT_KEYS = ("logit_scale", "logit_bias")
COCA_DECODER = "text_decoder."
"""open_clip CoCa's multimodal text decoder, which vlp holds as the caption head (``heads.caption``)."""


def to_open_clip_key(key: str) -> str:
    """open_clip's name of our parameter ``key`` (not for ``heads.*``, which open_clip lacks)."""
    for prefix in ("image_tower.", "text_tower.", "logit_head."):
        if key.startswith(prefix):
            return key[len(prefix):]
    raise KeyError(f"{key!r} has no open_clip name (only image_tower.*, text_tower.* and logit_head.* do)")


def from_open_clip_key(key: str) -> str:
    """Our name of open_clip's parameter ``key``."""
    if key.startswith("visual."):
        return "image_tower." + key
    if key in LOGIT_KEYS:
        return "logit_head." + key
    if key.startswith(COCA_DECODER):
        return "heads.caption." + key
    return "text_tower." + key


def to_open_clip_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``model``'s towers and logit head as open_clip's state dict (detached, contiguous, on the CPU):
    what ``open_clip.CLIP(...).load_state_dict(..., strict=True)`` takes. Heads are left out."""
    return {to_open_clip_key(k): v.detach().contiguous().cpu() for k, v in model.state_dict().items()
            if not k.startswith("heads.")}


def from_open_clip_state(state: Mapping[str, Any]) -> Dict[str, Any]:
    """An open_clip state dict under our names."""
    return {from_open_clip_key(k): v for k, v in state.items()}


def as_vlp_state(state: Mapping[str, Any]) -> Dict[str, Any]:
    """Our state dict from any layout we read: ours; ours from before the model had named parts
    (open_clip's names under ``clip.``); open_clip's own (with or without ``module.`` prefixes)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith(OLD_PREFIX) for k in state):
        return {(from_open_clip_key(k[len(OLD_PREFIX):]) if k.startswith(OLD_PREFIX) else k): v
                for k, v in state.items()}
    if any(k.startswith(PART_PREFIXES) for k in state):
        return dict(state)
    return from_open_clip_state(state)


def open_clip_model(model: nn.Module) -> nn.Module:
    """open_clip's CLIP (or CustomTextCLIP for a whole-held text tower) made of ``model``'s own
    modules and parameters: nothing is copied or initialised, so a change through either shows in
    both. Its ``state_dict()`` is :func:`to_open_clip_state`'s layout and its ``encode_image`` /
    ``encode_text`` are open_clip's full forwards."""
    import open_clip

    from vlp.models.towers.open_clip_image import OpenCLIPImageTower
    from vlp.models.towers.open_clip_text import OpenCLIPCustomTextTower, OpenCLIPTextTower

    image, text, head = model.image_tower, model.text_tower, model.logit_head
    if not isinstance(image, OpenCLIPImageTower) or not isinstance(text, (OpenCLIPTextTower, OpenCLIPCustomTextTower)):
        raise TypeError(f"open_clip's model needs open_clip towers, not {type(image).__name__} / {type(text).__name__}")
    custom = isinstance(text, OpenCLIPCustomTextTower)
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    clip = cls.__new__(cls)
    nn.Module.__init__(clip)
    clip.output_dict = False
    clip.visual = image.visual
    if custom:
        clip.text = text.text
    else:
        for part in ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection"):
            setattr(clip, part, getattr(text, part))
        clip.text_pool_type, clip.text_eos_id = text.text_pool_type, text.text_eos_id
        clip.register_buffer("attn_mask", text.attn_mask, persistent=False)
    clip.context_length, clip.vocab_size = text.context_length, text.vocab_size
    clip.logit_scale = head.logit_scale
    clip.logit_bias = head.logit_bias
    clip.training = model.training  # the flag of this object alone: the shared modules keep theirs
    return clip
