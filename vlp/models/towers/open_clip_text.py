"""open_clip's text towers as the 'open_clip' text tower: its TextTransformer (as open_clip's CLIP
holds it), or, as CustomTextCLIP holds it, its HF text tower (``text_cfg.hf_model_name``, a local
transformers folder) or a TextTransformer of an arch with ``custom_text``.

Both run the text only as far as it can change the features: open_clip's causal tower up to the
batch's last pooled (end) token (:func:`encode_text_trimmed`), an HF tower up to its last non-pad
token (:func:`hf_text_length`); the result equals the full-context forward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

import open_clip
import torch
from torch import nn

from vlp.models.towers.base import TextTower, TowerFeatureError
from vlp.models.towers.blocks import run_blocks
from vlp.models.towers.registry import register_text_tower

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def check_local_hf_model(name: str, pretrained: bool) -> None:
    """An HF text tower comes from a local folder only (open_clip would download a hub name);
    with ``hf_model_pretrained`` the folder must hold weights."""
    folder = Path(name)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text_cfg.hf_model_name: {name} is not a local folder with a config.json (vlp never "
                                "downloads: save the transformers model with save_pretrained and name its folder)")
    if pretrained and not any((folder / f).is_file() for f in HF_WEIGHT_FILES):
        raise FileNotFoundError(f"text_cfg.hf_model_name: {name} holds no weights ({', '.join(HF_WEIGHT_FILES[::2])}); "
                                "set text_cfg.hf_model_pretrained: false to start the HF text tower from random init")


class OpenCLIPTextTower(TextTower):
    """open_clip's TextTransformer taken apart as open_clip's CLIP takes it: the same attributes
    (``transformer``, ``token_embedding``, ``positional_embedding``, ``ln_final``,
    ``text_projection``, ``attn_mask``, ``text_pool_type``, ``text_eos_id``), so the same
    parameter names below this module and the same features."""

    def __init__(self, *, transformer: nn.Module, token_embedding: nn.Module, positional_embedding: nn.Parameter,
                 ln_final: nn.Module, text_projection: Any, attn_mask: Optional[torch.Tensor], pool_type: str,
                 eos_id: Optional[int], vocab_size: int, context_length: int, pad_id: int = 0) -> None:
        super().__init__()
        self._pad_id = int(pad_id)
        self.transformer = transformer
        self.token_embedding = token_embedding
        self.positional_embedding = positional_embedding
        self.ln_final = ln_final
        self.text_projection = text_projection
        self.text_pool_type = pool_type
        self.text_eos_id = eos_id
        self.register_buffer("attn_mask", attn_mask, persistent=False)
        self._vocab_size, self._context_length = int(vocab_size), int(context_length)

    @classmethod
    def from_text_transformer(cls, text: nn.Module, context_length: int) -> "OpenCLIPTextTower":
        """The parts of an open_clip TextTransformer (its ``cls_emb``, if any, is dropped, as CLIP drops it)."""
        return cls(transformer=text.transformer, token_embedding=text.token_embedding,
                   positional_embedding=text.positional_embedding, ln_final=text.ln_final,
                   text_projection=text.text_projection, attn_mask=text.attn_mask, pool_type=text.pool_type,
                   eos_id=text.eos_id, vocab_size=text.vocab_size, context_length=context_length,
                   pad_id=int(getattr(text, "pad_id", 0) or 0))

    @classmethod
    def from_clip(cls, clip: nn.Module, context_length: int) -> "OpenCLIPTextTower":
        """The text half of an open_clip CLIP (its modules, not copies)."""
        return cls(transformer=clip.transformer, token_embedding=clip.token_embedding,
                   positional_embedding=clip.positional_embedding, ln_final=clip.ln_final,
                   text_projection=clip.text_projection, attn_mask=clip.attn_mask, pool_type=clip.text_pool_type,
                   eos_id=getattr(clip, "text_eos_id", None), vocab_size=clip.vocab_size, context_length=context_length)

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def pad_id(self) -> int:
        return self._pad_id

    def describe(self) -> str:
        return "open_clip TextTransformer"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if can_trim_text(self):
            return encode_text_trimmed(self, ids)
        return open_clip.CLIP.encode_text(self, ids)  # open_clip's own forward: it reads only these parts

    def token_states(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(ids).to(cast_dtype) + self.positional_embedding[:length].to(cast_dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        return self.ln_final(self.transformer(x, attn_mask=mask))

    @property
    def token_width(self) -> int:
        return int(self.transformer.width)

    @property
    def causal(self) -> bool:
        return self.attn_mask is not None

    def forward_with_tokens(self, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(pooled embedding, ``ln_final`` states) from one pass; on the trimmed path
        (:func:`encode_text_trimmed`) the states stop at the batch's last end token."""
        if can_trim_text(self):
            return encode_text_trimmed_with_tokens(self, ids)
        from open_clip.transformer import text_global_pool

        states = self.token_states(ids)
        pooled = text_global_pool(states, ids, self.text_pool_type, eos_token_id=self.text_eos_id)
        return _project(self.text_projection, pooled), states

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """open_clip's ``lock_text_tower``: groups are the embeddings, each block, the last block
        with ``ln_final``, and the projection (layers + 2 with a projection)."""
        from open_clip.transformer import lock_text_tower

        groups = len(self.transformer.resblocks) + 1 + (self.text_projection is not None)
        if unlocked_layers > groups:
            raise TowerFeatureError(f"the text tower {self.name!r} ({self.describe()}) has {groups} layer groups, "
                                    f"fewer than the {unlocked_layers} to leave unlocked")
        if not freeze_layer_norm:
            raise TowerFeatureError(f"the text tower {self.name!r} ({self.describe()}) locks its LayerNorms with the "
                                    "rest (open_clip's lock_text_tower): keep lock_text_freeze_layer_norm true")
        lock_text_tower(self, unlocked_layers)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """As open_clip's CLIP: ``transformer.grad_checkpointing`` (each block recomputed in the backward; the
        trimmed forward checkpoints its blocks alike)."""
        self.transformer.grad_checkpointing = enable


