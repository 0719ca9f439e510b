"""Export to open_clip's local-directory format and to a plain safetensors file.

open_clip: a directory with ``open_clip_config.json`` ({"model_cfg", "preprocess_cfg"}, plus
{"vlp": {"registry_name"}}, which open_clip does not read), ``open_clip_model.safetensors`` (and
``open_clip_pytorch_model.bin`` on request) and the tokenizer's files (``vlp.export.text_files``)
that ``open_clip.create_model_and_transforms('local-dir:DIR')`` and
``open_clip.get_tokenizer('local-dir:DIR')`` load with no network; a CoCa model as open_clip's CoCa
(``vlp.export.open_clip_arch`` says what maps). When the architecture is an open_clip registry
config (``vlp.export.open_clip_registry``), ``open_clip.create_model_and_transforms(NAME,
pretrained=DIR/open_clip_model.safetensors)`` loads it too. ``preprocess_cfg`` is our evaluation
transform (``vlp.data.transforms.eval_transform``: open_clip's defaults at the model's image size).
safetensors: our state dict with the resolved config in the metadata and, for an 'hf:DIR' /
'sentencepiece:FILE' tokenizer or an HF text tower, a folder ``NAME-text`` beside the file with
their files. A part or tokenizer the target cannot express is refused before anything is written;
the output appears whole or not at all (built in a hidden folder, then renamed).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from omegaconf import OmegaConf
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from vlp.data.tokenizers import build_tokenizer, parse_tokenizer_spec
from vlp.export.open_clip_arch import check_open_clip_layout, open_clip_model_cfg, open_clip_state
from vlp.export.open_clip_registry import registry_names
from vlp.export.staging import check_replaceable, save_safetensors_atomic, staged_dir
from vlp.export.text_files import check_open_clip_tokenizer, open_clip_text_files, safetensors_text_files
from vlp.models.dual_encoder import DualEncoder
from vlp.models.init_sources import QUICK_GELU_METADATA
from vlp.models.open_clip_layout import STATE_LAYOUT
from vlp.utils.atomic import write_json_atomic

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_BIN = "open_clip_pytorch_model.bin"
VLP_KEY = "vlp"
"""The key of open_clip_config.json that holds what vlp adds (open_clip reads only model_cfg and preprocess_cfg)."""


def eval_preprocess_cfg(image_size: int) -> Dict[str, Any]:
    """open_clip's ``preprocess_cfg`` of our evaluation transform (``eval_transform(image_size)``:
    open_clip's ``image_transform`` with its defaults): size, mode, mean, std, interpolation,
    resize_mode, fill_color."""
    from open_clip.transform import PreprocessCfg

    cfg = PreprocessCfg(size=int(image_size), mean=tuple(OPENAI_DATASET_MEAN), std=tuple(OPENAI_DATASET_STD),
                        interpolation="bicubic", resize_mode="shortest", fill_color=0)
    return json.loads(json.dumps(asdict(cfg)))


def registry_name(model: DualEncoder) -> Optional[str]:
    """The open_clip registry name of ``model``'s architecture (activation and logit bias included),
    None for a custom one: ``open_clip.create_model_and_transforms(NAME, pretrained=FILE)`` loads its
    open_clip export's weights FILE. UnsupportedExport when open_clip cannot express the model."""
    names = registry_names(open_clip_model_cfg(model))
    return names[0] if names else None


def export_open_clip(model: DualEncoder, out_dir: Path, tokenizer: str = "open_clip", *,
                     pytorch_bin: bool = False) -> Path:
    """Write an open_clip local-dir model with tokenizer ``tokenizer`` (a ``model.tokenizer`` value)
    to ``out_dir``; returns the directory. ``pytorch_bin``: also ``open_clip_pytorch_model.bin``
    (torch.save of the same state dict). UnsupportedExport (a part open_clip has no counterpart
    for, named), TokenizerExportError or FileExistsError before anything is written."""
    out_dir = Path(out_dir)
    check_replaceable(out_dir, OPEN_CLIP_CONFIG)
    model_cfg = open_clip_model_cfg(model)
    state = open_clip_state(model)
    check_open_clip_layout(model_cfg, state)
    names = registry_names(model_cfg)
    text_cfg = model_cfg.setdefault("text_cfg", {})
    files = open_clip_text_files(tokenizer, model.context_length, text_cfg)
    home = str(out_dir.resolve())
    if text_cfg.get("hf_model_name"):  # built from the config.json copied here; the weights are in the export
        text_cfg.update(hf_model_name=home, hf_model_pretrained=False)
    has_tokenizer = parse_tokenizer_spec(tokenizer)[0] != "open_clip"
    if has_tokenizer:  # any value: open_clip reads a local-dir's tokenizer from the dir itself
        text_cfg.update(hf_tokenizer_name=home, context_length=model.context_length)
    config = {"model_cfg": model_cfg, "preprocess_cfg": eval_preprocess_cfg(model.image_size),
              VLP_KEY: {"registry_name": names[0] if names else None}}
    with staged_dir(out_dir) as stage:
        for name, data in files.items():
            (stage / name).write_bytes(data)
        write_json_atomic(stage / OPEN_CLIP_CONFIG, config, sort_keys=False)
        if has_tokenizer:
            check_open_clip_tokenizer(stage, build_tokenizer(tokenizer, model.context_length), tokenizer)
        save_safetensors_atomic(state, stage / OPEN_CLIP_WEIGHTS, {"format": "pt"})
        if pytorch_bin:
            torch.save(state, stage / OPEN_CLIP_BIN)
    return out_dir


def text_folder(path: Path) -> Path:
    """The folder beside a safetensors export that holds its text files: ``NAME-text``."""
    return path.with_name(f"{path.stem}-text")


def export_safetensors(model: DualEncoder, path: Path, config_yaml: str) -> Path:
    """Write our state dict as safetensors with the resolved config YAML in the metadata, and the
    tokenizer / HF text tower files in :func:`text_folder` (their paths and sha256 in the metadata)."""
    path = Path(path)
    conf = OmegaConf.create(config_yaml)
    folder = text_folder(path)
    files, entries = safetensors_text_files(str(conf.model.tokenizer), model.arch.get("text_cfg", {}), folder.name)
    # the activation beside the weights (vlp.models.init_sources reads it; QUICK_GELU_METADATA)
    metadata = {"format": "pt", "vlp_state_layout": STATE_LAYOUT,
                QUICK_GELU_METADATA: "true" if getattr(model, "quick_gelu", False) else "false"}
    if files:
        check_replaceable(folder, ".vlp-text")
        if "tokenizer" in entries:
            conf.model.tokenizer = entries["tokenizer"]
        if "hf_model_name" in entries:
            arch: Any = json.loads(json.dumps(model.arch))
            arch["text_cfg"].update(hf_model_name=entries["hf_model_name"], hf_model_pretrained=False)
            conf.model.arch = arch
        metadata["vlp_text_files"] = json.dumps({name: hashlib.sha256(data).hexdigest()
                                                 for name, data in sorted(files.items())})
        with staged_dir(folder) as stage:
            (stage / ".vlp-text").write_text(f"text files of {path.name} (vlp-export)\n")
            for name, data in files.items():
                (stage / Path(name).relative_to(folder.name)).write_bytes(data)
    metadata["vlp_config"] = OmegaConf.to_yaml(conf) if files else config_yaml
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_safetensors_atomic(tensors, path, metadata)
    return path
