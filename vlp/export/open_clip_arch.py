"""The open_clip model a DualEncoder exports as: its ``model_cfg``, its state dict, and the check
that open_clip builds exactly that layout from that config.

What maps (anything else is refused with :class:`~vlp.export.staging.UnsupportedExport` naming
the part, before an export writes anything):

- the 'open_clip' towers (open_clip's own ViT / ModifiedResNet / timm image towers, its text
  transformer or HF text tower): CLIP or CustomTextCLIP, as the arch says;
- the CoCa caption head (``vlp.models.heads.captioning``) as open_clip's ``CoCa`` where the layouts
  agree: the image tower pools its own tokens (``vision_cfg.attentional_pool``), the decoder reads
  the text states and the pooled image tokens at its own width (no ``text_token_proj`` /
  ``image_token_proj``), its MLP ratio is 4 (open_clip's CoCa builds its decoder with the default)
  and its activation is the model's (``quick_gelu``). Names: ``heads.caption.text_decoder.*`` ->
  ``text_decoder.*``, the text tower -> ``text.*`` (``custom_text: true`` is written);
- no other head (prototypes, or any registered later) has an open_clip counterpart.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from vlp.export.staging import UnsupportedExport
from vlp.models.dual_encoder import DualEncoder
from vlp.models.heads.captioning import CaptionHead
from vlp.models.open_clip_layout import to_open_clip_key
from vlp.models.towers.open_clip_image import OpenCLIPImageTower
from vlp.models.towers.open_clip_text import OpenCLIPCustomTextTower, OpenCLIPTextTower

KEEP = "export --format safetensors to keep it"
CAPTION = "caption"
DECODER_PREFIX = f"heads.{CAPTION}.text_decoder."
OPEN_CLIP_MLP_RATIO = 4.0
"""open_clip's ``_build_text_decoder_tower`` passes no ``mlp_ratio``: its CoCa decoder always has 4."""


def _check_towers(model: DualEncoder) -> None:
    image, text = model.image_tower, model.text_tower
    if not isinstance(image, OpenCLIPImageTower):
        raise UnsupportedExport(f"image_tower: open_clip has no counterpart for the image tower {getattr(image, 'name', '?')!r} "
                                f"({image.describe()}); only the 'open_clip' image tower exports to open_clip; {KEEP}")
    if not isinstance(text, (OpenCLIPTextTower, OpenCLIPCustomTextTower)):
        raise UnsupportedExport(f"text_tower: open_clip has no counterpart for the text tower {getattr(text, 'name', '?')!r} "
                                f"({text.describe()}); only the 'open_clip' text tower exports to open_clip; {KEEP}")


def _activation_is_quick_gelu(decoder: nn.Module) -> bool:
    from open_clip.transformer import QuickGELU

    return isinstance(decoder.resblocks[0].mlp.gelu, QuickGELU)