class OpenCLIPCustomTextTower(TextTower):
    """open_clip's text tower held whole, as CustomTextCLIP holds it (``text``): an HFTextEncoder,
    or a TextTransformer whose own forward pools."""

    def __init__(self, text: nn.Module, context_length: int) -> None:
        super().__init__()
        self.text = text
        self._context_length = int(context_length)

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def vocab_size(self) -> int:
        return int(self.text.vocab_size)

    def describe(self) -> str:
        return f"open_clip {type(self.text).__name__}"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = hf_text_length(self, ids)
        return self.text(ids if length is None else ids[:, :length])

    def token_states(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-position states; for a TextTransformer the tokens its ``output_tokens`` gives (before
        ``ln_final`` with ``embed_cls``, as open_clip's CoCa reads them). Ids shorter than the
        context go through a causal TextTransformer padded to it where its mask is context-sized."""
        from open_clip.hf_model import HFTextEncoder

        if isinstance(self.text, HFTextEncoder):
            mask = (ids != self.text.config.pad_token_id).long()
            return self.text.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.forward_with_tokens(ids)[1]

    @property
    def token_width(self) -> int:
        from open_clip.hf_model import HFTextEncoder

        if isinstance(self.text, HFTextEncoder):
            return int(self.text.config.hidden_size)
        return int(self.text.width)

    @property
    def pad_id(self) -> int:
        pad = getattr(getattr(self.text, "config", None), "pad_token_id", None)
        return int(pad if pad is not None else getattr(self.text, "pad_id", 0) or 0)

    @property
    def causal(self) -> bool:
        """A TextTransformer with its causal mask; an HF tower is taken as bidirectional."""
        from open_clip.hf_model import HFTextEncoder

        return not isinstance(self.text, HFTextEncoder) and getattr(self.text, "attn_mask", None) is not None

    def forward_with_tokens(self, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(pooled embedding, states) from one pass (an HF tower's up to its last non-pad token)."""
        from open_clip.hf_model import HFTextEncoder

        if isinstance(self.text, HFTextEncoder):
            length = hf_text_length(self, ids)
            ids = ids if length is None else ids[:, :length]
            mask = (ids != self.text.config.pad_token_id).long()
            out = self.text.transformer(input_ids=ids, attention_mask=mask)
            return self.text.proj(self.text.pooler(out, mask)), out.last_hidden_state
        length = ids.shape[1]
        sliced_mask = getattr(self.text, "cls_emb", None) is not None or getattr(self.text, "use_pad_mask", False)
        if self.causal and not sliced_mask and length < self.text.context_length:
            ids = torch.cat([ids, ids.new_full((ids.shape[0], self.text.context_length - length), self.text.pad_id)], 1)
        was = self.text.output_tokens
        self.text.output_tokens = True
        try:
            pooled, tokens = self.text(ids)
        finally:
            self.text.output_tokens = was
        return pooled, tokens[:, :length]

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """The held tower's own ``lock`` (open_clip's HFTextEncoder or TextTransformer)."""
        from open_clip.hf_model import HFTextEncoder

        if not freeze_layer_norm and not isinstance(self.text, HFTextEncoder):
            raise TowerFeatureError(f"the text tower {self.name!r} ({self.describe()}) locks its LayerNorms with the "
                                    "rest: keep lock_text_freeze_layer_norm true (only HF towers can leave them)")
        self.text.lock(unlocked_layers, freeze_layer_norm)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """transformers' gradient checkpointing for an HF tower, open_clip's for a TextTransformer."""
        from open_clip.hf_model import HFTextEncoder

        if not isinstance(self.text, HFTextEncoder):
            self.text.set_grad_checkpointing(enable)
        elif enable:
            self.text.transformer.gradient_checkpointing_enable()
        else:
            self.text.transformer.gradient_checkpointing_disable()


@register_text_tower("open_clip")
def build_open_clip_text_tower(arch: Mapping[str, Any], quick_gelu: bool) -> TextTower:
    """open_clip's own text-tower builder on ``arch['text_cfg']``, held as open_clip's CLIP holds it,
    or as CustomTextCLIP does for an HF tower or an arch with ``custom_text: true`` (open_clip's rule)."""
    from open_clip.model import _build_text_tower

    text_cfg = arch.get("text_cfg", {})
    if text_cfg.get("hf_model_name"):
        check_local_hf_model(str(text_cfg["hf_model_name"]), bool(text_cfg.get("hf_model_pretrained", True)))
    text = _build_text_tower(arch["embed_dim"], arch["text_cfg"], quick_gelu, None)
    context = int(text_cfg.get("context_length", 77))
    if arch.get("custom_text") or text_cfg.get("hf_model_name"):
        return OpenCLIPCustomTextTower(text, context)
    return OpenCLIPTextTower.from_text_transformer(text, context)


# ---------------------------------------------------------------- the exact shortcuts

def text_features(clip: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text(text)`` (not normalised) of an open_clip model, computed on the batch cut
    after its last real token wherever that gives the same features: open_clip's causal tower
    pooled at the end token (:func:`encode_text_trimmed`) and HF towers (padding is masked out of
    their attention)."""
    if can_trim_text(clip):
        return encode_text_trimmed(clip, text)
    length = hf_text_length(clip, text)
    return clip.encode_text(text if length is None else text[:, :length])


def hf_text_length(clip: nn.Module, text: torch.Tensor) -> Optional[int]:
    """For an HF text tower (``clip.text``), the position after the batch's last non-pad token (the
    tower masks pad tokens out of attention and pooling, and positions count from the left, so
    the padding after it changes nothing); None for other towers."""
    from open_clip.hf_model import HFTextEncoder

    tower = getattr(clip, "text", None)
    pad = getattr(getattr(tower, "config", None), "pad_token_id", None)
    if not isinstance(tower, HFTextEncoder) or pad is None or text.numel() == 0:
        return None
    positions = torch.arange(1, text.shape[1] + 1, device=text.device).expand_as(text)
    return max(int((positions * (text != pad)).max()), 1)


def text_pool_positions(text: torch.Tensor, pool_type: str, eos_id: Optional[int]) -> torch.Tensor:
    """[B] the position open_clip's ``text_global_pool`` takes for 'argmax' (the largest id) or
    'eos' (the first ``eos_id``; position 0 for a row without one)."""
    if pool_type == "eos":
        return (text == eos_id).int().argmax(dim=-1)
    return text.argmax(dim=-1)


def can_trim_text(clip: nn.Module) -> bool:
    """True when ``clip`` (an open_clip CLIP or an :class:`OpenCLIPTextTower`) holds open_clip's
    causal transformer pooled at the end token ('argmax' or 'eos'), so :func:`encode_text_trimmed`
    gives its exact features."""
    return (isinstance(clip, (open_clip.CLIP, OpenCLIPTextTower)) and clip.attn_mask is not None
            and clip.text_pool_type in ("argmax", "eos"))


def encode_text_trimmed(clip: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """open_clip's text features, running the tower only up to the batch's last pooled (end) token.

    With a causal mask, a position never attends to later ones, so the padding after the
    longest caption cannot change any pooled (end-of-text) feature: the result equals the
    full-context forward, at the cost of the real caption lengths instead of the context
    length (web captions average ~15 BPE tokens against a context of 77). The blocks run through
    :func:`vlp.models.towers.blocks.run_blocks`, the last one for the pooled token of each
    caption alone (no other position of it is read).
    """
    pooled, x, mask = _trimmed_inputs(clip, text)
    x = clip.ln_final(run_blocks(clip.transformer, x, attn_mask=mask, last_rows=pooled))
    return _project(clip.text_projection, x[:, 0])


def encode_text_trimmed_with_tokens(clip: nn.Module, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(:func:`encode_text_trimmed`'s features, the ``ln_final`` states [B, L', width] of the same
    pass), L' = the position after the batch's last pooled (end) token."""
    pooled, x, mask = _trimmed_inputs(clip, text)
    states = clip.ln_final(run_blocks(clip.transformer, x, attn_mask=mask))
    x = states[torch.arange(x.shape[0], device=x.device), pooled]
    return _project(clip.text_projection, x), states


def _trimmed_inputs(clip: nn.Module, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pooled position [B], embedded tokens [B, L', width], causal mask [L', L']) of the batch cut
    after its last pooled token."""
    pooled = text_pool_positions(text, clip.text_pool_type, getattr(clip, "text_eos_id", None))
    length = int(pooled.max().item()) + 1
    text = text[:, :length]
    cast_dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(text).to(cast_dtype) + clip.positional_embedding[:length].to(cast_dtype)
    return pooled, x, clip.attn_mask[:length, :length]


def _project(projection: Any, x: torch.Tensor) -> torch.Tensor:
    """``x`` through open_clip's text projection (None, an nn.Linear or a matrix)."""
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection
