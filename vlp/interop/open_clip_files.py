"""open_clip checkpoints (a file plus its model config, or a local-dir) as eval models, with the
activation each source declares collected for the consistency checks.

open_clip's CLIP and CustomTextCLIP come back as our DualEncoder around the model's own modules
(same forwards, so the same features); any other open_clip model class (e.g. CoCa) behind the
thin :class:`OpenCLIPEncoder`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from copy import deepcopy
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vlp.errors import ModelMismatchError
from vlp.interop.consistency import (Declaration, activation_notes, check_model_consistency, finish_loading,
                                     name_declares_quick_gelu, pretrained_tag_declarations)
from vlp.interop.detect import read_weights
from vlp.interop.fast_init import DropMessage, skip_parameter_init
from vlp.interop.loaded import LoadedModel
from vlp.interop.text_facts import open_clip_text, open_clip_text_facts
from vlp.models.dual_encoder import DualEncoder
from vlp.models.logit_head import LogitHead
from vlp.models.towers.open_clip_image import OpenCLIPImageTower
from vlp.models.towers.open_clip_text import (OpenCLIPCustomTextTower, OpenCLIPTextTower, check_local_hf_model,
                                              text_features)
from vlp.models.towers.vit_forward import image_features


class OpenCLIPEncoder(nn.Module):
    """An open_clip model with L2-normalised ``encode_image`` / ``encode_text`` (LoadedModel's contract)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(image_features(self.clip, image), dim=-1)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        # exact: the text tower runs only up to the batch's last end-of-text (causal) or non-pad (HF) token
        return F.normalize(text_features(self.clip, text), dim=-1)


def dual_encoder_from_open_clip(clip: nn.Module, arch: Mapping[str, Any], quick_gelu: bool) -> Optional[DualEncoder]:
    """Our DualEncoder made of an open_clip CLIP's or CustomTextCLIP's own modules (not copies);
    None for any other model class."""
    import open_clip

    context = int(arch.get("text_cfg", {}).get("context_length", 77))
    if type(clip) is open_clip.CLIP:
        text: nn.Module = OpenCLIPTextTower.from_clip(clip, context)
    elif type(clip) is open_clip.CustomTextCLIP:
        text = OpenCLIPCustomTextTower(clip.text, context)
    else:
        return None
    image = OpenCLIPImageTower(clip.visual)
    image.name = text.name = "open_clip"
    head = LogitHead.from_parameters(clip.logit_scale, clip.logit_bias)
    return DualEncoder.from_parts(dict(arch), image, text, head, quick_gelu=quick_gelu).train(clip.training)


def find_hf_text_config(model_cfg: Dict[str, Any], directory: Path) -> None:
    """An open_clip model config's HF text tower ``hf_model_name`` that is no local folder (an
    export that was moved) becomes ``directory`` when that holds the HF ``config.json``
    (``vlp.export`` writes it there); any other is a clear error (open_clip would download a hub name)."""
    text_cfg = model_cfg.get("text_cfg", {})
    name = text_cfg.get("hf_model_name")
    if not name:
        return
    if not (Path(str(name)) / "config.json").is_file() and (Path(directory) / "config.json").is_file():
        text_cfg["hf_model_name"] = name = str(directory)
    check_local_hf_model(str(name), pretrained=False)  # the checkpoint holds the weights


def resolve_model_config(model_config: str | Path | Mapping) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]], str]:
    """(open_clip model_cfg, its preprocess_cfg if it has one, a name for messages)."""
    import open_clip

    if isinstance(model_config, Mapping):
        cfg, name = deepcopy(dict(model_config)), "the given model config"
    elif Path(model_config).is_file():
        cfg, name = json.loads(Path(model_config).read_text()), str(model_config)
    else:
        cfg, name = open_clip.get_model_config(str(model_config)), str(model_config)
        if cfg is None:
            raise ValueError(f"model_config {model_config!r} is neither a model-config JSON file nor an open_clip "
                             "model name (see open_clip.list_models())")
    preprocess = cfg.get("preprocess_cfg") if "model_cfg" in cfg else None
    cfg = deepcopy(cfg.get("model_cfg", cfg))
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError(f"{name}: not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    return cfg, preprocess, name


def _weights_location(path: Path, kind: str) -> Tuple[Path, Path]:
    """(the folder of the checkpoint, its weights file)."""
    if kind != "open_clip_dir":
        return path.parent, path
    from open_clip.factory import _find_checkpoint_in_dir

    found = _find_checkpoint_in_dir(path)
    if found is None:
        raise FileNotFoundError(f"{path}: open_clip_config.json but no weights (.safetensors/.bin/.pth)")
    return path, Path(found)


def _model_config(path: Path, directory: Path, model_config: Any) -> Tuple[Dict[str, Any], Any, str, List[Declaration], bool]:
    """(model_cfg, preprocess_cfg, its name for messages, the activations declared by the config
    files and names, whether the config is the sidecar open_clip_config.json)."""
    sidecar_path = directory / "open_clip_config.json"
    sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.is_file() else None
    declared: List[Declaration] = []
    if sidecar is not None and "quick_gelu" in sidecar.get("model_cfg", {}):
        declared.append((f"{sidecar_path} (model_cfg.quick_gelu)", bool(sidecar["model_cfg"]["quick_gelu"])))
    if model_config is None:
        if sidecar is None:
            raise ValueError(f"{path}: an open_clip checkpoint needs model_config (an open_clip model name or a "
                             "model-config JSON), or an open_clip_config.json beside it")
        return deepcopy(sidecar["model_cfg"]), sidecar.get("preprocess_cfg"), str(sidecar_path), declared, True
    model_cfg, preprocess, config_name = resolve_model_config(model_config)
    if preprocess is None and sidecar is not None:
        preprocess = sidecar.get("preprocess_cfg")
    if not isinstance(model_config, Mapping) and name_declares_quick_gelu(Path(str(model_config)).name):
        declared.append((f"the model config's name {Path(str(model_config)).name!r}", True))
    return model_cfg, preprocess, config_name, declared, False


def _name_declarations(weights: Path, directory: Path, extra: Mapping[str, Any]) -> List[Declaration]:
    """QuickGELU declared by the weights file's name, its folder's name or the run name saved in it."""
    declared = [(f"the checkpoint's {source} name {name!r}", True)
                for source, name in (("file", weights.name), ("folder", directory.name)) if name_declares_quick_gelu(name)]
    run_name = extra.get("name")
    if isinstance(run_name, str) and name_declares_quick_gelu(run_name):
        declared.append((f"the checkpoint's run name {run_name!r}", True))
    return declared


def _pretrained_tag(weights: Path, model_config: Any, pretrained_tag: Optional[str],
                    preprocess: Any) -> Tuple[List[Declaration], Any]:
    """(the activations open_clip's pretrained-tag metadata declares, preprocess_cfg with the tag's
    mean/std/interpolation/resize mode)."""
    model_name = model_config if isinstance(model_config, str) and not Path(model_config).is_file() else None
    if pretrained_tag:
        from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

        if model_name is None or not get_pretrained_cfg(model_name, pretrained_tag):
            raise ValueError(f"pretrained_tag {pretrained_tag!r} needs model_config to be an open_clip model name "
                             f"that has it (got {model_config!r}; its tags: "
                             f"{list_pretrained_tags_by_model(model_name) if model_name else []})")
        tag_cfg = get_pretrained_cfg(model_name, pretrained_tag)
        preprocess = {**(preprocess or {}), **{k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
                                               if k in tag_cfg}}
    return pretrained_tag_declarations(weights, model_name, pretrained_tag), preprocess


def _build_open_clip(model_cfg: Dict[str, Any], preprocess: Any, tokenizer_dir: Optional[Path]) -> Tuple[nn.Module, Any, Any]:
    """(open_clip's model for ``model_cfg``, uninitialised, its image transform, its tokenizer);
    ``tokenizer_dir``: the folder whose config it is (its tokenizer files lie there too), or None."""
    import open_clip

    with tempfile.TemporaryDirectory() as tmp:  # open_clip builds a config dict only from a local-dir
        (Path(tmp) / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg,
                                                                     "preprocess_cfg": preprocess or {}}))
        quiet = DropMessage("initialized randomly", "no CLIP weights found")  # the weights are loaded later, after the checks
        logging.getLogger().addFilter(quiet)
        try:
            with skip_parameter_init():  # every parameter is overwritten by the strict load
                model, _, transform = open_clip.create_model_and_transforms(
                    f"local-dir:{tmp}", device="cpu", pretrained_image=False, pretrained_text=False)
        finally:
            logging.getLogger().removeFilter(quiet)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{tokenizer_dir or tmp}")
    return model, transform, tokenizer


