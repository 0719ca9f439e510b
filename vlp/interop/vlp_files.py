"""Our own files: a run directory or checkpoint file, and a vlp safetensors export."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping, Optional, Tuple

import torch

from vlp.checkpoints import load_checkpoint, select_checkpoint
from vlp.config import Config, config_from_yaml
from vlp.interop.consistency import activation_notes, check_model_consistency, finish_loading
from vlp.interop.detect import safetensors_metadata
from vlp.interop.loaded import LoadedModel, wrap_model
from vlp.interop.text_facts import open_clip_text, open_clip_text_facts
from vlp.models.dual_encoder import DualEncoder
from vlp.models.factory import build_model, load_weights


def model_from_state(cfg: Config, state: Mapping[str, torch.Tensor]) -> DualEncoder:
    """The model ``cfg.model`` describes with ``state`` loaded, on CPU in eval mode."""
    model = build_model(cfg.model, for_checkpoint=True)
    load_weights(model, state)
    return model.eval()


def load_model_and_config(path: str | Path, weights: str = "auto",
                          checkpoint: str = "auto") -> Tuple[DualEncoder, Config, Path]:
    """(model on CPU in eval mode, its resolved config, the checkpoint file) from a run directory
    (the checkpoint ``checkpoint`` names: ``vlp.checkpoints.select_checkpoint``; 'auto' is its final
    or newest one) or one checkpoint file of ours. ``weights``: 'auto' takes the weight average
    (``train.ema_decay``) when the checkpoint holds one, else the trained weights; 'ema' requires
    the average; 'raw' takes the trained weights."""
    ckpt_path = select_checkpoint(Path(path), checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    model, cfg, _ = model_from_checkpoint(ckpt, ckpt_path, weights)
    return model, cfg, ckpt_path


def model_from_checkpoint(ckpt: Mapping, ckpt_path: Path, weights: str = "auto") -> Tuple[DualEncoder, Config, bool]:
    """(model on CPU in eval mode, resolved config, whether the weight average was taken) from a
    loaded checkpoint of ours; ``weights`` as in :func:`load_model_and_config`."""
    if weights not in ("auto", "ema", "raw"):
        raise ValueError(f"weights must be auto, ema or raw, got {weights!r}")
    if "config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{ckpt_path} is not a vlp checkpoint (no config/model entries)")
    cfg = config_from_yaml(ckpt["config"])
    average = ckpt.get("ema")
    if weights == "ema" and average is None:
        raise ValueError(f"{ckpt_path} holds no weight average (the run had no train.ema_decay); use the raw weights")
    use_average = average is not None and weights != "raw"
    return model_from_state(cfg, average if use_average else ckpt["model"]), cfg, use_average


def load_model(path: str | Path, device: str = "cpu") -> LoadedModel:
    """A run directory or checkpoint file of ours as a LoadedModel on ``device``, in eval mode."""
    model, cfg, ckpt_path = load_model_and_config(path)
    return wrap_model(model.to(device), cfg, name=str(ckpt_path))


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


def load_vlp(path: Path, device: str, quick_gelu: Optional[bool], allow_mismatch: bool) -> LoadedModel:
    """One of our files (format 'vlp') as a LoadedModel, with the consistency checks."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        cfg = config_from_yaml(vlp_safetensors_config(path, safetensors_metadata(path)))
        model, source = model_from_state(cfg, load_file(str(path))), path
    else:
        model, cfg, source = load_model_and_config(path)
    declared = [("the vlp checkpoint's config (model.quick_gelu)", bool(cfg.model.quick_gelu))]
    arch = model.arch  # DualEncoder takes quick_gelu from model.quick_gelu only: an arch that says otherwise disagrees
    if "quick_gelu" in arch:
        declared.append(("the vlp checkpoint's config (model.arch quick_gelu)", bool(arch["quick_gelu"])))
    built = declared[0][1] if quick_gelu is None else bool(quick_gelu)
    if built != cfg.model.quick_gelu:
        state = model.state_dict()
        cfg.model.quick_gelu = built
        model = model_from_state(cfg, state)
    loaded = wrap_model(model.to(device), cfg, name=str(source))
    text, _ = open_clip_text(model.text_tower)
    problems = check_model_consistency(loaded.tokenizer, declared_activation=declared, built_quick_gelu=built,
                                       **open_clip_text_facts(text, model.text_tower))
    return finish_loading(loaded, path, problems, activation_notes(declared, built), allow_mismatch)
