"""The head variants of benchmarks/train_step.py: vlp's CoCa against open_clip's CoCa (same
architecture, same weights), and vlp with the prototype head.

Each variant is (model, optimizer, objective) plus its first-batch loss. The CoCa pair uses the
open_clip CoCa layout in vlp (ViT with its attentional pooler, text tower with an appended class
token, the caption head's decoder), which computes what open_clip's CoCa computes, so the two
first losses agree.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import open_clip
import torch
from open_clip.loss import CoCaLoss

from vlp.losses.registry import compute_objective
from vlp.models.dual_encoder import DualEncoder
from vlp.train.optim import build_optimizer

CAPTION_WEIGHT = 2.0
Variant = Tuple[Tuple[Any, Any, Any], float]


class _Term:
    def __init__(self, name: str, weight: float = 1.0) -> None:
        self.name, self.weight, self.options = name, weight, {}


def _coca_arch(arch: Dict[str, Any]) -> Dict[str, Any]:
    vision = {**arch["vision_cfg"], "attentional_pool": True, "attn_pooler_queries": 64,
              "attn_pooler_heads": max(1, arch["text_cfg"].get("heads", 8))}
    text = {**arch["text_cfg"], "embed_cls": True}
    return {"embed_dim": arch["embed_dim"], "vision_cfg": vision, "text_cfg": text, "custom_text": True}


def _coca_pair(arch: Dict[str, Any]) -> Tuple[DualEncoder, Any]:
    """vlp's CoCa and open_clip's CoCa holding equal weights."""
    coca = _coca_arch(arch)
    text = coca["text_cfg"]
    decoder = {k: text[k] for k in ("context_length", "vocab_size", "width", "heads", "layers")}
    torch.manual_seed(0)
    anchor = open_clip.CoCa(coca["embed_dim"], decoder, {**text, "output_tokens": True},
                            {**coca["vision_cfg"], "output_tokens": True})
    ours = DualEncoder(coca, heads={"caption": {"layers": text["layers"]}})
    ours.image_tower.visual.load_state_dict(anchor.visual.state_dict())
    ours.text_tower.text.load_state_dict(anchor.text.state_dict())
    anchor.text_decoder.load_state_dict(ours.heads["caption"].text_decoder.state_dict())  # open_clip leaves its projection uninitialised
    ours.logit_head.logit_scale.data.copy_(anchor.logit_scale.data)
    return ours, anchor


def head_variants(arch: Dict[str, Any], optim_cfg: Any, images: torch.Tensor, texts: torch.Tensor) -> Dict[str, Variant]:
    """{variant name: ((model, optimizer, objective), first-batch loss)}."""
    ours_coca, anchor_coca = _coca_pair(arch)
    coca_terms = [_Term("clip"), _Term("caption", CAPTION_WEIGHT)]
    anchor_loss = CoCaLoss(caption_loss_weight=CAPTION_WEIGHT, clip_loss_weight=1.0)

    def vlp_coca(model, im, tx):
        return compute_objective(model(im, tx), coca_terms)["total"]

    def open_clip_coca(model, im, tx):
        out = model(im, tx)
        clip, caption = anchor_loss(out["image_features"], out["text_features"], out["logits"], out["labels"],
                                    out["logit_scale"])
        return clip + caption

    torch.manual_seed(0)
    proto = DualEncoder(arch, heads={"prototypes": {"num_prototypes": 64}})
    proto_terms = [_Term("clip"), _Term("prototype")]

    def vlp_proto(model, im, tx):
        return compute_objective(model(im, tx), proto_terms)["total"]

    variants = {"vlp_coca": (ours_coca, vlp_coca), "open_clip_coca": (anchor_coca, open_clip_coca),
                "vlp_prototypes": (proto, vlp_proto)}
    out: Dict[str, Variant] = {}
    for name, (model, objective) in variants.items():
        with torch.no_grad():
            first = objective(model, images, texts).item()
        out[name] = ((model, build_optimizer(model, optim_cfg), objective), first)
    return out


def head_figures(per_s: Dict[str, float]) -> Dict[str, Any]:
    """The head entries of the benchmark's JSON line."""
    return {
        "vlp_coca_samples_per_s": round(per_s["vlp_coca"], 2),
        "open_clip_coca_samples_per_s": round(per_s["open_clip_coca"], 2),
        "vlp_prototypes_samples_per_s": round(per_s["vlp_prototypes"], 2),
        "coca_ratio": round(per_s["vlp_coca"] / per_s["open_clip_coca"], 3),
        "head_cost": {"caption": round(per_s["vlp_coca"] / per_s["vlp"], 3),
                      "prototypes": round(per_s["vlp_prototypes"] / per_s["vlp"], 3)},
    }
