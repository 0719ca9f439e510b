"""Which format a local model path is in, and reading weight files safely (weights_only=True)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import torch

from vlp.checkpoints import latest_checkpoint

FORMATS = ("vlp (a run directory or checkpoint of ours, or a vlp safetensors export), "
           "open_clip_dir (a folder with open_clip_config.json and weights), "
           "open_clip_file (.pt/.pth/.bin/.safetensors state dict plus model_config: an open_clip model name, "
           "a model-config JSON, or an open_clip_config.json beside the file), "
           "hf_clip (a transformers CLIP folder: config.json with model_type 'clip', weights, tokenizer, "
           "preprocessor_config.json)")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def detect_format(path: Path) -> str:
    """'vlp', 'open_clip_dir', 'open_clip_file' or 'hf_clip' for a local path; a clear error otherwise."""
    return detect(Path(path))[0]


def detect(path: Path) -> Tuple[str, Any]:
    """(the format, the unpickled checkpoint when telling the format took reading it, else None)."""
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path} (expected a local path in one of the formats: {FORMATS})")
    if path.is_dir():
        if (path / "open_clip_config.json").is_file():
            return "open_clip_dir", None
        config = path / "config.json"
        if config.is_file() and json.loads(config.read_text()).get("model_type") == "clip":
            return "hf_clip", None
        if latest_checkpoint(path) is not None:
            return "vlp", None
    elif path.suffix in WEIGHT_SUFFIXES:
        if path.suffix == ".safetensors":
            return ("vlp" if "vlp_config" in safetensors_metadata(path) else "open_clip_file"), None
        ckpt = torch_load(path)
        is_vlp = isinstance(ckpt, Mapping) and "config" in ckpt and "model" in ckpt
        return ("vlp" if is_vlp else "open_clip_file"), ckpt
    raise ValueError(f"{path}: not a model in any known format; the formats are: {FORMATS}")


def safetensors_metadata(path: Path) -> Dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def torch_load(path: Path) -> Any:
    """torch.load with weights_only=True (memory-mapped where the file allows), or a clear error."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: cannot be read as a checkpoint with weights_only=True ({err}); TorchScript "
                         "archives (OpenAI's original .pt files) are not supported, use a state-dict copy") from err


def read_weights(path: Path, ckpt: Any = None) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(state dict without 'module.' prefixes, the other top-level entries / safetensors metadata);
    ``ckpt``: the file already unpickled (by format detection), not read again."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), safetensors_metadata(path)
    if ckpt is None:
        ckpt = torch_load(path)
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{path}: not a state dict (got {type(ckpt).__name__})")
    extra: Dict[str, Any] = {}
    if "state_dict" in ckpt and isinstance(ckpt["state_dict"], Mapping):
        extra = {k: v for k, v in ckpt.items() if k != "state_dict"}
        ckpt = ckpt["state_dict"]
    return {k.removeprefix("module."): v for k, v in ckpt.items()}, extra
