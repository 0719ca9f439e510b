"""The architecture spec every tower builder reads: an open_clip model config dict.

``model.arch`` is an open_clip registry name ('ViT-B-32'), a dict {embed_dim, vision_cfg,
text_cfg, ...}, or the architecture of a local folder, so that fine-tuning a foreign checkpoint is
``model.arch`` and ``model.init_from`` naming the same folder:

- ``local-dir:DIR``: an open_clip local-dir (``DIR/open_clip_config.json``'s ``model_cfg``);
- ``hf:DIR``: a transformers CLIP folder (``DIR/config.json``, ``vlp.models.hf_clip_arch``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Union

ArchSpec = Union[str, Mapping[str, Any]]
FOLDER_ARCHS = {"local-dir": "open_clip_config.json", "hf": "config.json"}
"""``model.arch`` prefixes naming a folder, and the file the architecture is read from."""


def folder_arch_file(arch: str) -> Path | None:
    """The config file a ``local-dir:DIR`` / ``hf:DIR`` arch reads (None for other strings)."""
    kind, sep, where = arch.partition(":")
    return Path(where) / FOLDER_ARCHS[kind] if sep and kind in FOLDER_ARCHS else None


def _folder_arch(arch: str) -> Dict[str, Any]:
    path = folder_arch_file(arch)
    assert path is not None
    if not path.is_file():
        raise FileNotFoundError(f"model.arch {arch!r}: {path} not found")
    raw = json.loads(path.read_text())
    if arch.startswith("hf:"):
        from vlp.models.hf_clip_arch import arch_from_hf_clip_config

        return arch_from_hf_clip_config(raw)
    if "model_cfg" not in raw:
        raise ValueError(f"model.arch {arch!r}: {path} has no model_cfg")
    return dict(raw["model_cfg"])


def resolve_arch(arch: ArchSpec) -> Dict[str, Any]:
    """An open_clip model config dict from a registered name, a dict {embed_dim, vision_cfg,
    text_cfg}, or a folder's (``local-dir:DIR``, ``hf:DIR``)."""
    if isinstance(arch, str) and folder_arch_file(arch) is not None:
        return _folder_arch(arch)
    if isinstance(arch, str):
        import open_clip

        cfg = open_clip.get_model_config(arch)
        if cfg is None:
            raise ValueError(f"unknown open_clip model {arch!r}; see open_clip.list_models()")
        return dict(cfg)
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in arch.items()}
