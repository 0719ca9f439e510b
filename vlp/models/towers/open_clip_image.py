"""open_clip's image towers (ViT, ModifiedResNet, timm) as the 'open_clip' image tower."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from vlp.models.towers.base import ImageTower, TowerFeatureError
from vlp.models.towers.registry import register_image_tower
from vlp.models.towers.vit_inference import supports_fast_forward, vit_inference_forward


class OpenCLIPImageTower(ImageTower):
    """An open_clip vision tower (``visual``, as in open_clip's CLIP). ``forward`` is
    ``visual(pixels)``, through the exact inference forward of :mod:`vit_inference` when it
    applies (grad off, eval mode, a plain ViT)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    @property
    def image_size(self) -> int:
        size = self.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def describe(self) -> str:
        return f"open_clip {type(self.visual).__name__}"

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        if not torch.is_grad_enabled() and not visual.training and supports_fast_forward(visual):
            return vit_inference_forward(visual, pixels)
        return visual(pixels)

    def token_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, N, width] the tokens open_clip's VisionTransformer gives with ``output_tokens``: the
        patch tokens after ``ln_post`` (all tokens for pool_type 'none'; the attention pooler's
        queries where it has one), not projected."""
        from open_clip.transformer import VisionTransformer

        visual = self.visual
        if not isinstance(visual, VisionTransformer):
            raise TowerFeatureError(f"the image tower {self.name!r} ({self.describe()}) gives no per-token "
                                    "features: only open_clip's VisionTransformer does (set a ViT vision_cfg)")
        was = visual.output_tokens
        visual.output_tokens = True
        try:
            _, tokens = visual(pixels)
        finally:
            visual.output_tokens = was
        return tokens


@register_image_tower("open_clip")
def build_open_clip_image_tower(arch: Mapping[str, Any], quick_gelu: bool) -> OpenCLIPImageTower:
    """open_clip's own vision-tower builder on ``arch['vision_cfg']`` (as open_clip's CLIP builds it)."""
    from open_clip.model import _build_vision_tower

    return OpenCLIPImageTower(_build_vision_tower(arch["embed_dim"], arch["vision_cfg"], quick_gelu, None))
