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

    def describe(self) -> str:
        """A short description for messages (the wrapped module's class by default)."""
        return type(self).__name__


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

    def describe(self) -> str:
        """A short description for messages (the wrapped module's class by default)."""
        return type(self).__name__
