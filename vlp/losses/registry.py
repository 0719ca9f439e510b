"""Objectives by name, and the weighted sum of the configured terms.

A term is a pure function ``term(outputs, **options) -> scalar tensor``. Adding an objective is one
module in vlp/losses/ plus one line in ``LOSS_TERMS``.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, Sequence

import torch

from vlp.losses.contrastive import clip_term, dcl_term, negclip_term
from vlp.losses.captioning import caption_term
from vlp.losses.geometry import alignment_term, uniformity_term
from vlp.losses.hard_negatives import mochi_term
from vlp.losses.intra_modal import intra_modal_term, mv_infonce_term
from vlp.losses.sigmoid import siglip_term

LossTerm = Callable[..., torch.Tensor]

LOSS_TERMS: Dict[str, LossTerm] = {
    "clip": clip_term,
    "siglip": siglip_term,
    "dcl": dcl_term,
    "negclip": negclip_term,
    "uniformity": uniformity_term,
    "alignment": alignment_term,
    "mochi": mochi_term,
    "intra_modal": intra_modal_term,
    "mv_infonce": mv_infonce_term,
    "caption": caption_term,
}


def _options_of(term: LossTerm) -> list[str]:
    return list(inspect.signature(term).parameters)[1:]


def validate_terms(terms: Sequence[Any]) -> None:
    """Fail at start-up on an unknown term name or an option the term does not take."""
    from vlp.config import ConfigError

    for i, spec in enumerate(terms):
        if spec.name not in LOSS_TERMS:
            close = difflib.get_close_matches(spec.name, list(LOSS_TERMS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"loss.terms[{i}].name: unknown objective {spec.name!r}{hint} "
                              f"(valid: {', '.join(LOSS_TERMS)})")
        valid = _options_of(LOSS_TERMS[spec.name])
        for key in spec.options:
            if key not in valid:
                raise ConfigError(f"loss.terms[{i}].options.{key}: {spec.name!r} takes no option {key!r} "
                                  f"(valid: {', '.join(valid) or 'none'})")


def check_term_inputs(cfg: Any) -> None:
    """Fail at start-up when a term needs model outputs the data or model config will not produce."""
    from vlp.config import ConfigError

    for i, spec in enumerate(cfg.loss.terms):
        options = dict(spec.options)
        needs = []
        if spec.name == "negclip" and cfg.data.num_negatives < 1:
            needs.append("data.num_negatives >= 1 (shards with key.neg.json: python -m data_prep negatives)")
        if spec.name == "siglip" and cfg.model.init_logit_bias is None:
            needs.append("model.init_logit_bias (SigLIP: -10, with model.init_logit_scale=2.302585)")
        if spec.name == "intra_modal":
            modalities = options.get("modalities", "both")
            if modalities in ("both", "image") and cfg.data.image_views < 2:
                needs.append("data.image_views=2")
            if modalities in ("both", "text") and cfg.data.text_views < 2:
                needs.append("data.text_views=2")
        if spec.name == "mv_infonce" and cfg.data.image_views < 2 and cfg.data.text_views < 2:
            needs.append("data.image_views=2 or data.text_views=2 (more than two views)")
        if spec.name == "caption":
            needs.append("a captioning head, which this model does not have yet")
        if needs:
            raise ConfigError(f"loss.terms[{i}] ({spec.name}) needs " + " and ".join(needs))


def compute_objective(outputs: Dict[str, torch.Tensor], terms: Sequence[Any]) -> Dict[str, torch.Tensor]:
    """Every configured term by name plus ``total`` = sum of weight * term."""
    losses: Dict[str, torch.Tensor] = {}
    total = None
    device = next(v.device for v in outputs.values() if isinstance(v, torch.Tensor))
    # Objectives run outside autocast: under it a matmul of float32 inputs would still run in
    # bf16/fp16. Each term casts its inputs up to at least float32 itself.
    with torch.autocast(device_type=device.type, enabled=False):
        for spec in terms:
            value = LOSS_TERMS[spec.name](outputs, **dict(spec.options))
            losses[spec.name] = value
            total = spec.weight * value if total is None else total + spec.weight * value
    losses["total"] = total
    return losses
