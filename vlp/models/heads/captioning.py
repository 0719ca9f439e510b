"""The CoCa captioning head (``model.heads={caption: {...}}``): the multimodal half of CoCa's text decoder.

CoCa (Yu et al. 2022) splits its text decoder in two. The unimodal half is the model's text tower
as it is: causal self-attention over the caption, whose end-of-text output is the contrastive
text embedding (``text_emb``). This head holds the multimodal half, open_clip's
:class:`~open_clip.transformer.MultimodalTransformer`: per layer, causal self-attention over the
text tower's token states and cross-attention to the image, then a projection to the vocabulary.
The image side is open_clip's :class:`~open_clip.transformer.AttentionalPooler` over the image
tower's tokens (``n_queries`` learned queries, 256 by default); an open_clip ViT built with its own
attentional pooler (``vision_cfg.attentional_pool: true | 'parallel' | 'cascade'``) already gives
pooled query tokens, which the head reads as they are (with ``'parallel'`` the ViT's 1-query
contrastive pooler gives ``image_emb``, as in the CoCa paper).

Outputs (teacher forcing): ``caption_logits`` [B, L'-1, V], the prediction of each next token from
the states of the tokens up to it, and ``caption_labels`` [B, L'-1] = ``text[:, 1:L']`` (padding kept
as id 0 with open_clip's tokenizer, -100 with one that pads with another id (the text tower's
``pad_id``): the ``caption`` loss ignores both). V is the text tower's
``vocab_size``; L' <= L is the length of the text tower's states (open_clip's causal tower stops
after the batch's last end token: the positions after it are padding).

Parameter names, and where open_clip's ``CoCa`` holds the same tensor::

    heads.caption.text_decoder.*    text_decoder.*   (resblocks.i, cross_attn.i, ln_final, text_projection)
    heads.caption.attn_pool.*       visual.attn_pool.*   (open_clip pools inside its ViT; here only
                                    when the image tower has no pooler of its own)
    heads.caption.text_token_proj.* (none: only when ``width`` differs from the text tower's width)
    heads.caption.image_token_proj.*  (none: only when pooled image tokens differ in width from ``width``)

With ``vision_cfg.attentional_pool: true`` the pooler is the tower's (``image_tower.visual.attn_pool.*``
= open_clip's ``visual.attn_pool.*``) and the head holds none. open_clip's CoCa text tower is a
TextTransformer with ``embed_cls`` (the contrastive embedding is an appended class token; the
decoder reads the states before ``ln_final``): in vlp, arch ``custom_text: true`` with
``text_cfg.embed_cls: true`` (``text_tower.text.*`` = open_clip's ``text.*``). With these settings
the model computes what open_clip's CoCa computes (tests/test_coca_head.py checks the logits).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from vlp.errors import ConfigError
from vlp.models.heads.registry import Head, register_head
from vlp.models.towers.base import TowerFeatureError

KEY = "model.heads.caption"


def _text_blocks(text_tower: nn.Module) -> Optional[nn.ModuleList]:
    """The residual blocks of an open_clip text transformer inside ``text_tower`` (None for others)."""
    for holder in (text_tower, getattr(text_tower, "text", None)):
        blocks = getattr(getattr(holder, "transformer", None), "resblocks", None)
        if isinstance(blocks, nn.ModuleList) and len(blocks):
            return blocks
    return None


def text_tower_layout(text_tower: nn.Module, width: int) -> Tuple[int, int, float, Type[nn.Module]]:
    """(heads, layers, mlp ratio, activation) of the text tower's transformer, the defaults of the
    decoder; for a tower that is no open_clip transformer: width // 64 heads, 12 layers, 4.0, GELU."""
    blocks = _text_blocks(text_tower)
    if blocks is None:
        return max(1, width // 64), 12, 4.0, nn.GELU
    first = blocks[0]
    ratio = first.mlp.c_fc.out_features / first.mlp.c_fc.in_features
    return int(first.attn.num_heads), len(blocks), float(ratio), type(first.mlp.gelu)


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{KEY}.{name}: must be a positive number, got {value!r}")


def _init_decoder(decoder: nn.Module) -> None:
    """open_clip's initialisation of a text transformer, on the decoder's self- and cross-attention
    blocks and its vocabulary projection (open_clip's own ``MultimodalTransformer.init_parameters``
    is not called by its constructor, which leaves the projection uninitialised)."""
    width, layers = decoder.width, decoder.layers
    proj_std, attn_std, fc_std = (width ** -0.5) * ((2 * layers) ** -0.5), width ** -0.5, (2 * width) ** -0.5
    for block in list(decoder.resblocks) + list(decoder.cross_attn):
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
    nn.init.normal_(decoder.text_projection, std=width ** -0.5)


IGNORE_LABEL = -100
"""The label of a padding position when the tokenizer pads with an id other than 0."""


@register_head("caption")
class CaptionHead(Head):
    """CoCa's multimodal text decoder and attentional image pooler (module docstring).

    Options (each default derived from the text tower):

    - ``width``: decoder width (default: the text tower's token width; another width adds a linear
      map of the text states);
    - ``heads``: decoder attention heads (default: the text tower's);
    - ``layers``: decoder layers, each self- plus cross-attention (default: the text tower's);
    - ``mlp_ratio``: decoder MLP width / width (default: the text tower's);
    - ``n_queries``: attentional pooler queries over the image tokens (default 256; unused when
      the image tower pools itself);
    - ``pooler_heads``: attentional pooler heads (default: ``heads``);
    - ``ls_init_value``: LayerScale initial value in the decoder blocks (default: none).
    """

    provides = ("caption_logits", "caption_labels")
    joins = {"caption_logits": ("pad", 0.0), "caption_labels": ("pad", IGNORE_LABEL)}  # lengths vary by batch
    reads = ("image_tokens", "text_tokens")

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, width: Optional[int] = None,
                 heads: Optional[int] = None, layers: Optional[int] = None, mlp_ratio: Optional[float] = None,
                 n_queries: int = 256, pooler_heads: Optional[int] = None,
                 ls_init_value: Optional[float] = None) -> None:
        super().__init__(image_tower, text_tower)
        from open_clip.transformer import AttentionalPooler, LayerNorm, MultimodalTransformer

        image_width, text_width = self._token_widths(image_tower, text_tower)
        width = int(width or text_width)
        tower_heads, tower_layers, tower_ratio, act_layer = text_tower_layout(text_tower, width)
        heads, layers = int(heads or tower_heads), int(layers or tower_layers)
        mlp_ratio = float(mlp_ratio or tower_ratio)
        pooler_heads = int(pooler_heads or heads)
        for name, value in (("width", width), ("heads", heads), ("layers", layers), ("mlp_ratio", mlp_ratio),
                            ("n_queries", n_queries), ("pooler_heads", pooler_heads)):
            _positive(name, value)
        for name, value in (("heads", heads), ("pooler_heads", pooler_heads)):
            if width % value:
                raise ConfigError(f"{KEY}.{name}: the width {width} is not a multiple of {name}={value}")
        self.vocab_size = int(text_tower.vocab_size)
        self.text_decoder = MultimodalTransformer(
            width=width, layers=layers, heads=heads, context_length=int(text_tower.context_length),
            mlp_ratio=mlp_ratio, ls_init_value=ls_init_value, act_layer=act_layer, norm_layer=LayerNorm,
            output_dim=self.vocab_size)
        _init_decoder(self.text_decoder)
        self.text_token_proj = nn.Linear(text_width, width) if text_width != width else None
        pooled = bool(image_tower.tokens_pooled)
        self.attn_pool = None if pooled else AttentionalPooler(width, image_width, n_head=pooler_heads,
                                                               n_queries=int(n_queries), norm_layer=LayerNorm)
        self.image_token_proj = nn.Linear(image_width, width) if pooled and image_width != width else None

    @classmethod
    def check_terms(cls, options: Mapping[str, Any], terms: Sequence[Any], key: str = KEY) -> None:
        """ConfigError when no ``caption`` term trains the head (its decoder would get no gradient,
        which data-parallel training refuses, and the head would only cost time)."""
        if not any(term.name == "caption" for term in terms):
            raise ConfigError(f"{key}: no loss term reads the caption head's outputs, so nothing trains it; add "
                              "{name: caption, weight: 2.0} to loss.terms (CoCa's weight) or remove the head")

    @staticmethod
    def _token_widths(image_tower: nn.Module, text_tower: nn.Module) -> Tuple[int, int]:
        """(image token width, text token width); a tower without tokens, or a text tower that is not
        causal, fails here, when the model is built, naming the tower."""
        try:
            image_width = int(image_tower.token_width)
            text_width = int(text_tower.token_width)
        except TowerFeatureError as err:
            raise TowerFeatureError(f"{KEY}: the CoCa head reads per-token features, but {err}") from err
        if not text_tower.causal:
            raise ConfigError(f"{KEY}: the CoCa head needs a causal text tower (each position sees only the "
                              f"tokens before it), but the text tower {text_tower.name!r} "
                              f"({text_tower.describe()}) is not; use open_clip's TextTransformer")
        return image_width, text_width

    def image_memory(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """[B, Q, width] what the decoder cross-attends to: the pooled queries over ``image_tokens``."""
        memory = image_tokens if self.attn_pool is None else self.attn_pool(image_tokens)
        return memory if self.image_token_proj is None else self.image_token_proj(memory)

    def encode_image_memory(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`image_memory` of normalised pixels [B, 3, H, W] (the image tower's tokens, pooled)."""
        return self.image_memory(self.image_tower.token_features(images))

    def decode(self, memory: torch.Tensor, text_states: torch.Tensor) -> torch.Tensor:
        """[B, T, V] next-token logits at every position of the text tower's ``text_states`` [B, T, W]."""
        if self.text_token_proj is not None:
            text_states = self.text_token_proj(text_states)
        return self.text_decoder(memory, text_states)

    def next_token_logits(self, memory: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """[B, V] the logits of the token after ``ids`` [B, T] (start token first, no end token)."""
        return self.decode(memory, self.text_tower.token_states(ids)[:, : ids.shape[1]])[:, -1]

    def forward(self, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        text, pad = inputs["text"], int(self.text_tower.pad_id)
        length = min(outputs["text_tokens"].shape[1], caption_length(text, pad))
        states = outputs["text_tokens"][:, : length - 1]
        logits = self.decode(self.image_memory(outputs["image_tokens"]), states)
        labels = text[:, 1:length]
        if pad != 0:  # the caption loss ignores id 0 (open_clip's padding) and negative labels
            labels = labels.masked_fill(labels == pad, IGNORE_LABEL)
        return {"caption_logits": logits, "caption_labels": labels}


def caption_length(text: torch.Tensor, pad_id: int = 0) -> int:
    """The positions up to the batch's last id that is not ``pad_id`` (at least 2): every label
    after it is padding, which the ``caption`` loss ignores, and under the causal decoder no logit
    before it depends on the positions after it, so decoding only these gives the same loss and
    gradients at a fraction of the vocabulary projection (captions are far shorter than the
    context)."""
    positions = torch.arange(1, text.shape[1] + 1, device=text.device).expand_as(text)
    return max(int((positions * (text != pad_id)).max()) if text.numel() else 0, 2)
