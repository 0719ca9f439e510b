"""open_clip's image towers (ViT, ModifiedResNet, timm) as the 'open_clip' image tower."""

from __future__ import annotations

from typing import Any, Mapping, Tuple

import torch
from torch import nn

from vlp.models.towers.base import ImageTower, TowerFeatureError
from vlp.models.towers.registry import register_image_tower
from vlp.models.towers.vit_forward import supports_fast_forward, vit_forward


class OpenCLIPImageTower(ImageTower):
    """An open_clip vision tower (``visual``, as in open_clip's CLIP). ``forward`` is
    ``visual(pixels)``, through the exact faster forward of :mod:`vit_forward` when it
    applies (a plain ViT; training and inference alike)."""

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
        if supports_fast_forward(visual):
            return vit_forward(visual, pixels)
        return _one_query(visual(pixels))

    def token_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, N, width] the tokens open_clip's VisionTransformer gives with ``output_tokens``: the
        patch tokens after ``ln_post`` (all tokens for pool_type 'none'; the attention pooler's
        queries where it has one), not projected; for a timm trunk, its ``forward_features``
        (a feature map flattened to [B, H*W, C])."""
        return self.forward_with_tokens(pixels)[1]

    def _token_kind(self) -> str:
        """'vit' or 'timm': the towers that give tokens; TowerFeatureError naming the others."""
        from open_clip.timm_model import TimmModel
        from open_clip.transformer import VisionTransformer

        if isinstance(self.visual, VisionTransformer):
            return "vit"
        if isinstance(self.visual, TimmModel):
            return "timm"
        raise TowerFeatureError(f"the image tower {self.name!r} ({self.describe()}) gives no per-token "
                                "features: only open_clip's VisionTransformer and timm trunks do (set a ViT vision_cfg)")

    @property
    def token_width(self) -> int:
        if self._token_kind() == "timm":
            return int(self.visual.trunk.num_features)
        attn_pool = getattr(self.visual, "attn_pool", None)
        return int(attn_pool.query.shape[1] if attn_pool is not None else self.visual.transformer.width)

    @property
    def tokens_pooled(self) -> bool:
        """True for a ViT with open_clip's attentional pooler (``vision_cfg.attentional_pool``)."""
        return getattr(self.visual, "attn_pool", None) is not None

    def forward_with_tokens(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(pooled embedding, tokens) from one pass of the tower."""
        visual = self.visual
        if self._token_kind() == "timm":
            features = visual.trunk.forward_features(pixels)
            pooled = visual.head(visual.trunk.forward_head(features))
            if features.ndim == 4:  # a feature map, NCHW (or NHWC, as Swin gives)
                channels_last = features.shape[-1] == visual.trunk.num_features != features.shape[1]
                features = features.flatten(1, 2) if channels_last else features.flatten(2).transpose(1, 2)
            return pooled, features
        was = visual.output_tokens
        visual.output_tokens = True
        try:
            pooled, tokens = visual(pixels)
        finally:
            visual.output_tokens = was
        return _one_query(pooled), tokens

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """open_clip's ``visual.lock``: a ViT has layers + 2 groups (stem, blocks, last block with
        ``ln_post``, projection); a ModifiedResNet locks whole only; timm trunks by timm's groups."""
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer

        visual = self.visual
        if isinstance(visual, VisionTransformer):
            groups = len(visual.transformer.resblocks) + 2
            if unlocked_groups > groups:
                raise TowerFeatureError(f"the image tower {self.name!r} ({self.describe()}) has {groups} layer groups, "
                                        f"fewer than the {unlocked_groups} to leave unlocked")
            if freeze_bn_stats:
                raise TowerFeatureError(f"the image tower {self.name!r} ({self.describe()}) has no BatchNorm "
                                        "statistics to freeze")
        if isinstance(visual, ModifiedResNet) and unlocked_groups:
            raise TowerFeatureError(f"the image tower {self.name!r} ({self.describe()}) locks whole only "
                                    "(open_clip has no layer groups for it): leave unlocked_groups 0")
        visual.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """open_clip's ``visual.set_grad_checkpointing`` (a ModifiedResNet's does nothing, so it is refused)."""
        from open_clip.modified_resnet import ModifiedResNet

        if isinstance(self.visual, ModifiedResNet):
            raise TowerFeatureError(f"the image tower {self.name!r} ({self.describe()}) has no gradient "
                                    "checkpointing (open_clip's ModifiedResNet ignores it)")
        self.visual.set_grad_checkpointing(enable)

    def set_patch_dropout(self, prob: float) -> None:
        """Replace a ViT's ``patch_dropout`` by open_clip's PatchDropout(prob) (identity for 0): in
        training mode it keeps the class token and max(1, int(patches * (1 - prob))) random patches."""
        from open_clip.transformer import PatchDropout, VisionTransformer

        if not isinstance(self.visual, VisionTransformer):
            raise TowerFeatureError(f"the image tower {self.name!r} ({self.describe()}) has no patch dropout: only "
                                    "open_clip's VisionTransformer (for a timm trunk set vision_cfg.patch_dropout)")
        self.visual.patch_dropout = PatchDropout(prob) if prob > 0 else nn.Identity()


def _one_query(pooled: torch.Tensor) -> torch.Tensor:
    """[B, D]: open_clip's ViT with ``attentional_pool: 'parallel' | 'cascade'`` pools with one
    attention query and keeps its axis ([B, 1, D])."""
    return pooled[:, 0] if pooled.ndim == 3 and pooled.shape[1] == 1 else pooled


@register_image_tower("open_clip")
def build_open_clip_image_tower(arch: Mapping[str, Any], quick_gelu: bool) -> OpenCLIPImageTower:
    """open_clip's own vision-tower builder on ``arch['vision_cfg']`` (as open_clip's CLIP builds it)."""
    from open_clip.model import _build_vision_tower

    return OpenCLIPImageTower(_build_vision_tower(arch["embed_dim"], arch["vision_cfg"], quick_gelu, None))
