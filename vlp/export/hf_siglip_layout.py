"""The image tower of open_clip's SigLIP (a timm ViT pooled by an attention probe) against
transformers' ``SiglipVisionModel``: what must hold for the mapping of
``vlp.models.hf_siglip_state`` to be exact, read from the built timm modules.

timm's ``VisionTransformer`` with ``class_token=False``, ``global_pool='map'`` (``AttentionPoolLatent``
with one latent, a query projection and an MLP, no q/k norms) and plain blocks (``Block``:
``Attention`` with a stacked, biased qkv and no q/k norm, no gate, no layer scale; ``Mlp`` with
biases) computes patch embedding (with bias) + position embedding, the blocks, the final
``norm`` and the probe's attention, ``norm`` and MLP: the SiglipVisionModel's embeddings,
encoder, ``post_layernorm`` and head. open_clip's TimmModel must add nothing
(``timm_proj: 'none'``, no open_clip pool), so the pooled features are the trunk's.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from torch import nn

from vlp.export.hf_tower_checks import (SIGLIP_TARGETS, Norms, activation_name, layer_norm_eps, refuse, square,
                                        uniform)

WHERE, TARGET = "image tower", SIGLIP_TARGETS[0]


def _identity(module: Any, part: str) -> None:
    if module is not None and not isinstance(module, nn.Identity):
        raise refuse(WHERE, part, TARGET)


def _biased(linear: Any, part: str) -> None:
    if not isinstance(linear, nn.Linear) or linear.bias is None:
        raise refuse(WHERE, f"{part} (not a biased Linear)", TARGET)


def _blocks(trunk: nn.Module) -> Tuple[Dict[str, Any], Norms]:
    from timm.layers import Attention, Mlp
    from timm.models.vision_transformer import Block

    heads, widths, acts, norms = [], [], [], []
    for i, block in enumerate(trunk.blocks):
        if type(block) is not Block or type(block.attn) is not Attention or type(block.mlp) is not Mlp:
            raise refuse(WHERE, f"timm block {i} ({type(block).__name__} / {type(block.attn).__name__} / "
                         f"{type(block.mlp).__name__})", TARGET)
        attn = block.attn
        for module, part in ((attn.q_norm, "q/k norms"), (attn.k_norm, "q/k norms"), (attn.norm, "an attention norm"),
                             (block.ls1, "layer scale"), (block.ls2, "layer scale"), (block.mlp.norm, "an MLP norm")):
            _identity(module, f"block {i}'s {part}")
        if getattr(attn, "gate", None) is not None:
            raise refuse(WHERE, f"block {i}'s attention gate", TARGET)
        for linear, part in ((attn.qkv, "qkv"), (attn.proj, "attention proj"), (block.mlp.fc1, "fc1"),
                             (block.mlp.fc2, "fc2")):
            _biased(linear, f"block {i}'s {part}")
        if attn.qkv.out_features != 3 * attn.proj.in_features or attn.proj.in_features != trunk.embed_dim:
            raise refuse(WHERE, f"block {i}'s attention width (attn_head_dim)", TARGET)
        heads.append(int(attn.num_heads))
        widths.append(int(block.mlp.fc1.out_features))
        acts.append(activation_name(block.mlp.act, WHERE, TARGET))
        norms += [(f"block {i} norm1", block.norm1), (f"block {i} norm2", block.norm2)]
    if not heads:
        raise refuse(WHERE, "a ViT without blocks", TARGET)
    return ({"num_hidden_layers": len(heads), "num_attention_heads": uniform(heads, "heads", WHERE, TARGET),
             "intermediate_size": uniform(widths, "MLP widths", WHERE, TARGET),
             "hidden_act": uniform(acts, "activations", WHERE, TARGET)}, norms)


def _probe(trunk: nn.Module, fields: Dict[str, Any]) -> Norms:
    """The attention-probe pooling checked to be SiglipMultiheadAttentionPoolingHead's; its norm."""
    from timm.layers import AttentionPoolLatent, Mlp

    pool = getattr(trunk, "attn_pool", None)
    if getattr(trunk, "global_pool", None) != "map" or type(pool) is not AttentionPoolLatent:
        raise refuse(WHERE, f"timm pooling {getattr(trunk, 'global_pool', None)!r} (SigLIP pools with an attention "
                     "probe: timm_pool 'map')", TARGET)
    if pool.latent_len != 1 or pool.pos_embed is not None or pool.pool != "token" or type(pool.mlp) is not Mlp:
        raise refuse(WHERE, "an attention pool with several latents, a position embedding or no MLP", TARGET)
    for module, part in ((pool.q_norm, "the pool's q/k norms"), (pool.k_norm, "the pool's q/k norms"),
                         (pool.mlp.norm, "the pool's MLP norm")):
        _identity(module, part)
    for linear, part in ((pool.q, "the pool's q"), (pool.kv, "the pool's kv"), (pool.proj, "the pool's proj"),
                         (pool.mlp.fc1, "the pool's fc1"), (pool.mlp.fc2, "the pool's fc2")):
        _biased(linear, part)
    width = int(trunk.embed_dim)
    heads = fields["num_attention_heads"]
    if pool.latent.shape[-1] != width or pool.proj.out_features != width or pool.num_heads != heads:
        raise refuse(WHERE, "an attention pool whose width or heads differ from the blocks'", TARGET)
    if pool.mlp.fc1.out_features != fields["intermediate_size"]:
        raise refuse(WHERE, "an attention pool whose MLP width differs from the blocks'", TARGET)
    if activation_name(pool.mlp.act, WHERE, TARGET) != fields["hidden_act"]:
        raise refuse(WHERE, "an attention pool whose activation differs from the blocks'", TARGET)
    return [("attn_pool norm", pool.norm)]


