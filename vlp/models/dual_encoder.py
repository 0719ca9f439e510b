"""DualEncoder: an image tower, a text tower and a logit head, plus optional heads, behind the
outputs-dict interface of vlp.

The towers are chosen by name (``vlp.models.towers``; 'open_clip' builds open_clip's own towers
with open_clip's builders, vision first, so a seed gives the weights open_clip's CLIP would
draw), the heads by name (``vlp.models.heads``). Parameter names: ``image_tower.*``,
``text_tower.*``, ``logit_head.*``, ``heads.<name>.*`` (``vlp.models.open_clip_layout`` maps them
to and from open_clip's).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vlp.models.arch import ArchSpec, resolve_arch
from vlp.models.heads import build_head, check_heads, head_provides
from vlp.models.logit_head import LogitHead
from vlp.models.open_clip_layout import open_clip_model
from vlp.models.towers import build_tower


class DualEncoder(nn.Module):
    """Image and text towers with a learnable temperature.

    ``forward(image, text)`` returns the outputs dict every objective reads:
    ``image_emb`` [B, D] and ``text_emb`` [B, D] (L2-normalised) and ``logit_scale`` (exp of the
    learnable log-temperature, a scalar tensor); ``logit_bias`` with ``init_logit_bias``; then
    whatever the configured heads add.

    ``arch``: an open_clip model name or config dict (``vlp.models.arch.resolve_arch``), read by
    the tower builders; ``quick_gelu``: QuickGELU activations (an arch that declares
    ``quick_gelu`` gets them whatever the flag says); ``image_tower`` / ``text_tower``: registered
    tower names; ``heads``: {registered head name: its options}.
    """

    def __init__(self, arch: ArchSpec, init_logit_scale: float = math.log(1 / 0.07),
                 max_logit_scale: float = 100.0, quick_gelu: bool = False,
                 init_logit_bias: Optional[float] = None, *, image_tower: str = "open_clip",
                 text_tower: str = "open_clip", heads: Optional[Mapping[str, Mapping[str, Any]]] = None) -> None:
        super().__init__()
        arch = resolve_arch(arch)
        quick_gelu = bool(quick_gelu or arch.get("quick_gelu", False))
        image = build_tower("image", image_tower, arch, quick_gelu)  # vision first, as open_clip's CLIP
        text = build_tower("text", text_tower, arch, quick_gelu)
        self._assemble(arch, quick_gelu, image, text, LogitHead(init_logit_scale, max_logit_scale, init_logit_bias),
                       heads or {})

    @classmethod
    def from_parts(cls, arch: ArchSpec, image_tower: nn.Module, text_tower: nn.Module, logit_head: LogitHead,
                   heads: Optional[Mapping[str, Mapping[str, Any]]] = None, quick_gelu: bool = False) -> "DualEncoder":
        """A DualEncoder around towers and a logit head already built (e.g. an open_clip model's)."""
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model._assemble(resolve_arch(arch), bool(quick_gelu), image_tower, text_tower, logit_head, heads or {})
        return model

    def _assemble(self, arch: Dict[str, Any], quick_gelu: bool, image_tower: nn.Module, text_tower: nn.Module,
                  logit_head: LogitHead, heads: Mapping[str, Mapping[str, Any]]) -> None:
        self.arch = arch
        self.quick_gelu = quick_gelu
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.logit_head = logit_head
        check_heads(heads)
        self.heads = nn.ModuleDict({name: build_head(name, options, image_tower, text_tower)
                                    for name, options in heads.items()})
        self.head_outputs = {name: head_provides(type(head), heads[name]) for name, head in self.heads.items()}
        self.token_reads = tuple(sorted({read for head in self.heads.values() for read in type(head).reads}))
        """The per-token outputs some head reads (``Head.reads``), computed with the embeddings."""

    ENCODER_JOINS = {"logit_scale": ("shared",), "logit_bias": ("shared",)}
    """The encoder's outputs that are not batch rows (see ``Head.joins``)."""

    @property
    def output_joins(self) -> Dict[str, Tuple[Any, ...]]:
        """How each output of micro-batches joins into the whole batch's (gradient caching,
        vlp/train/grad_cache.py): the encoder's and the heads' ``joins``; unnamed outputs are batch rows."""
        joins = dict(self.ENCODER_JOINS)
        for head in self.heads.values():
            joins.update(type(head).joins)
        return joins

    @property
    def image_size(self) -> int:
        return int(self.image_tower.image_size)

    @property
    def context_length(self) -> int:
        return int(self.text_tower.context_length)

    @property
    def vocab_size(self) -> int:
        """The text tower's token-embedding rows (an HF tower's own ``config.vocab_size``)."""
        return int(self.text_tower.vocab_size)

    @property
    def max_log_scale(self) -> float:
        return self.logit_head.max_log_scale

    @property
    def clip(self) -> nn.Module:
        """open_clip's CLIP / CustomTextCLIP made of this model's own modules (parameters shared,
        nothing copied): for code written against open_clip's object. See
        ``vlp.models.open_clip_layout.open_clip_model``."""
        try:
            return open_clip_model(self)
        except AttributeError as err:  # a property must not raise AttributeError (nn.Module would hide it)
            raise TypeError(f"DualEncoder.clip: {err}") from err

    def encode_image(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.image_tower(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.text_tower(text)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: torch.Tensor, text: torch.Tensor, neg_text: Optional[torch.Tensor] = None,
                image_aug: Optional[torch.Tensor] = None, text_aug: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Optional inputs add outputs: ``neg_text`` (hard-negative captions [B, K, context]) ->
        ``neg_text_emb`` [B, K, D]; ``image_aug`` / ``text_aug`` (second augmented views) ->
        ``image_emb_aug`` / ``text_emb_aug`` for the intra-modal and multi-view objectives. The
        per-token outputs heads read (``image_tokens``, ``text_tokens``) come from the same tower
        pass as the embeddings, only when a head reads them, and are not returned."""
        image_emb, text_emb, tokens = self._encode_pair(image, text)
        outputs = {"image_emb": image_emb, "text_emb": text_emb, **self.logit_head()}
        if neg_text is not None:
            batch, k, length = neg_text.shape
            outputs["neg_text_emb"] = self.encode_text(neg_text.reshape(batch * k, length)).reshape(batch, k, -1)
        if image_aug is not None:
            outputs["image_emb_aug"] = self.encode_image(image_aug)
        if text_aug is not None:
            outputs["text_emb_aug"] = self.encode_text(text_aug)
        if len(self.heads):
            given = {"neg_text": neg_text, "image_aug": image_aug, "text_aug": text_aug}
            inputs = {"image": image, "text": text, **{k: v for k, v in given.items() if v is not None}}
            self._run_heads(inputs, outputs, tokens)
        return outputs

    def _encode_pair(self, image: torch.Tensor, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """(image_emb, text_emb, {per-token output a head reads: tensor}), each tower run once."""
        tokens: Dict[str, torch.Tensor] = {}
        if "image_tokens" in self.token_reads:
            image_features, tokens["image_tokens"] = self.image_tower.forward_with_tokens(image)
            image_emb = F.normalize(image_features, dim=-1)
        else:
            image_emb = self.encode_image(image)
        if "text_tokens" in self.token_reads:
            text_features, tokens["text_tokens"] = self.text_tower.forward_with_tokens(text)
            text_emb = F.normalize(text_features, dim=-1)
        else:
            text_emb = self.encode_text(text)
        return image_emb, text_emb, tokens

    def _run_heads(self, inputs: Mapping[str, torch.Tensor], outputs: Dict[str, torch.Tensor],
                   tokens: Mapping[str, torch.Tensor]) -> None:
        """Each head in turn, on the outputs so far plus the per-token outputs (which are not returned)."""
        for name, head in self.heads.items():
            added = head(inputs, {**outputs, **tokens})
            undeclared = sorted(set(added) - set(self.head_outputs[name]))
            if undeclared:
                raise ValueError(f"head {name!r} returned {undeclared}, which it does not declare in provides "
                                 f"({list(self.head_outputs[name])})")
            outputs.update(added)

    def clamp_logit_scale(self) -> None:
        """Keep exp(logit_scale) in [1, max_logit_scale] (called after every optimizer step)."""
        self.logit_head.clamp_()