def _caption_head(model: DualEncoder) -> Optional[CaptionHead]:
    """The CoCa head when the model has one that open_clip's CoCa expresses; None without heads;
    UnsupportedExport naming the part otherwise."""
    for name, head in model.heads.items():
        if name != CAPTION or not isinstance(head, CaptionHead):
            raise UnsupportedExport(f"heads.{name}: open_clip has no counterpart for the {type(head).__name__} head "
                                    f"(only the CoCa caption head exports, as open_clip's CoCa); {KEEP}")
    head = model.heads[CAPTION] if CAPTION in model.heads else None
    if head is None:
        return None
    where = f"heads.{CAPTION}"
    decoder = head.text_decoder
    if head.attn_pool is not None:
        raise UnsupportedExport(f"{where}.attn_pool: open_clip's CoCa pools the image tokens inside its ViT, but this "
                                "head pools them itself; build the image tower with vision_cfg.attentional_pool: true "
                                f"(configs/coca_vit_b32.yaml), or {KEEP}")
    if head.text_token_proj is not None:
        raise UnsupportedExport(f"{where}.text_token_proj: the decoder width {decoder.width} differs from the text "
                                f"tower's {head.text_token_proj.in_features} and open_clip's CoCa has no projection "
                                f"between them; leave {where}.width unset, or {KEEP}")
    if head.image_token_proj is not None:
        raise UnsupportedExport(f"{where}.image_token_proj: the pooled image tokens ({head.image_token_proj.in_features} "
                                f"wide: the arch's embed_dim) differ from the decoder width {decoder.width} and open_clip's "
                                f"CoCa has no projection between them; make embed_dim the decoder width, or {KEEP}")
    block = decoder.resblocks[0]
    ratio = block.mlp.c_fc.out_features / block.mlp.c_fc.in_features
    if ratio != OPEN_CLIP_MLP_RATIO:
        raise UnsupportedExport(f"{where}.text_decoder: MLP ratio {ratio:g}, but open_clip's CoCa builds its decoder "
                                f"with {OPEN_CLIP_MLP_RATIO:g}; {KEEP}")
    if _activation_is_quick_gelu(decoder) != bool(model.quick_gelu):
        raise UnsupportedExport(f"{where}.text_decoder: its activation differs from the model's quick_gelu="
                                f"{bool(model.quick_gelu)}, which open_clip's CoCa gives its decoder; {KEEP}")
    return head


