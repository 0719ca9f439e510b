"""Training settings applied to a built model's towers: locking (LiT), gradient checkpointing,
patch dropout (FLIP). Each goes through the tower's own method (``vlp.models.towers.base``),
which delegates to open_clip; a tower that cannot is refused with the config key to change."""

from __future__ import annotations

from typing import Any, Callable, List

from torch import nn

from vlp.errors import ConfigError
from vlp.models.towers.base import TowerFeatureError


def _apply(key: str, action: Callable[[], None]) -> None:
    try:
        action()
    except TowerFeatureError as err:
        raise ConfigError(f"{key}: {err}") from None


def apply_tower_settings(model: nn.Module, cfg: Any) -> List[str]:
    """Apply ``cfg``'s lock_image / lock_text, grad_checkpointing and patch_dropout to ``model``;
    returns a line per setting applied."""
    image, text = model.image_tower, model.text_tower
    done: List[str] = []
    if cfg.lock_image:
        _apply("model.lock_image", lambda: image.lock(cfg.lock_image_unlocked_groups, cfg.lock_image_freeze_bn_stats))
        done.append(f"image tower locked ({cfg.lock_image_unlocked_groups} last layer groups trainable)")
    if cfg.lock_text:
        _apply("model.lock_text", lambda: text.lock(cfg.lock_text_unlocked_layers, cfg.lock_text_freeze_layer_norm))
        done.append(f"text tower locked ({cfg.lock_text_unlocked_layers} last layer groups trainable)")
    if cfg.grad_checkpointing:
        _apply("model.grad_checkpointing", lambda: image.set_grad_checkpointing(True))
        _apply("model.grad_checkpointing", lambda: text.set_grad_checkpointing(True))
        done.append("gradient checkpointing on in both towers")
    if cfg.patch_dropout > 0:
        _apply("model.patch_dropout", lambda: image.set_patch_dropout(cfg.patch_dropout))
        done.append(f"patch dropout {cfg.patch_dropout} in training")
    return done
