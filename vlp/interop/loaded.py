"""What every loader returns: a model ready to encode, its tokenizer, image transform and remarks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, List

import torch
from PIL import Image

from vlp.data.tokenizers import build_tokenizer
from vlp.data.transforms import eval_transform

if TYPE_CHECKING:
    from vlp.config import Config
    from vlp.models.dual_encoder import DualEncoder


@dataclass
class LoadedModel:
    """A model ready to encode: L2-normalised ``encode_image`` / ``encode_text``, its tokenizer and
    its evaluation image transform. ``model`` is a DualEncoder for our checkpoints and open_clip's
    CLIP / CustomTextCLIP files, a thin wrapper for other open_clip models and transformers CLIP
    (``vlp.interop.open_clip_files.OpenCLIPEncoder``, ``vlp.interop.hf_clip.HFCLIPEncoder``).
    ``warnings``: checkpoint/config mismatches evaluated anyway (``allow_mismatch=True``);
    ``notes``: remarks such as 'activation: undeclared'. Both belong in the results JSON."""

    model: torch.nn.Module
    tokenizer: Callable[[List[str]], torch.Tensor]
    image_transform: Callable[[Image.Image], torch.Tensor]
    name: str
    warnings: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def wrap_model(model: "DualEncoder", cfg: "Config", name: str) -> LoadedModel:
    """A LoadedModel around an in-memory model (used by the trainer's final evaluation)."""
    return LoadedModel(model=model, tokenizer=build_tokenizer(cfg.model.tokenizer, model.context_length),
                       image_transform=eval_transform(model.image_size), name=name)
