"""Which transformers class holds a DualEncoder exactly, read from its built modules, and the
tower sizes its config needs; :class:`~vlp.export.staging.UnsupportedExport` naming the part that
has no counterpart.

``CLIPModel``: open_clip's ViT image tower (class token, ``ln_pre``, pooled at the class token,
``proj`` matrix, no patch bias) and its causal text transformer pooled at argmax or at its end id
(``text_projection`` matrix). ``SiglipModel``: open_clip's SigLIP towers (``ViT-B-16-SigLIP``
and kin): a timm ViT without class token pooled by an attention probe (``timm_pool: 'map'``,
``timm_proj: 'none'``) and a bidirectional text transformer pooled at its last position with a
biased projection (``custom_text``, ``no_causal_mask``, ``pool_type: 'last'``, ``proj_bias``).
The image tower decides which; every block of a tower must have the same heads, MLP width and
activation, and all its LayerNorms one eps (a transformers tower config has one of each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from torch import nn

from vlp.export.hf_siglip_layout import siglip_vision
from vlp.export.hf_tower_checks import (CLIP_TARGETS, SIGLIP_TARGETS, layer_norm_eps, open_clip_blocks, refuse,
                                        square)
from vlp.export.staging import UnsupportedExport
from vlp.models.hf_clip_arch import ARGMAX_EOS_ID


@dataclass
class HFLayout:
    """``kind`` 'clip' or 'siglip'; ``vision`` / ``text``: the transformers tower config fields;
    ``text_pool``: 'argmax', 'eos' or 'last' (``pool_eos_id`` with 'eos'); ``text_prefix``: where the
    text tower's parts sit in open_clip's state dict ('' as CLIP holds them, 'text.' held whole)."""

    kind: str
    vision: Dict[str, Any]
    text: Dict[str, Any]
    embed_dim: int
    text_pool: str
    pool_eos_id: Optional[int]
    text_prefix: str


def _clip_vision(visual: nn.Module) -> Tuple[Dict[str, Any], int]:
    """(CLIPVisionConfig fields, projection dim) of open_clip's VisionTransformer."""
    where, target = "image tower", CLIP_TARGETS[0]
    if getattr(visual, "attn_pool", None) is not None:
        raise refuse(where, "attentional_pool", target)
    if visual.pool_type != "tok":
        raise refuse(where, f"pool_type {visual.pool_type!r} (transformers pools at the class token)", target)
    if isinstance(visual.ln_pre, nn.Identity):
        raise refuse(where, "no ln_pre (vision_cfg.no_ln_pre)", target)
    if not isinstance(visual.proj, nn.Parameter):
        kind = "none" if visual.proj is None else type(visual.proj).__name__
        raise refuse(where, f"a projection of type {kind!r} (vision_cfg.proj_type; transformers has a matrix)", target)
    if visual.conv1.bias is not None:
        raise refuse(where, "a patch-embedding bias", target)
    fields, norms = open_clip_blocks(visual.transformer, where, target)
    eps = layer_norm_eps([("ln_pre", visual.ln_pre), *norms, ("ln_post", visual.ln_post)], where, target)
    size = square(visual.image_size, "image size", where, target)
    patch = square(visual.patch_size, "patch size", where, target)
    fields.update(hidden_size=int(visual.transformer.width), image_size=size, patch_size=patch, layer_norm_eps=eps,
                  projection_dim=int(visual.proj.shape[1]))
    return fields, int(visual.proj.shape[1])


def _text_parts(tower: nn.Module, where: str, target: str) -> Tuple[nn.Module, str, str, Optional[int]]:
    """(the module holding the text transformer's parts, their state-dict prefix, pool type, eos id)."""
    from open_clip.transformer import TextTransformer

    from vlp.models.towers.open_clip_text import OpenCLIPCustomTextTower, OpenCLIPTextTower

    if isinstance(tower, OpenCLIPTextTower):
        return tower, "", tower.text_pool_type, tower.text_eos_id
    if isinstance(tower, OpenCLIPCustomTextTower):
        if not isinstance(tower.text, TextTransformer):
            raise refuse(where, f"an HF text tower ({type(tower.text).__name__}, text_cfg.hf_model_name)", target)
        return tower.text, "text.", tower.text.pool_type, tower.text.eos_id
    raise refuse(where, f"the text tower {type(tower).__name__}", target)


