"""Export to open_clip's local-directory format and to a plain safetensors file.

open_clip: a directory with ``open_clip_config.json`` ({"model_cfg", "preprocess_cfg"}) and
``open_clip_model.safetensors`` that ``open_clip.create_model_and_transforms('local-dir:DIR')``
loads with no network. safetensors: our state dict with the resolved config in the metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from safetensors.torch import save_file

from vlp.models.dual_encoder import DualEncoder
from vlp.utils.atomic import atomic_path, write_json_atomic

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


def open_clip_state_dict(model: DualEncoder) -> Dict[str, torch.Tensor]:
    """The wrapped open_clip model's state dict: our keys without the 'clip.' prefix, contiguous."""
    return {k: v.detach().contiguous().cpu() for k, v in model.clip.state_dict().items()}


def _save_safetensors_atomic(tensors: Dict[str, torch.Tensor], path: Path, metadata: Dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def export_open_clip(model: DualEncoder, out_dir: Path) -> Path:
    """Write an open_clip local-dir model to ``out_dir``; returns the directory."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = dict(model.arch)
    model_cfg["quick_gelu"] = bool(getattr(model, "quick_gelu", False))  # open_clip reloads the same activation
    if model.clip.logit_bias is not None:  # open_clip creates the bias parameter only when told to
        model_cfg["init_logit_bias"] = float(model.clip.logit_bias.detach())
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    _save_safetensors_atomic(open_clip_state_dict(model), out_dir / OPEN_CLIP_WEIGHTS, {"format": "pt"})
    write_json_atomic(out_dir / OPEN_CLIP_CONFIG, config, sort_keys=False)
    return out_dir


def export_safetensors(model: DualEncoder, path: Path, config_yaml: str) -> Path:
    """Write our state dict as safetensors with the resolved config YAML in the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _save_safetensors_atomic(tensors, path, {"format": "pt", "vlp_config": config_yaml})
    return path
