"""Image and text towers, chosen by name (``model.image_tower``, ``model.text_tower``).

The interfaces are in :mod:`vlp.models.towers.base`, the registry in
:mod:`vlp.models.towers.registry`; each built-in tower module registers itself when imported
here. Built in: 'open_clip' for both (open_clip's ViT / ResNet / timm image towers; its text
transformer or, with ``text_cfg.hf_model_name``, its transformers text tower).
"""

from vlp.models.towers.base import ImageTower, TextTower, TowerFeatureError
from vlp.models.towers.registry import (TOWERS, build_tower, check_tower_name, register_image_tower, register_text_tower,
                                        register_tower, tower_names)
from vlp.models.towers import open_clip_image, open_clip_text  # noqa: F401  (register the built-in towers)

__all__ = ["ImageTower", "TextTower", "TowerFeatureError", "TOWERS", "build_tower", "check_tower_name",
           "register_image_tower", "register_text_tower", "register_tower", "tower_names"]
