"""What the DualEncoder asks of its towers: two small interfaces.

An image tower maps pixels [B, 3, H, W] (normalised) to a pooled, projected embedding [B, D]
(not L2-normalised; the DualEncoder normalises) and says its input ``image_size``. A text tower
maps token ids [B, L] to a pooled, projected embedding [B, D] and says its ``context_length``
(the width of the ids it takes) and ``vocab_size`` (its token-embedding rows). Both may give
per-token features for heads that read more than the pooled embedding (captioning, prototypes);
a tower that cannot raises :class:`TowerFeatureError`, naming itself.

A new tower is a subclass of one of these plus a builder registered by name
(``vlp.models.towers.register_image_tower`` / ``register_text_tower``).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Tuple

import torch
from torch import nn


class TowerFeatureError(NotImplementedError):
    """A tower asked for a feature it does not give (e.g. per-token features of a ResNet)."""


class ImageTower(nn.Module, metaclass=ABCMeta):
    """pixels [B, 3, image_size, image_size] -> ``forward``: pooled embedding [B, D], unnormalised."""

    name = "image tower"
    """The registered name, used in messages."""

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Side of the square input images, in pixels."""

    def token_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, N, W] per-token (patch) features of the last layer, before pooling and projection."""
        raise TowerFeatureError(f"the image tower {self.name!r} ({self.describe()}) gives no per-token features")

    @property
    def token_width(self) -> int:
        """W of :meth:`token_features`; raises :class:`TowerFeatureError` (naming the tower) when it
        gives none, so a head that reads tokens fails when it is built, not at its first batch."""
        raise TowerFeatureError(f"the image tower {self.name!r} ({self.describe()}) gives no per-token features")

    @property
    def tokens_pooled(self) -> bool:
        """True when :meth:`token_features` are already an attentional pooler's query outputs (a
        head reads them as they are instead of pooling them again); False by default."""
        return False

    def forward_with_tokens(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(``forward(pixels)``, ``token_features(pixels)``); a tower that can gives both from one
        pass (the default runs it twice)."""
        return self(pixels), self.token_features(pixels)

    def describe(self) -> str:
        """A short description for messages (the wrapped module's class by default)."""
        return type(self).__name__

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze the tower's parameters (``requires_grad`` off; LiT) but its last ``unlocked_groups``
        layer groups; ``freeze_bn_stats`` also freezes BatchNorm statistics. The default refuses, naming the tower."""
        raise TowerFeatureError(f"the image tower {self.name!r} ({self.describe()}) cannot be locked")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass instead of keeping them; the default refuses."""
        raise TowerFeatureError(f"the image tower {self.name!r} ({self.describe()}) has no gradient checkpointing")

    def set_patch_dropout(self, prob: float) -> None:
        """Drop this fraction of the patch tokens at random in training mode (FLIP); the default refuses."""
        raise TowerFeatureError(f"the image tower {self.name!r} ({self.describe()}) has no patch tokens to drop")


class TextTower(nn.Module, metaclass=ABCMeta):
    """token ids [B, L] (L <= context_length) -> ``forward``: pooled embedding [B, D], unnormalised."""

    name = "text tower"
    """The registered name, used in messages."""

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Width of the id rows the tokenizer must give."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Token-embedding rows: every id must be below it."""

    def token_states(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L, W] per-position hidden states of the last layer (after its final norm), before pooling."""
        raise TowerFeatureError(f"the text tower {self.name!r} ({self.describe()}) gives no per-token states")

    @property
    def token_width(self) -> int:
        """W of :meth:`token_states`; raises :class:`TowerFeatureError` (naming the tower) when it gives none."""
        raise TowerFeatureError(f"the text tower {self.name!r} ({self.describe()}) gives no per-token states")

    @property
    def pad_id(self) -> int:
        """The id the tokenizer pads a caption with (0 by default, as open_clip's tokenizer)."""
        return 0

    @property
    def causal(self) -> bool:
        """True when each position's state depends only on the ids up to it (a causal mask), so the
        states can feed a next-token decoder (captioning); False by default."""
        return False

    def forward_with_tokens(self, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(``forward(ids)``, states [B, L', W]) from one pass where the tower can (the default runs
        it twice). L' <= L: a causal tower may stop after the batch's last end token (the states
        after it cannot change anything before it); ``states[:, :L']`` equal ``token_states(ids)[:, :L']``."""
        return self(ids), self.token_states(ids)

    def describe(self) -> str:
        """A short description for messages (the wrapped module's class by default)."""
        return type(self).__name__

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the tower's parameters (``requires_grad`` off) but its last ``unlocked_layers``
        layer groups; ``freeze_layer_norm`` False leaves LayerNorms trainable. The default refuses, naming the tower."""
        raise TowerFeatureError(f"the text tower {self.name!r} ({self.describe()}) cannot be locked")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass instead of keeping them; the default refuses."""
        raise TowerFeatureError(f"the text tower {self.name!r} ({self.describe()}) has no gradient checkpointing")
