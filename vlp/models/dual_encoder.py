"""DualEncoder: an open_clip image/text model behind the outputs-dict interface of vlp."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from vlp.models.vit_inference import image_features

ArchSpec = Union[str, Mapping[str, Any]]


def resolve_arch(arch: ArchSpec) -> Dict[str, Any]:
    """An open_clip model config dict from a registered name or a dict {embed_dim, vision_cfg, text_cfg}."""
    if isinstance(arch, str):
        cfg = open_clip.get_model_config(arch)
        if cfg is None:
            raise ValueError(f"unknown open_clip model {arch!r}; see open_clip.list_models()")
        return dict(cfg)
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in arch.items()}


class DualEncoder(nn.Module):
    """Image and text towers with a learnable temperature.

    ``forward(image, text)`` returns the outputs dict every objective reads:
    ``image_emb`` [B, D] and ``text_emb`` [B, D] (L2-normalised) and ``logit_scale`` (exp of the
    learnable log-temperature, a scalar tensor).
    """

    def __init__(self, arch: ArchSpec, init_logit_scale: float = math.log(1 / 0.07),
                 max_logit_scale: float = 100.0, quick_gelu: bool = False,
                 init_logit_bias: Optional[float] = None) -> None:
        super().__init__()
        self.arch = resolve_arch(arch)
        kwargs = {k: v for k, v in self.arch.items() if k in ("embed_dim", "vision_cfg", "text_cfg")}
        text_cfg = self.arch.get("text_cfg", {})
        if text_cfg.get("hf_model_name"):
            check_local_hf_model(str(text_cfg["hf_model_name"]), bool(text_cfg.get("hf_model_pretrained", True)))
        if "custom_text" in self.arch or "hf_model_name" in text_cfg:
            model_class = open_clip.CustomTextCLIP
        else:
            model_class = open_clip.CLIP
        # an arch that declares QuickGELU (e.g. "ViT-B-32-quickgelu") gets it whatever the flag says
        self.quick_gelu = bool(quick_gelu or self.arch.get("quick_gelu", False))
        self.clip = model_class(**kwargs, quick_gelu=self.quick_gelu, init_logit_scale=init_logit_scale,
                                init_logit_bias=init_logit_bias)
        self.max_log_scale = math.log(max_logit_scale)

    @property
    def image_size(self) -> int:
        size = self.clip.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def context_length(self) -> int:
        return int(self.arch["text_cfg"].get("context_length", 77))

    @property
    def vocab_size(self) -> int:
        """The text tower's token-embedding rows (an HF tower's own ``config.vocab_size``)."""
        return int(self.clip.vocab_size)

    def encode_image(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = image_features(self.clip, image)  # open_clip's forward, or its exact inference path
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = text_features(self.clip, text)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: torch.Tensor, text: torch.Tensor, neg_text: Optional[torch.Tensor] = None,
                image_aug: Optional[torch.Tensor] = None, text_aug: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Optional inputs add outputs: ``neg_text`` (hard-negative captions [B, K, context]) ->
        ``neg_text_emb`` [B, K, D]; ``image_aug`` / ``text_aug`` (second augmented views) ->
        ``image_emb_aug`` / ``text_emb_aug`` for the intra-modal and multi-view objectives."""
        outputs = {
            "image_emb": self.encode_image(image),
            "text_emb": self.encode_text(text),
            "logit_scale": self.clip.logit_scale.exp(),
        }
        if self.clip.logit_bias is not None:
            outputs["logit_bias"] = self.clip.logit_bias
        if neg_text is not None:
            batch, k, length = neg_text.shape
            outputs["neg_text_emb"] = self.encode_text(neg_text.reshape(batch * k, length)).reshape(batch, k, -1)
        if image_aug is not None:
            outputs["image_emb_aug"] = self.encode_image(image_aug)
        if text_aug is not None:
            outputs["text_emb_aug"] = self.encode_text(text_aug)
        return outputs

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep exp(logit_scale) in [1, max_logit_scale] (called after every optimizer step)."""
        self.clip.logit_scale.clamp_(0.0, self.max_log_scale)


HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def check_local_hf_model(name: str, pretrained: bool) -> None:
    """An HF text tower comes from a local folder only (open_clip would download a hub name);
    with ``hf_model_pretrained`` the folder must hold weights."""
    folder = Path(name)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text_cfg.hf_model_name: {name} is not a local folder with a config.json (vlp never "
                                "downloads: save the transformers model with save_pretrained and name its folder)")
    if pretrained and not any((folder / f).is_file() for f in HF_WEIGHT_FILES):
        raise FileNotFoundError(f"text_cfg.hf_model_name: {name} holds no weights ({', '.join(HF_WEIGHT_FILES[::2])}); "
                                "set text_cfg.hf_model_pretrained: false to start the HF text tower from random init")


def text_features(clip: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text(text)`` (not normalised), computed on the batch cut after its last real
    token wherever that gives the same features: open_clip's causal tower pooled at the end token
    (:func:`encode_text_trimmed`) and HF towers (padding is masked out of their attention)."""
    if can_trim_text(clip):
        return encode_text_trimmed(clip, text)
    length = hf_text_length(clip, text)
    return clip.encode_text(text if length is None else text[:, :length])


def hf_text_length(clip: nn.Module, text: torch.Tensor) -> Optional[int]:
    """For an HF text tower, the position after the batch's last non-pad token (the tower masks
    pad tokens out of attention and pooling, and positions count from the left, so the padding
    after it changes nothing); None for other towers."""
    from open_clip.hf_model import HFTextEncoder

    tower = getattr(clip, "text", None)
    pad = getattr(getattr(tower, "config", None), "pad_token_id", None)
    if not isinstance(tower, HFTextEncoder) or pad is None or text.numel() == 0:
        return None
    positions = torch.arange(1, text.shape[1] + 1, device=text.device).expand_as(text)
    return max(int((positions * (text != pad)).max()), 1)


def text_pool_positions(text: torch.Tensor, pool_type: str, eos_id: Optional[int]) -> torch.Tensor:
    """[B] the position open_clip's ``text_global_pool`` takes for 'argmax' (the largest id) or
    'eos' (the first ``eos_id``; position 0 for a row without one)."""
    if pool_type == "eos":
        return (text == eos_id).int().argmax(dim=-1)
    return text.argmax(dim=-1)


def can_trim_text(clip: nn.Module) -> bool:
    """True when ``clip``'s text tower is open_clip's causal transformer pooled at the end token
    ('argmax' or 'eos'), so :func:`encode_text_trimmed` gives its exact features."""
    return (isinstance(clip, open_clip.CLIP) and clip.attn_mask is not None
            and clip.text_pool_type in ("argmax", "eos") and not getattr(clip.transformer, "grad_checkpointing", False))


def encode_text_trimmed(clip: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """open_clip's text features, running the tower only up to the batch's last pooled (end) token.

    With a causal mask, a position never attends to later ones, so the padding after the
    longest caption cannot change any pooled (end-of-text) feature: the result equals the
    full-context forward, at the cost of the real caption lengths instead of the context
    length (web captions average ~15 BPE tokens against a context of 77).
    """
    pooled = text_pool_positions(text, clip.text_pool_type, getattr(clip, "text_eos_id", None))
    length = int(pooled.max().item()) + 1
    text = text[:, :length]
    cast_dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(text).to(cast_dtype) + clip.positional_embedding[:length].to(cast_dtype)
    x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), pooled]
    if clip.text_projection is None:
        return x
    return clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection
