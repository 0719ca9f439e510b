"""The open_clip registry name (``open_clip.list_models()``) of an exported architecture, so that
``open_clip.create_model_and_transforms(NAME, pretrained=DIR/open_clip_model.safetensors)`` loads the
export as well as ``'local-dir:DIR'`` does.

Two model configs name the same architecture when open_clip builds the same model class with the
same weights and the same evaluation forward from both: each is compared after filling in
open_clip's defaults (``CLIPVisionCfg``, ``CLIPTextCfg``, ``MultimodalCfg``), leaving out what
changes neither (training-only settings, whether pretrained tower weights are fetched, the
tokenizer's settings, ``output_tokens``, the initial values of parameters the checkpoint replaces),
with ``quick_gelu`` and the presence of a logit bias compared as they are.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Dict, List, Mapping, Optional, Tuple

IGNORED = {
    "vision_cfg": ("output_tokens", "patch_dropout", "timm_model_pretrained", "timm_drop", "timm_drop_path"),
    "text_cfg": ("output_tokens", "hf_model_pretrained", "hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs"),
}
DECODER_KEYS = ("context_length", "width", "heads", "layers")
"""The ``multimodal_cfg`` entries open_clip's ``_build_text_decoder_tower`` reads (and ``ls_init_value``,
whose presence alone matters)."""


def normalised_model_cfg(model_cfg: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """``model_cfg`` in the form two configs of the same architecture share; None when open_clip's
    config classes refuse it."""
    from open_clip.coca_model import MultimodalCfg
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    cfg = json.loads(json.dumps(dict(model_cfg)))
    try:
        vision = asdict(CLIPVisionCfg(**cfg.pop("vision_cfg", {})))
        text = asdict(CLIPTextCfg(**cfg.pop("text_cfg", {})))
        multimodal = cfg.pop("multimodal_cfg", None)
        decoder = None if multimodal is None else asdict(MultimodalCfg(**multimodal))
    except TypeError:  # a key open_clip's config classes do not know
        return None
    for section, keys in (("vision_cfg", vision), ("text_cfg", text)):
        for key in IGNORED[section]:
            keys.pop(key, None)
    if isinstance(vision["layers"], (list, tuple)):  # a ModifiedResNet has no patches
        vision.pop("patch_size")
    out = {
        "embed_dim": cfg.pop("embed_dim", None),
        "custom_text": bool(cfg.pop("custom_text", False) or text["hf_model_name"]),
        "quick_gelu": bool(cfg.pop("quick_gelu", False)),
        "logit_bias": cfg.pop("init_logit_bias", None) is not None,
        "nonscalar_logit_scale": bool(cfg.pop("nonscalar_logit_scale", False)),
        "pad_id": int(cfg.pop("pad_id", 0)),
        "vision_cfg": vision, "text_cfg": text,
        "multimodal_cfg": None if decoder is None else {**{k: decoder[k] for k in DECODER_KEYS},
                                                        "layer_scale": decoder["ls_init_value"] is not None},
    }
    cfg.pop("init_logit_scale", None)  # the checkpoint's logit_scale replaces it
    out.update(cfg)  # anything else is compared as it is
    return json.loads(json.dumps(out))


def _registry() -> Tuple[Tuple[str, str], ...]:
    """(name, normalised config as JSON) of every open_clip registry config, in open_clip's order."""
    import open_clip

    found = []
    for name in open_clip.list_models():
        normal = normalised_model_cfg(open_clip.get_model_config(name))
        if normal is not None:
            found.append((name, json.dumps(normal, sort_keys=True)))
    return tuple(found)


def registry_names(model_cfg: Mapping[str, Any]) -> List[str]:
    """The open_clip registry names whose config builds the same model as ``model_cfg``, in
    ``open_clip.list_models()`` order (usually one; none for a custom architecture)."""
    normal = normalised_model_cfg(model_cfg)
    if normal is None:
        return []
    key = json.dumps(normal, sort_keys=True)
    return [name for name, other in _registry() if other == key]
