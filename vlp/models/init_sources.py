"""Reading the weights a model starts from (``model.init_from`` / ``init_image_from`` /
``init_text_from``) and the activation each source records.

Sources, told apart by what they hold:

- ``vlp``: a run directory of ours (its final or newest checkpoint), a checkpoint file
  ({'config', 'model', ...}) or a safetensors export (``vlp_config`` in its metadata);
- ``open_clip_dir``: an open_clip local-dir (``open_clip_config.json`` and its weights);
- ``open_clip_file``: an open_clip state dict (.pt/.pth/.bin with torch, .safetensors), possibly
  under 'state_dict' with 'module.' prefixes;
- ``hf_clip``: a transformers CLIPModel folder (``config.json`` with model_type 'clip'); the
  logit bias our export keeps in its config (``vlp_export.logit_bias``) is read with the weights.

Torch files load with ``weights_only=True`` and safetensors with safetensors: reading a file never
runs its code. The activation (GELU or QuickGELU) is read where the format records it: our
config (``model.quick_gelu`` / the arch's ``quick_gelu``) or our export's ``vlp_quick_gelu``
metadata, open_clip's ``model_cfg.quick_gelu`` (a local-dir, or an open_clip_config.json beside a
file), transformers' ``hidden_act`` per tower. A bare state dict records none, and none is assumed.

(``vlp.interop`` reads the same formats for evaluation, building the model the file describes;
here the model is the config's and only the weights are read. The models layer may not import
interop, so the few lines of reading are here.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from vlp.checkpoints import latest_checkpoint
from vlp.errors import ConfigError
from vlp.models.hf_clip_arch import HF_ACTS
from vlp.models.hf_clip_state import open_clip_state_from_hf_clip
from vlp.models.open_clip_layout import as_vlp_state, from_open_clip_state

FORMATS = ("a run directory, checkpoint (.pt) or safetensors export of ours; an open_clip state dict "
           "(.pt/.pth/.bin/.safetensors) or local-dir (a folder with open_clip_config.json); a transformers "
           "CLIPModel folder (config.json with model_type 'clip' and its weights)")
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_DEFAULT_ACT = "quick_gelu"
VLP_EXPORT_KEY = "vlp_export"
"""config.json entry of our transformers CLIPModel exports: {'logit_bias': float} for a model trained with one."""
QUICK_GELU_METADATA = "vlp_quick_gelu"
"""Metadata key of our safetensors exports recording the activation: 'true' (QuickGELU) or 'false'."""

Declaration = Tuple[Optional[str], str, bool]
"""(the tower it is about: 'image', 'text' or None for both; where it was read; quick_gelu)."""


@dataclass
class InitSource:
    """Weights read from ``path`` (format ``kind``), under our state-dict names, and the activations they declare."""

    path: Path
    kind: str
    state: Dict[str, torch.Tensor]
    activation: List[Declaration] = field(default_factory=list)


def _torch_load(path: Path, key: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an unpickling error names the class weights_only refused
        raise ConfigError(f"{key}: {path} cannot be read with torch.load(weights_only=True) ({err}); "
                          "save a plain state dict (TorchScript archives are not read)") from err


def _safetensors(path: Path, key: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path)), metadata
    except Exception as err:  # SafetensorError (a truncated or empty file), OSError
        raise ConfigError(f"{key}: {path} cannot be read as safetensors ({type(err).__name__}: {err}); "
                          "the file may be truncated or not a safetensors file") from err


def _read_json(path: Path, key: str) -> Dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{key}: {path} is not readable JSON ({err})") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: {path} holds a JSON {type(raw).__name__}, not an object")
    return raw


def _config_activation(config_yaml: str, where: str) -> List[Declaration]:
    """The activation our saved config builds: model.quick_gelu, or QuickGELU declared by its arch."""
    from omegaconf import OmegaConf

    from vlp.models.arch import resolve_arch

    model = OmegaConf.to_container(OmegaConf.create(config_yaml)).get("model", {})  # type: ignore[union-attr]
    try:
        arch = resolve_arch(model.get("arch", "ViT-B-32"))
    except ValueError:
        arch = {}
    quick = bool(model.get("quick_gelu", False) or arch.get("quick_gelu", False))
    return [(None, where, quick)]


def _sidecar_activation(folder: Path, key: str) -> List[Declaration]:
    sidecar = folder / "open_clip_config.json"
    if not sidecar.is_file():
        return []
    model_cfg = _read_json(sidecar, key).get("model_cfg") or {}
    if "quick_gelu" not in model_cfg:
        return []
    return [(None, f"{sidecar} (model_cfg.quick_gelu)", bool(model_cfg["quick_gelu"]))]


def _state_of(ckpt: Any, path: Path, key: str) -> Dict[str, torch.Tensor]:
    if not isinstance(ckpt, Mapping):
        raise ConfigError(f"{key}: {path} holds a {type(ckpt).__name__}, not a state dict; the formats are: {FORMATS}")
    for inner in ("model", "state_dict"):
        if inner in ckpt and isinstance(ckpt[inner], Mapping):
            ckpt = ckpt[inner]
            break
    return as_vlp_state({k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)})


def _read_file(path: Path, key: str) -> InitSource:
    if path.suffix == ".safetensors":
        tensors, metadata = _safetensors(path, key)
        if "vlp_config" not in metadata:
            return InitSource(path, "open_clip_file", as_vlp_state(tensors), _sidecar_activation(path.parent, key))
        if QUICK_GELU_METADATA in metadata:
            declared = [(None, f"its metadata {QUICK_GELU_METADATA}", metadata[QUICK_GELU_METADATA] == "true")]
        else:
            declared = _config_activation(metadata["vlp_config"], "the config in its metadata")
        return InitSource(path, "vlp", as_vlp_state(tensors), declared)
    if path.suffix not in TORCH_SUFFIXES:
        raise ConfigError(f"{key}: {path}: not a model in a known format (suffix {path.suffix!r}); the formats are: {FORMATS}")
    ckpt = _torch_load(path, key)
    if isinstance(ckpt, Mapping) and "config" in ckpt and "model" in ckpt:
        return InitSource(path, "vlp", _state_of(ckpt, path, key),
                          _config_activation(str(ckpt["config"]), "its config (model.quick_gelu)"))
    return InitSource(path, "open_clip_file", _state_of(ckpt, path, key), _sidecar_activation(path.parent, key))


def _read_hf_clip(folder: Path, key: str) -> InitSource:
    raw = _read_json(folder / "config.json", key)
    found = [folder / name for name in HF_WEIGHTS if (folder / name).is_file()]
    if not found:
        raise ConfigError(f"{key}: {folder} is a transformers CLIP folder without weights ({', '.join(HF_WEIGHTS)}; "
                          "sharded weights are not read: save_pretrained with a larger max_shard_size)")
    weights = found[0]
    state = _safetensors(weights, key)[0] if weights.suffix == ".safetensors" else _torch_load(weights, key)
    try:
        converted = open_clip_state_from_hf_clip(state)
    except ValueError as err:
        raise ConfigError(f"{key}: {weights}: {err}") from err
    bias = (raw.get(VLP_EXPORT_KEY) or {}).get("logit_bias")
    if bias is not None:  # our export of a sigmoid-loss model keeps the bias CLIPModel has no place for
        converted["logit_bias"] = torch.tensor(float(bias), dtype=torch.float32)
    declared: List[Declaration] = []
    for tower, section in (("text", "text_config"), ("image", "vision_config")):
        # transformers' CLIPTextConfig / CLIPVisionConfig default: a config.json without it means QuickGELU
        act = (raw.get(section) or {}).get("hidden_act", HF_DEFAULT_ACT)
        if act not in HF_ACTS:
            raise ConfigError(f"{key}: {folder / 'config.json'} {section}.hidden_act={act!r}: open_clip's towers "
                              f"have only {' or '.join(map(repr, HF_ACTS))}")
        declared.append((tower, f"config.json {section}.hidden_act={act!r}", act == "quick_gelu"))
    return InitSource(folder, "hf_clip", from_open_clip_state(converted), declared)


def _read_open_clip_dir(folder: Path, key: str) -> InitSource:
    from open_clip.factory import _find_checkpoint_in_dir

    weights = _find_checkpoint_in_dir(folder)
    if weights is None:
        raise ConfigError(f"{key}: {folder} holds open_clip_config.json but no weights (.safetensors/.bin/.pth)")
    source = _read_file(Path(weights), key)
    return InitSource(folder, "open_clip_dir", source.state, _sidecar_activation(folder, key))


def read_init_source(path: str | Path, key: str) -> InitSource:
    """The weights at ``path`` for the config key ``key`` (named in every error): a ConfigError
    when the path is missing or in no known format."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{key}: not found: {path} (a local file or folder; vlp never downloads). "
                          f"The formats are: {FORMATS}")
    if path.is_file():
        return _read_file(path, key)
    if (path / "open_clip_config.json").is_file():
        return _read_open_clip_dir(path, key)
    config = path / "config.json"
    if config.is_file() and _read_json(config, key).get("model_type") == "clip":
        return _read_hf_clip(path, key)
    checkpoint = latest_checkpoint(path)
    if checkpoint is not None:
        source = _read_file(checkpoint, key)
        return InitSource(checkpoint, source.kind, source.state, source.activation)
    raise ConfigError(f"{key}: {path}: a folder in no known format; the formats are: {FORMATS}")
