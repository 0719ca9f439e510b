"""Towers by name: ``model.image_tower`` / ``model.text_tower`` pick a registered builder.

A builder is a function ``(arch: dict, quick_gelu: bool) -> ImageTower | TextTower`` that reads
the architecture dict (``vlp.models.arch.resolve_arch``: {embed_dim, vision_cfg, text_cfg, ...}).
Register one with ``@register_image_tower("name")`` / ``@register_text_tower("name")`` (or
``@register_tower("image", "name")``) in its own module, imported by ``vlp/models/towers/__init__.py``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping

from torch import nn

from vlp.errors import ConfigError

TowerBuilder = Callable[[Mapping[str, Any], bool], nn.Module]
KINDS = ("image", "text")
TOWERS: Dict[str, Dict[str, TowerBuilder]] = {kind: {} for kind in KINDS}
"""{kind: {name: builder}}."""


def register_tower(kind: str, name: str) -> Callable[[TowerBuilder], TowerBuilder]:
    """Decorator: register ``builder`` as the ``kind`` ('image' or 'text') tower called ``name``."""
    if kind not in KINDS:
        raise ValueError(f"tower kind must be one of {KINDS}, got {kind!r}")

    def register(builder: TowerBuilder) -> TowerBuilder:
        if name in TOWERS[kind] and TOWERS[kind][name] is not builder:
            raise ValueError(f"{kind} tower {name!r} is registered twice")
        TOWERS[kind][name] = builder
        return builder

    return register


def register_image_tower(name: str) -> Callable[[TowerBuilder], TowerBuilder]:
    return register_tower("image", name)


def register_text_tower(name: str) -> Callable[[TowerBuilder], TowerBuilder]:
    return register_tower("text", name)


def tower_names(kind: str) -> List[str]:
    """The registered names of ``kind`` towers, sorted."""
    return sorted(TOWERS[kind])


def check_tower_name(kind: str, name: str, key: str) -> None:
    """ConfigError naming ``key`` and the valid names unless ``name`` is a registered ``kind`` tower."""
    if name not in TOWERS[kind]:
        raise ConfigError(f"{key}: unknown {kind} tower {name!r}, valid names: {', '.join(tower_names(kind))}")


def build_tower(kind: str, name: str, arch: Mapping[str, Any], quick_gelu: bool) -> nn.Module:
    """The ``kind`` tower registered as ``name``, built from ``arch``; its ``name`` attribute set."""
    check_tower_name(kind, name, f"model.{kind}_tower")
    tower = TOWERS[kind][name](arch, quick_gelu)
    tower.name = name
    return tower