def _problems(model: nn.Module, state: Mapping[str, torch.Tensor], tokenizer: Any, declared: List[Declaration],
              built: bool) -> List[str]:
    text, prefix = open_clip_text(model)
    facts = open_clip_text_facts(text, model)
    if text is not None:
        facts["checkpoint_position_rows"] = _rows(state, prefix + "positional_embedding")
        facts["checkpoint_token_rows"] = _rows(state, prefix + "token_embedding.weight")
    return check_model_consistency(tokenizer, declared_activation=declared, built_quick_gelu=built, **facts)


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], weights: Path, path: Path,
                problems: List[str]) -> None:
    import open_clip

    try:
        if not _load_matching_state(model, state):  # else open_clip converts other layouts
            open_clip.load_checkpoint(model, str(weights), strict=True)
    except RuntimeError as err:
        raise ModelMismatchError(path, problems + [f"the weights cannot be loaded into the model config: {err}"]) from err


def load_open_clip(path: Path, kind: str, device: str, model_config: Any, quick_gelu: Optional[bool],
                   pretrained_tag: Optional[str], allow_mismatch: bool, read: Any = None) -> LoadedModel:
    """An open_clip checkpoint (format ``kind``: 'open_clip_file' or 'open_clip_dir') as a
    LoadedModel; see ``vlp.interop.load.load_eval_model`` for the arguments. ``read``: the file
    already unpickled by format detection."""
    directory, weights = _weights_location(path, kind)
    model_cfg, preprocess, config_name, declared, from_sidecar = _model_config(path, directory, model_config)
    state, extra = read_weights(weights, read if weights == path else None)
    declared += _name_declarations(weights, directory, extra)
    tag_declared, preprocess = _pretrained_tag(weights, model_config, pretrained_tag, preprocess)
    declared += tag_declared
    built = bool(model_cfg.get("quick_gelu", False)) if quick_gelu is None else bool(quick_gelu)
    model_cfg["quick_gelu"] = built
    find_hf_text_config(model_cfg, directory)
    model, transform, tokenizer = _build_open_clip(model_cfg, preprocess, directory if from_sidecar else None)
    problems = _problems(model, state, tokenizer, declared, built)
    notes = activation_notes(declared, built) + [f"model config: {config_name}"]
    if problems and not allow_mismatch:
        raise ModelMismatchError(path, problems)
    _load_state(model, state, weights, path, problems)
    model = model.to(device).eval()
    ours = dual_encoder_from_open_clip(model, model_cfg, built)
    loaded = LoadedModel(model=ours if ours is not None else OpenCLIPEncoder(model), tokenizer=tokenizer,
                         image_transform=transform, name=str(weights))
    return finish_loading(loaded, path, problems, notes, allow_mismatch)


def _load_matching_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> bool:
    """Copy ``state`` into ``model`` when it has exactly the model's keys and shapes (then no
    conversion of open_clip's ``load_checkpoint`` applies, and the file is not read again);
    False, loading nothing, otherwise."""
    own = model.state_dict()
    if own.keys() != state.keys() or any(own[k].shape != state[k].shape for k in own):
        return False
    model.load_state_dict(state, strict=True)
    return True


def _rows(state: Mapping[str, torch.Tensor], key: str) -> Optional[int]:
    return int(state[key].shape[0]) if key in state else None
