"""Which outputs the model gives under a config, and what to set to get one it does not give.

``DualEncoder.forward`` always returns ``image_emb``, ``text_emb`` and ``logit_scale``; the rest
follow from the config: ``logit_bias`` from ``model.init_logit_bias``, ``neg_text_emb`` from hard
negatives in the batch, ``image_emb_aug`` / ``text_emb_aug`` from second views, and whatever the
heads in ``model.heads`` provide. The loss registry checks each term's declared inputs against
this before any work starts (``vlp.losses.registry.check_term_inputs``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from vlp.models.heads import HEADS, head_provides

ALWAYS = ("image_emb", "text_emb", "logit_scale")


def _registered_head_outputs() -> Dict[str, str]:
    """{output: name of the first registered head that provides it (with its default options)}."""
    by_output: Dict[str, str] = {}
    for name, head in HEADS.items():
        for output in head_provides(head, {}):
            by_output.setdefault(output, name)
    return by_output


def available_outputs(model: Any, data: Any) -> Dict[str, Optional[str]]:
    """{output name: None when ``model`` / ``data`` (a ModelConfig and a DataConfig) produce it,
    else what to set to get it}."""
    available: Dict[str, Optional[str]] = {name: None for name in ALWAYS}
    available["logit_bias"] = (None if model.init_logit_bias is not None
                               else "model.init_logit_bias (SigLIP: -10, with model.init_logit_scale=2.302585)")
    available["neg_text_emb"] = (None if data.num_negatives >= 1
                                 else "data.num_negatives >= 1 (shards with key.neg.json: python -m data_prep negatives)")
    available["image_emb_aug"] = None if data.image_views >= 2 else "data.image_views=2"
    available["text_emb_aug"] = None if data.text_views >= 2 else "data.text_views=2"
    configured = dict(model.heads or {})
    for output, head in _registered_head_outputs().items():
        available.setdefault(output, f"model.heads.{head} (a head that provides {output})")
    for name, options in configured.items():
        for output in head_provides(HEADS[name], options or {}):
            available[output] = None
    return available
