"""Export to open_clip's local-directory format and to a plain safetensors file.

open_clip: a directory with ``open_clip_config.json`` ({"model_cfg", "preprocess_cfg"}) and
``open_clip_model.safetensors`` that ``open_clip.create_model_and_transforms('local-dir:DIR')``
loads with no network. safetensors: our state dict with the resolved config in the metadata.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from safetensors.torch import save_file

from vlp.models.dual_encoder import DualEncoder

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


def open_clip_state_dict(model: DualEncoder) -> Dict[str, torch.Tensor]:
    """The wrapped open_clip model's state dict: our keys without the 'clip.' prefix, contiguous."""
    return {k: v.detach().contiguous().cpu() for k, v in model.clip.state_dict().items()}


def _save_safetensors_atomic(tensors: Dict[str, torch.Tensor], path: Path, metadata: Dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_open_clip(model: DualEncoder, out_dir: Path) -> Path:
    """Write an open_clip local-dir model to ``out_dir``; returns the directory."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": model.arch,
        "preprocess_cfg": {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    _save_safetensors_atomic(open_clip_state_dict(model), out_dir / OPEN_CLIP_WEIGHTS, {"format": "pt"})
    tmp = out_dir / f".{OPEN_CLIP_CONFIG}.tmp"
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, out_dir / OPEN_CLIP_CONFIG)
    return out_dir


def export_safetensors(model: DualEncoder, path: Path, config_yaml: str) -> Path:
    """Write our state dict as safetensors with the resolved config YAML in the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _save_safetensors_atomic(tensors, path, {"format": "pt", "vlp_config": config_yaml})
    return path