def _trunk_stem(trunk: nn.Module) -> None:
    """No class or register tokens, learned absolute positions, a biased patch embedding, no extra norms."""
    if getattr(trunk, "cls_token", None) is not None or getattr(trunk, "reg_token", None) is not None:
        raise refuse(WHERE, "a class or register token (a timm ViT with class_token / reg_tokens)", TARGET)
    if getattr(trunk, "pos_embed", None) is None or getattr(trunk, "dynamic_img_size", False):
        raise refuse(WHERE, "no learned position embedding, or dynamic image size", TARGET)
    patch = trunk.patch_embed
    conv = patch.proj
    if not isinstance(conv, nn.Conv2d) or conv.bias is None or tuple(conv.stride) != tuple(patch.patch_size):
        raise refuse(WHERE, "a patch embedding other than a biased, non-overlapping convolution", TARGET)
    for module, part in ((patch.norm, "a patch-embedding norm"), (trunk.norm_pre, "a pre-norm (norm_pre)"),
                         (trunk.fc_norm, "an fc_norm"), (trunk.head, "a classifier head")):
        _identity(module, part)


def siglip_vision(visual: nn.Module) -> Tuple[Dict[str, Any], int]:
    """(SiglipVisionConfig fields, feature dim) of open_clip's TimmModel around a timm SigLIP ViT."""
    from timm.models.vision_transformer import VisionTransformer

    trunk = visual.trunk
    if type(trunk) is not VisionTransformer:
        raise refuse(WHERE, f"the timm model {type(trunk).__name__} (only timm's VisionTransformer maps)", TARGET)
    if len(visual.head):
        names = ", ".join(name for name, _ in visual.head.named_children())
        raise refuse(WHERE, f"open_clip's head on the timm trunk ({names}: vision_cfg.timm_proj / timm_pool)", TARGET)
    _trunk_stem(trunk)
    fields, norms = _blocks(trunk)
    norms += [("norm", trunk.norm)] + _probe(trunk, fields)
    size = square(trunk.patch_embed.img_size, "image size", WHERE, TARGET)
    if square(visual.image_size, "image size", WHERE, TARGET) != size:
        raise refuse(WHERE, f"vision_cfg.image_size {visual.image_size} other than the timm model's {size}", TARGET)
    grid = size // square(trunk.patch_embed.patch_size, "patch size", WHERE, TARGET)
    if trunk.pos_embed.shape[1] != grid * grid:
        raise refuse(WHERE, "a position embedding that is not one per patch", TARGET)
    fields.update(hidden_size=int(trunk.embed_dim), image_size=size,
                  patch_size=square(trunk.patch_embed.patch_size, "patch size", WHERE, TARGET),
                  layer_norm_eps=layer_norm_eps(norms, WHERE, TARGET), vision_use_head=True)
    return fields, int(trunk.embed_dim)