def _text_fields(text: nn.Module, where: str, target: str) -> Dict[str, Any]:
    if getattr(text, "cls_emb", None) is not None:
        raise refuse(where, "a class embedding (text_cfg.embed_cls)", target)
    fields, norms = open_clip_blocks(text.transformer, where, target)
    fields.update(vocab_size=int(text.token_embedding.weight.shape[0]), hidden_size=int(text.transformer.width),
                  max_position_embeddings=int(text.positional_embedding.shape[0]),
                  layer_norm_eps=layer_norm_eps([*norms, ("ln_final", text.ln_final)], where, target))
    return fields


def _clip_text(tower: nn.Module) -> Tuple[Dict[str, Any], int, str, Optional[int], str]:
    where, target = "text tower", CLIP_TARGETS[1]
    text, prefix, pool, eos = _text_parts(tower, where, target)
    if text.attn_mask is None:
        raise refuse(where, "no causal mask (text_cfg.no_causal_mask)", target)
    if pool not in ("argmax", "eos"):
        raise refuse(where, f"pool_type {pool!r} (transformers pools at argmax or at the first end id)", target)
    if pool == "eos" and eos == ARGMAX_EOS_ID:
        raise refuse(where, f"pooling at end id {ARGMAX_EOS_ID} (transformers reads eos_token_id {ARGMAX_EOS_ID} as "
                     "argmax pooling)", target)
    if not isinstance(text.text_projection, nn.Parameter):
        kind = "none" if text.text_projection is None else "a Linear with bias (text_cfg.proj_bias)"
        raise refuse(where, f"a text projection of type {kind}", target)
    fields = _text_fields(text, where, target)
    fields["projection_dim"] = int(text.text_projection.shape[1])
    return fields, int(text.text_projection.shape[1]), pool, eos, prefix


def _siglip_text(tower: nn.Module) -> Tuple[Dict[str, Any], int, str]:
    where, target = "text tower", SIGLIP_TARGETS[1]
    text, prefix, pool, _ = _text_parts(tower, where, target)
    if text.attn_mask is not None:
        raise refuse(where, "a causal mask (SigLIP's text model is bidirectional: text_cfg.no_causal_mask)", target)
    if pool != "last" or getattr(text, "use_pad_mask", False):
        raise refuse(where, f"pool_type {pool!r} / a padding mask (SigLIP pools at the last position, unmasked)",
                     target)
    proj = text.text_projection
    if not isinstance(proj, nn.Linear) or proj.bias is None:
        raise refuse(where, "a text projection without bias (SigLIP's head is a biased Linear: text_cfg.proj_bias)",
                     target)
    fields = _text_fields(text, where, target)
    fields["projection_size"] = int(proj.out_features)
    return fields, int(proj.out_features), prefix


def hf_layout(model: nn.Module) -> HFLayout:
    """The transformers class and tower configs that hold ``model`` exactly; UnsupportedExport naming
    the first part that has no counterpart (before anything is written)."""
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    from vlp.models.towers.open_clip_image import OpenCLIPImageTower

    if len(getattr(model, "heads", {})):
        raise UnsupportedExport(f"heads: {', '.join(model.heads)} have no counterpart in transformers' CLIPModel or "
                                "SiglipModel (export --format safetensors keeps them)")
    image = model.image_tower
    visual = image.visual if isinstance(image, OpenCLIPImageTower) else None
    if isinstance(visual, VisionTransformer):
        vision, embed = _clip_vision(visual)
        text, text_embed, pool, eos, prefix = _clip_text(model.text_tower)
        kind = "clip"
    elif isinstance(visual, TimmModel):
        vision, embed = siglip_vision(visual)
        text, text_embed, prefix = _siglip_text(model.text_tower)
        kind, pool, eos = "siglip", "last", None
    else:
        name = type(visual).__name__ if visual is not None else type(image).__name__
        raise refuse("image tower", f"{name} (only open_clip's ViT and timm's SigLIP ViT map)", CLIP_TARGETS[0])
    if embed != text_embed:
        raise UnsupportedExport(f"the image tower's features have {embed} dimensions and the text tower's {text_embed}")
    return HFLayout(kind=kind, vision=vision, text=text, embed_dim=embed, text_pool=pool,
                    pool_eos_id=None if eos is None else int(eos), text_prefix=prefix)
