"""The architecture spec every tower builder reads: an open_clip model config dict."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Union

ArchSpec = Union[str, Mapping[str, Any]]


def resolve_arch(arch: ArchSpec) -> Dict[str, Any]:
    """An open_clip model config dict from a registered name or a dict {embed_dim, vision_cfg, text_cfg}."""
    if isinstance(arch, str):
        import open_clip

        cfg = open_clip.get_model_config(arch)
        if cfg is None:
            raise ValueError(f"unknown open_clip model {arch!r}; see open_clip.list_models()")
        return dict(cfg)
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in arch.items()}
