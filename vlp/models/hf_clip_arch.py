"""The open_clip architecture dict (``model.arch``) of a transformers CLIP configuration.

A transformers ``CLIPModel`` folder is read by ``model.init_from`` (``vlp.models.init_sources``,
kind 'hf_clip'); the model it loads into is the one ``model.arch`` describes. This gives that arch
from the folder's ``config.json`` (or a ``CLIPConfig``), so that

    DualEncoder(arch_from_hf_clip_config(CLIPConfig.from_pretrained(DIR)))

has exactly the parameters of the folder's weights and computes the same features:

- vision: ``image_size``, ``patch_size``, ``width`` = hidden_size, ``layers``, ``head_width`` =
  hidden_size / num_attention_heads, ``mlp_ratio`` = intermediate_size / hidden_size;
- text: ``context_length`` = max_position_embeddings, ``vocab_size``, ``width``, ``heads``,
  ``layers``, ``mlp_ratio``; pooling: transformers pools at ``argmax(input_ids)`` when
  ``eos_token_id`` is 2 (OpenAI's configs) and at the first ``eos_token_id`` otherwise, which are
  open_clip's ``pool_type`` 'argmax' and 'eos' (with ``eos_id``);
- ``embed_dim`` = projection_dim (CLIPModel projects both towers to it; the towers' own
  ``projection_dim`` serve only transformers' single-tower classes); a ``layer_norm_eps`` other than
  open_clip's 1e-5 as ``norm_kwargs``;
- activation: ``quick_gelu`` when both towers use it (open_clip has one switch for both), 'gelu'
  as nn.GELU (the two ``model.init_from`` reads: :data:`HF_ACTS`).

A configuration open_clip's towers cannot express (another model type, QuickGELU in one tower
only, another activation, a size that does not divide) is a ValueError naming the field.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

HF_ACTS = ("gelu", "quick_gelu")
"""transformers' hidden_act values open_clip's towers compute (nn.GELU, QuickGELU); ``model.init_from`` reads these."""

OPEN_CLIP_LN_EPS = 1e-5
ARGMAX_EOS_ID = 2
"""transformers' CLIP text model pools at argmax(input_ids) when ``eos_token_id`` is this (the
value OpenAI's configs carry), at the first ``eos_token_id`` otherwise."""


def _as_dict(config: Any) -> Dict[str, Any]:
    """A full CLIPConfig dict (transformers' defaults filled in) from a CLIPConfig or a config.json dict."""
    from transformers import CLIPConfig

    if isinstance(config, Mapping):
        if config.get("model_type", "clip") != "clip":
            raise ValueError(f"not a transformers CLIP configuration: model_type {config.get('model_type')!r}")
        config = CLIPConfig.from_dict(dict(config))
    if getattr(config, "model_type", None) != "clip":
        raise ValueError(f"not a transformers CLIPConfig: {type(config).__name__}")
    return config.to_dict()


def _mlp_ratio(section: str, width: int, intermediate: int) -> float:
    ratio = intermediate // width if intermediate % width == 0 else intermediate / width
    if int(width * ratio) != intermediate:
        raise ValueError(f"{section}.intermediate_size={intermediate} is not int(hidden_size * r) for any ratio r "
                         f"open_clip can store (hidden_size {width})")
    return ratio


def _heads(section: str, cfg: Mapping[str, Any]) -> int:
    width, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if width % heads:
        raise ValueError(f"{section}.hidden_size={width} is not a multiple of num_attention_heads={heads}")
    return heads


def _tower_extras(section: str, cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The norm_kwargs entry of a tower whose LayerNorm eps is not open_clip's."""
    extras: Dict[str, Any] = {}
    eps = float(cfg.get("layer_norm_eps", OPEN_CLIP_LN_EPS))
    if eps != OPEN_CLIP_LN_EPS:
        extras["norm_kwargs"] = {"eps": eps}
    return extras


def arch_from_hf_clip_config(config: Any) -> Dict[str, Any]:
    """open_clip's model-config dict for a transformers ``CLIPConfig`` (or its ``config.json`` dict):
    what ``DualEncoder(arch)`` (or ``model.arch``) builds to hold that CLIPModel's weights."""
    raw = _as_dict(config)
    text, vision = raw["text_config"], raw["vision_config"]
    acts = {section: str(cfg.get("hidden_act", "quick_gelu")) for section, cfg in
            (("vision_config", vision), ("text_config", text))}
    for section, act in acts.items():
        if act not in HF_ACTS:
            raise ValueError(f"{section}.hidden_act={act!r}: open_clip's towers (and model.init_from) take only "
                             f"{', '.join(HF_ACTS)}")
    quick = {act == "quick_gelu" for act in acts.values()}
    if len(quick) > 1:
        raise ValueError(f"hidden_act differs between the towers ({acts}): open_clip has one quick_gelu switch "
                         "for both")
    size, patch = vision["image_size"], vision["patch_size"]
    if not isinstance(size, int) or not isinstance(patch, int):
        raise ValueError(f"vision_config image_size={size!r} / patch_size={patch!r}: only square sizes (ints) map")
    v_width, t_width = int(vision["hidden_size"]), int(text["hidden_size"])
    vision_cfg: Dict[str, Any] = {
        "image_size": size, "patch_size": patch, "width": v_width, "layers": int(vision["num_hidden_layers"]),
        "head_width": v_width // _heads("vision_config", vision),
        "mlp_ratio": _mlp_ratio("vision_config", v_width, int(vision["intermediate_size"])),
        **_tower_extras("vision_config", vision)}
    text_cfg: Dict[str, Any] = {
        "context_length": int(text["max_position_embeddings"]), "vocab_size": int(text["vocab_size"]),
        "width": t_width, "heads": _heads("text_config", text), "layers": int(text["num_hidden_layers"]),
        "mlp_ratio": _mlp_ratio("text_config", t_width, int(text["intermediate_size"])),
        **_tower_extras("text_config", text)}
    eos = text.get("eos_token_id")
    if eos is None or isinstance(eos, list):
        raise ValueError(f"text_config.eos_token_id={eos!r}: transformers' CLIP pools at one end-of-text id")
    if int(eos) != ARGMAX_EOS_ID:
        text_cfg.update(pool_type="eos", eos_id=int(eos))
    arch: Dict[str, Any] = {"embed_dim": int(raw["projection_dim"]), "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    if quick == {True}:
        arch["quick_gelu"] = True
    return arch
