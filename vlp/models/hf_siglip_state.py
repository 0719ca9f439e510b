"""open_clip's SigLIP state dict in the layout of a transformers ``SiglipModel``.

open_clip builds SigLIP (``ViT-B-16-SigLIP`` and its kin) from a timm ViT without a class token
that pools with a multi-head attention probe (timm's ``AttentionPoolLatent``, ``timm_pool: 'map'``)
and a bidirectional text transformer pooled at its last position with a biased projection
(``no_causal_mask``, ``pool_type: 'last'``, ``proj_bias``), held whole (``custom_text``):

    visual.trunk.patch_embed.proj            ->  vision_model.embeddings.patch_embedding
    visual.trunk.pos_embed [1, N, D]         ->  vision_model.embeddings.position_embedding.weight [N, D]
    visual.trunk.blocks.i.{norm1, norm2}     ->  vision_model.encoder.layers.i.{layer_norm1, layer_norm2}
    visual.trunk.blocks.i.attn.qkv           ->  ... self_attn.{q,k,v}_proj (three row blocks)
    visual.trunk.blocks.i.attn.proj          ->  ... self_attn.out_proj
    visual.trunk.blocks.i.mlp.{fc1, fc2}     ->  ... mlp.{fc1, fc2}
    visual.trunk.norm                        ->  vision_model.post_layernorm
    visual.trunk.attn_pool.latent            ->  vision_model.head.probe
    visual.trunk.attn_pool.{q, kv}           ->  vision_model.head.attention.in_proj_* (q rows, then k and v)
    visual.trunk.attn_pool.proj              ->  vision_model.head.attention.out_proj
    visual.trunk.attn_pool.{norm, mlp}       ->  vision_model.head.{layernorm, mlp}
    text.<open_clip text transformer>        ->  text_model.* (as in ``vlp.models.hf_clip_state``)
    text.text_projection (Linear, biased)    ->  text_model.head
    logit_scale, logit_bias  (scalars)       ->  logit_scale, logit_bias  ([1])

Every tensor keeps its values bit for bit (the in_proj split and the reshapes only move them).
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch

from vlp.models.hf_clip_state import LAYER_PARTS, StateTaker, split_in_proj

_VISION = "vision_model."
_TRUNK = "visual.trunk."
_BLOCK_PARTS = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj",
                "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_POOL_PARTS = {"attention.out_proj": "proj", "layernorm": "norm", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_TEXT_RENAMES = {
    "text_model.embeddings.token_embedding.weight": "text.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "text.positional_embedding",
    "text_model.final_layer_norm.weight": "text.ln_final.weight",
    "text_model.final_layer_norm.bias": "text.ln_final.bias",
    "text_model.head.weight": "text.text_projection.weight",
    "text_model.head.bias": "text.text_projection.bias",
}


def _indices(state: Mapping[str, torch.Tensor], prefix: str) -> list:
    return sorted({int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)})


def hf_siglip_state_from_open_clip(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A transformers SiglipModel's state dict from open_clip's SigLIP state dict (module docstring);
    ValueError naming the keys it lacks or has no place for. A state without ``logit_bias`` gets a
    zero bias (SiglipModel always has one; a zero adds nothing to its logits)."""
    out: Dict[str, torch.Tensor] = {}
    take = StateTaker(state, "open_clip's SigLIP state dict (timm MAP ViT and text transformer)")

    out[f"{_VISION}embeddings.patch_embedding.weight"] = take(f"{_TRUNK}patch_embed.proj.weight")
    out[f"{_VISION}embeddings.patch_embedding.bias"] = take(f"{_TRUNK}patch_embed.proj.bias")
    out[f"{_VISION}embeddings.position_embedding.weight"] = take(f"{_TRUNK}pos_embed")[0].contiguous()
    for i in _indices(state, f"{_TRUNK}blocks."):
        src, dst = f"{_TRUNK}blocks.{i}.", f"{_VISION}encoder.layers.{i}."
        for kind in ("weight", "bias"):
            for name, part in split_in_proj(take(f"{src}attn.qkv.{kind}")).items():
                out[f"{dst}self_attn.{name}_proj.{kind}"] = part
            for theirs, ours in _BLOCK_PARTS.items():
                out[f"{dst}{theirs}.{kind}"] = take(f"{src}{ours}.{kind}")
    out[f"{_VISION}post_layernorm.weight"] = take(f"{_TRUNK}norm.weight")
    out[f"{_VISION}post_layernorm.bias"] = take(f"{_TRUNK}norm.bias")
    pool, head = f"{_TRUNK}attn_pool.", f"{_VISION}head."
    out[f"{head}probe"] = take(f"{pool}latent")
    for kind in ("weight", "bias"):
        out[f"{head}attention.in_proj_{kind}"] = torch.cat([take(f"{pool}q.{kind}"), take(f"{pool}kv.{kind}")])
        for theirs, ours in _POOL_PARTS.items():
            out[f"{head}{theirs}.{kind}"] = take(f"{pool}{ours}.{kind}")
    for theirs, ours in _TEXT_RENAMES.items():
        out[theirs] = take(ours)
    for i in _indices(state, "text.transformer.resblocks."):
        src, dst = f"text.transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            for name, part in split_in_proj(take(f"{src}attn.in_proj_{kind}")).items():
                out[f"{dst}self_attn.{name}_proj.{kind}"] = part
            for theirs, ours in LAYER_PARTS.items():
                out[f"{dst}{theirs}.{kind}"] = take(f"{src}{ours}.{kind}")
    scale = take("logit_scale")
    out["logit_scale"] = scale.reshape(1).clone()
    bias = take("logit_bias") if "logit_bias" in state else torch.zeros((), dtype=scale.dtype)
    out["logit_bias"] = bias.reshape(1).clone()
    take.check_all_taken("open_clip SigLIP weights with parts transformers' SiglipModel has no place for")
    return out