def _multimodal_cfg(head: CaptionHead, vision_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """open_clip's ``multimodal_cfg`` of the head's decoder (what ``_build_text_decoder_tower`` reads)."""
    from open_clip.transformer import LayerScale

    decoder = head.text_decoder
    block = decoder.resblocks[0]
    cfg: Dict[str, Any] = {"context_length": int(decoder.context_length), "vocab_size": int(head.vocab_size),
                           "width": int(decoder.width), "heads": int(block.attn.num_heads),
                           "layers": int(decoder.layers)}
    if isinstance(block.ls_1, LayerScale):  # any value builds the LayerScale; the weights replace it
        cfg["ls_init_value"] = float(block.ls_1.gamma.detach().flatten()[0])
    if "attn_pooler_heads" in vision_cfg:  # as open_clip's own CoCa configs state it (unused by the decoder)
        cfg["attn_pooler_heads"] = int(vision_cfg["attn_pooler_heads"])
    return cfg


def open_clip_model_cfg(model: DualEncoder) -> Dict[str, Any]:
    """open_clip's ``model_cfg`` for ``model`` (CLIP / CustomTextCLIP, or CoCa with a caption head):
    its arch with the activation, the logit bias and, for CoCa, ``multimodal_cfg``. Paths are as the
    arch has them. UnsupportedExport naming the part that open_clip cannot express."""
    _check_towers(model)
    head = _caption_head(model)
    model_cfg: Dict[str, Any] = json.loads(json.dumps(model.arch))  # a deep copy
    model_cfg["quick_gelu"] = bool(model.quick_gelu)  # open_clip reloads the same activation
    # the layout of our text tower (vlp holds it whole for an arch with any custom_text key; open_clip
    # only for custom_text: true or an HF tower)
    model_cfg["custom_text"] = isinstance(model.text_tower, OpenCLIPCustomTextTower)
    bias = model.logit_head.logit_bias
    if bias is not None:  # open_clip creates the bias parameter only when told to
        model_cfg["init_logit_bias"] = float(bias.detach())
    if head is None:
        return model_cfg
    text_cfg = model_cfg.setdefault("text_cfg", {})
    if isinstance(model.text_tower, OpenCLIPTextTower) and text_cfg.get("embed_cls"):
        raise UnsupportedExport("text_tower: text_cfg.embed_cls without custom_text drops the class token (as open_clip's "
                                "CLIP does), but open_clip's CoCa pools at it; set the arch's custom_text: true, "
                                f"or {KEEP}")
    vision_cfg = model_cfg["vision_cfg"]
    vision_cfg["output_tokens"] = text_cfg["output_tokens"] = True  # CoCa reads (pooled, tokens) from both towers
    model_cfg["custom_text"] = True  # open_clip's factory builds CoCa only for a custom text tower
    model_cfg["multimodal_cfg"] = _multimodal_cfg(head, vision_cfg)
    if int(model.text_tower.pad_id):
        model_cfg["pad_id"] = int(model.text_tower.pad_id)
    return model_cfg


def _open_clip_key(key: str, coca: bool) -> str:
    if key.startswith(DECODER_PREFIX):
        return "text_decoder." + key[len(DECODER_PREFIX):]
    name = to_open_clip_key(key)
    if coca and key.startswith("text_tower.") and not name.startswith("text."):
        return "text." + name  # CLIP's text parts are CoCa's TextTransformer's
    return name


def open_clip_state(model: DualEncoder) -> Dict[str, torch.Tensor]:
    """``model``'s weights under open_clip's names (detached, contiguous, CPU; a model on the meta
    device gives meta tensors, shapes alone): CLIP's / CustomTextCLIP's, or CoCa's with a caption
    head (:func:`open_clip_model_cfg` checks it maps)."""
    coca = CAPTION in model.heads
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("heads.") and not key.startswith(DECODER_PREFIX):
            raise UnsupportedExport(f"{key}: open_clip's CoCa has no place for it; {KEEP}")
        value = value.detach().contiguous()
        state[_open_clip_key(key, coca)] = value if value.is_meta else value.cpu()
    return state


def open_clip_class(model_cfg: Dict[str, Any]) -> type:
    """The class open_clip's factory builds for ``model_cfg`` (CLIP, CustomTextCLIP or CoCa)."""
    import open_clip

    custom = model_cfg.get("custom_text", False) or "hf_model_name" in model_cfg.get("text_cfg", {})
    if custom:
        return open_clip.CoCa if "multimodal_cfg" in model_cfg else open_clip.CustomTextCLIP
    return open_clip.CLIP


def _state_shapes(cls: type, cfg: Dict[str, Any]) -> Dict[str, Tuple[int, ...]]:
    """{name: shape} of the state dict of ``cls(**cfg)``, built on the meta device, or on the CPU
    without drawing random weights where a builder reads tensor values (some timm trunks)."""
    try:
        with torch.device("meta"):
            model = cls(**cfg)
    except Exception:  # the CPU build below raises what is really wrong with the config
        from vlp.interop.fast_init import skip_parameter_init

        with skip_parameter_init():
            model = cls(**cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_open_clip_layout(model_cfg: Dict[str, Any], state: Dict[str, torch.Tensor]) -> None:
    """open_clip builds from ``model_cfg`` a model (on the meta device: no memory, no init) whose
    state dict has exactly ``state``'s names and shapes; UnsupportedExport listing the differences."""
    cfg = json.loads(json.dumps(model_cfg))
    cfg.pop("custom_text", None)
    if "hf_model_name" in cfg.get("text_cfg", {}):
        cfg["text_cfg"]["hf_model_pretrained"] = False
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    cls = open_clip_class(model_cfg)
    expected = _state_shapes(cls, cfg)
    given = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"{k}: missing (open_clip's {cls.__name__} has {expected[k]})" for k in expected if k not in given]
    problems += [f"{k}: open_clip's {cls.__name__} has no such weight" for k in given if k not in expected]
    problems += [f"{k}: {given[k]} here, {expected[k]} in open_clip's {cls.__name__}" for k in given
                 if k in expected and given[k] != expected[k]]
    if problems:
        raise UnsupportedExport(f"open_clip's {cls.__name__} built from the exported config does not hold these weights: "
                                f"{'; '.join(problems[:6])}{' ...' if len(problems) > 6 else ''}; {KEEP}")
