"""Loading a trained model for evaluation or export from a run directory or checkpoint file."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Tuple

import torch
from PIL import Image

from vlp.config import Config, config_from_yaml
from vlp.data.tokenizers import build_tokenizer
from vlp.data.transforms import eval_transform
from vlp.models.dual_encoder import DualEncoder
from vlp.models.factory import load_weights, model_for_checkpoint


@dataclass
class LoadedModel:
    """A model ready to encode: L2-normalised ``encode_image`` / ``encode_text``, its tokenizer and
    its evaluation image transform. ``model`` is a DualEncoder for our checkpoints, a thin wrapper
    for open_clip / transformers models (``vlp.models.external``). ``warnings``: checkpoint/config
    mismatches evaluated anyway (``allow_mismatch=True``); ``notes``: remarks such as
    'activation: undeclared'. Both belong in the results JSON."""

    model: torch.nn.Module
    tokenizer: Callable[[List[str]], torch.Tensor]
    image_transform: Callable[[Image.Image], torch.Tensor]
    name: str
    warnings: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def wrap_model(model: DualEncoder, cfg: Config, name: str) -> LoadedModel:
    """A LoadedModel around an in-memory model (used by the trainer's final evaluation)."""
    return LoadedModel(model=model, tokenizer=build_tokenizer(cfg.model.tokenizer, model.context_length),
                       image_transform=eval_transform(model.image_size), name=name)


def load_model_and_config(path: str | Path) -> Tuple[DualEncoder, Config, Path]:
    """(model on CPU in eval mode, its resolved config, the checkpoint file) from a run directory
    (its final or newest checkpoint) or one checkpoint file of ours."""
    from vlp.train.checkpoint import latest_checkpoint, load_checkpoint

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    ckpt_path = latest_checkpoint(path)
    if ckpt_path is None:
        raise FileNotFoundError(f"no checkpoint in {path} (looked for checkpoints/final.pt and step-*.pt)")
    ckpt = load_checkpoint(ckpt_path)
    if "config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{ckpt_path} is not a vlp checkpoint (no config/model entries)")
    cfg = config_from_yaml(ckpt["config"])
    model = model_for_checkpoint(cfg.model)
    load_weights(model, ckpt["model"])
    return model.eval(), cfg, ckpt_path


def vlp_safetensors_config(path: Path, metadata: Mapping[str, str]) -> str:
    """The config YAML of a vlp safetensors export (``vlp.export``) with its text files (tokenizer,
    HF text tower config; listed with their sha256 in ``vlp_text_files``, relative to the file's
    folder) checked and their paths in ``model.tokenizer`` / ``hf_model_name`` made absolute."""
    from omegaconf import DictConfig, OmegaConf

    text = metadata["vlp_config"]
    listed = json.loads(metadata.get("vlp_text_files", "{}"))
    home = Path(path).resolve().parent
    for name, digest in listed.items():
        file = home / name
        if not file.is_file():
            raise FileNotFoundError(f"{path}: its text file {file} is missing (vlp-export writes the folder beside "
                                    "the .safetensors file; copy them together)")
        if hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            raise ValueError(f"{path}: {file} is not the file exported with it (its sha256 differs)")
    if not listed:
        return text
    conf = OmegaConf.create(text)
    kind, sep, where = str(conf.model.tokenizer).partition(":")
    if sep and kind in ("hf", "sentencepiece") and not Path(where).is_absolute():
        conf.model.tokenizer = f"{kind}:{home / where}"
    text_cfg = conf.model.arch.get("text_cfg") if isinstance(conf.model.arch, DictConfig) else None
    name = text_cfg.get("hf_model_name") if text_cfg is not None else None
    if name and not Path(str(name)).is_absolute():
        text_cfg.hf_model_name = str(home / str(name))
    return OmegaConf.to_yaml(conf)


def find_hf_text_config(model_cfg: Dict[str, Any], directory: Path) -> None:
    """An open_clip model config's HF text tower ``hf_model_name`` that is no local folder (an
    export that was moved) becomes ``directory`` when that holds the HF ``config.json``
    (``vlp.export`` writes it there); any other is a clear error (open_clip would download a hub name)."""
    from vlp.models.dual_encoder import check_local_hf_model

    text_cfg = model_cfg.get("text_cfg", {})
    name = text_cfg.get("hf_model_name")
    if not name:
        return
    if not (Path(str(name)) / "config.json").is_file() and (Path(directory) / "config.json").is_file():
        text_cfg["hf_model_name"] = name = str(directory)
    check_local_hf_model(str(name), pretrained=False)  # the checkpoint holds the weights


def load_model(path: str | Path, device: str = "cpu") -> LoadedModel:
    """A run directory or checkpoint file of ours as a LoadedModel on ``device``, in eval mode."""
    model, cfg, ckpt_path = load_model_and_config(path)
    return wrap_model(model.to(device), cfg, name=str(ckpt_path))


def load_eval_model(spec: str | Path, device: str = "cpu", model_config: Any = None, **kwargs: Any) -> LoadedModel:
    """Any supported format (ours, open_clip file or local-dir, transformers CLIP folder) with
    mismatch checks; see ``vlp.models.external.load_eval_model`` for the arguments."""
    from vlp.models.external import load_eval_model as _load_eval_model

    return _load_eval_model(spec, device, model_config, **kwargs)
