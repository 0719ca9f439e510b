"""The checks a tower passes to map onto a transformers tower, shared by the CLIP and SigLIP
layouts (``vlp.export.hf_layout``, ``vlp.export.hf_siglip_layout``): each returns the transformers
config fields it reads, or raises :class:`~vlp.export.staging.UnsupportedExport` naming the part."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from torch import nn

from vlp.export.staging import UnsupportedExport

CLIP_TARGETS = ("transformers' CLIPVisionModel", "transformers' CLIPTextModel")
SIGLIP_TARGETS = ("transformers' SiglipVisionModel", "transformers' SiglipTextModel")
Norms = List[Tuple[str, nn.Module]]
"""(a name for messages, a LayerNorm) of a tower."""


def refuse(where: str, part: str, target: str) -> UnsupportedExport:
    """'<where>: <part> has no counterpart in <target>' (raised by the caller)."""
    return UnsupportedExport(f"{where}: {part} has no counterpart in {target}")


def activation_name(act: nn.Module, where: str, target: str) -> str:
    """transformers' ``hidden_act`` of an activation module: 'quick_gelu', 'gelu' or 'gelu_pytorch_tanh'."""
    from open_clip.transformer import QuickGELU

    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if type(act) is nn.GELU:
        return "gelu" if act.approximate == "none" else "gelu_pytorch_tanh"
    raise refuse(where, f"the activation {type(act).__name__}", target)


def layer_norm_eps(norms: Norms, where: str, target: str) -> float:
    """The one eps of a tower's LayerNorms (each with weight and bias)."""
    found = set()
    for name, norm in norms:
        if not isinstance(norm, nn.LayerNorm):
            raise refuse(where, f"{name} ({type(norm).__name__}, not a LayerNorm)", target)
        if norm.weight is None or norm.bias is None:
            raise refuse(where, f"{name} (a LayerNorm without weight or bias)", target)
        found.add(float(norm.eps))
    if len(found) > 1:
        raise refuse(where, f"LayerNorms with different eps {sorted(found)}", target)
    return found.pop()


def uniform(values: List[Any], what: str, where: str, target: str) -> Any:
    if len(set(values)) > 1:
        raise refuse(where, f"blocks with different {what} {sorted(set(values), key=str)}", target)
    return values[0]


def open_clip_blocks(transformer: nn.Module, where: str, target: str) -> Tuple[Dict[str, Any], Norms]:
    """(layers, heads, MLP width, activation of an open_clip Transformer's blocks, their LayerNorms)."""
    from open_clip.transformer import ResidualAttentionBlock

    blocks = list(transformer.resblocks)
    heads, widths, acts, norms = [], [], [], []
    for i, block in enumerate(blocks):
        if type(block) is not ResidualAttentionBlock:
            raise refuse(where, f"block {i} ({type(block).__name__}: qk_norm / scaled_cosine_attn / scale_* options)",
                         target)
        if not isinstance(block.ls_1, nn.Identity) or not isinstance(block.ls_2, nn.Identity):
            raise refuse(where, "layer scale (ls_init_value)", target)
        attn = block.attn
        if not attn._qkv_same_embed_dim or attn.in_proj_bias is None or attn.out_proj.bias is None:
            raise refuse(where, f"block {i}'s attention without stacked, biased projections", target)
        if attn.bias_k is not None or attn.add_zero_attn:
            raise refuse(where, f"block {i}'s attention key bias / zero attention", target)
        if block.mlp.c_fc.bias is None or block.mlp.c_proj.bias is None:
            raise refuse(where, f"block {i}'s MLP without biases", target)
        heads.append(int(attn.num_heads))
        widths.append(int(block.mlp.c_fc.out_features))
        acts.append(activation_name(block.mlp.gelu, where, target))
        norms += [(f"block {i} ln_1", block.ln_1), (f"block {i} ln_2", block.ln_2)]
    if not blocks:
        raise refuse(where, "a transformer without blocks", target)
    return ({"num_hidden_layers": len(blocks), "num_attention_heads": uniform(heads, "heads", where, target),
             "intermediate_size": uniform(widths, "MLP widths", where, target),
             "hidden_act": uniform(acts, "activations", where, target)}, norms)


def square(value: Any, what: str, where: str, target: str) -> int:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if pair[0] != pair[1]:
        raise refuse(where, f"a non-square {what} {pair}", target)
    return int(pair[0])
