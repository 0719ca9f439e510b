"""A transformers ``CLIPModel`` state dict in open_clip's CLIP layout (ViT image tower, causal text tower).

The two hold the same computation under other names: transformers keeps the query, key and value
projections apart (open_clip's ``nn.MultiheadAttention`` stacks them in ``in_proj_*``) and stores
the projections as ``nn.Linear`` weights [D, W] (open_clip: matrices [W, D] it multiplies from
the right). Nothing else differs, so the converted weights give transformers' features; the two
functions here are exact inverses (every tensor's values kept bit for bit).
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch

LAYER_PARTS = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_RENAMES = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text_projection"}
_TOWERS = {"vision_model": "visual.transformer", "text_model": "transformer"}


def _layers(state: Mapping[str, torch.Tensor], tower: str) -> list:
    prefix = f"{tower}.encoder.layers."
    return sorted({int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)})


class StateTaker:
    """Entries of ``state`` taken by name for an exact layout mapping: a missing one is a
    ValueError ('not WHAT: no KEY'), and :meth:`check_all_taken` refuses any entry left over."""

    def __init__(self, state: Mapping[str, torch.Tensor], what: str) -> None:
        self.state, self.what = state, what
        self.used: set = set()

    def __call__(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise ValueError(f"not {self.what}: no {key!r}")
        self.used.add(key)
        return self.state[key]

    def check_all_taken(self, message: str) -> None:
        """ValueError ``message: [the first keys left]`` when some entry was not taken."""
        left = sorted(set(self.state) - self.used)
        if left:
            raise ValueError(f"{message}: {left[:6]}")


def open_clip_state_from_hf_clip(hf_state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """open_clip's CLIP state dict from a transformers CLIPModel's; ValueError naming the keys it
    lacks or cannot place (another model class, e.g. a CLIP variant with other parts)."""
    state = {k: v for k, v in hf_state.items() if not k.endswith("position_ids")}  # a buffer older files saved
    out: Dict[str, torch.Tensor] = {}
    take = StateTaker(state, "a transformers CLIPModel state dict")

    for src, dst in _RENAMES.items():
        if src in state or src != "logit_scale":
            out[dst] = take(src)
    for src, dst in _TRANSPOSED.items():
        out[dst] = take(src).t().contiguous()
    for tower, ours in _TOWERS.items():
        for i in _layers(state, tower):
            src, dst = f"{tower}.encoder.layers.{i}.", f"{ours}.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[f"{dst}attn.in_proj_{kind}"] = torch.cat([take(f"{src}self_attn.{n}_proj.{kind}") for n in "qkv"])
                for part, theirs in LAYER_PARTS.items():
                    out[f"{dst}{theirs}.{kind}"] = take(f"{src}{part}.{kind}")
    take.check_all_taken("transformers CLIP weights with parts open_clip's CLIP has no place for")
    return out


def split_in_proj(tensor: torch.Tensor) -> Dict[str, torch.Tensor]:
    """{'q', 'k', 'v'}: the three equal row blocks of ``nn.MultiheadAttention``'s ``in_proj_*``."""
    if tensor.shape[0] % 3:
        raise ValueError(f"an attention in_proj of {tensor.shape[0]} rows is not three stacked projections")
    return {name: part.contiguous() for name, part in zip("qkv", tensor.chunk(3, dim=0))}


def hf_clip_state_from_open_clip(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A transformers CLIPModel's state dict from open_clip's CLIP state dict (ViT image tower,
    causal text tower): the inverse of :func:`open_clip_state_from_hf_clip`. ValueError naming the
    keys it lacks or has no place for (e.g. an attentional pooler, a ResNet tower, a logit bias)."""
    out: Dict[str, torch.Tensor] = {}
    take = StateTaker(state, "open_clip's CLIP state dict (ViT and text transformer)")

    for theirs, ours in _RENAMES.items():
        if ours in state or ours != "logit_scale":
            out[theirs] = take(ours)
    for theirs, ours in _TRANSPOSED.items():
        out[theirs] = take(ours).t().contiguous()
    for tower, ours in _TOWERS.items():
        prefix = f"{ours}.resblocks."
        for i in sorted({int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}):
            src, dst = f"{prefix}{i}.", f"{tower}.encoder.layers.{i}."
            for kind in ("weight", "bias"):
                for name, part in split_in_proj(take(f"{src}attn.in_proj_{kind}")).items():
                    out[f"{dst}self_attn.{name}_proj.{kind}"] = part
                for theirs, part in LAYER_PARTS.items():
                    out[f"{dst}{theirs}.{kind}"] = take(f"{src}{part}.{kind}")
    take.check_all_taken("open_clip weights with parts transformers' CLIPModel has no place for")
    return out
