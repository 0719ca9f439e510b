"""Loading a model for evaluation from any format the ecosystem writes, with mismatch checks.

``load_eval_model(spec)`` accepts, detected from the path:

- ``vlp``: a run directory or checkpoint file of ours (``vlp.models.loading.load_model``), or a
  safetensors file from ``vlp.export`` (``vlp_config`` in its metadata);
- ``open_clip_dir``: an open_clip local-dir (``open_clip_config.json`` + weights);
- ``open_clip_file``: an open_clip checkpoint (``.pt``/``.pth``/``.bin``/``.safetensors``; a state
  dict, possibly under ``state_dict`` with ``module.`` prefixes) plus its model config: an
  open_clip model name, a model-config JSON, or an ``open_clip_config.json`` beside the file;
- ``hf_clip``: a local transformers CLIP directory (``config.json`` with model_type ``clip``).

Nothing is downloaded. Known sources of wrong published numbers (GELU vs QuickGELU, a tokenizer
that does not fit the text tower's context, vocabulary or end-of-text pooling) are checked by
``check_model_consistency``; a load that finds any raises ``ModelMismatchError`` unless
``allow_mismatch=True``, which logs them and keeps them in ``LoadedModel.warnings``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
from copy import deepcopy
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vlp.models.consistency import (Declaration, ModelMismatchError, activation_notes, check_model_consistency,
                                    finish_loading, name_declares_quick_gelu, pretrained_tag_declarations)
from vlp.models.loading import LoadedModel, find_hf_text_config

log = logging.getLogger(__name__)

FORMATS = ("vlp (a run directory or checkpoint of ours, or a vlp safetensors export), "
           "open_clip_dir (a folder with open_clip_config.json and weights), "
           "open_clip_file (.pt/.pth/.bin/.safetensors state dict plus model_config: an open_clip model name, "
           "a model-config JSON, or an open_clip_config.json beside the file), "
           "hf_clip (a transformers CLIP folder: config.json with model_type 'clip', weights, tokenizer, "
           "preprocessor_config.json)")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")

# ---------------------------------------------------------------- format detection

def detect_format(path: Path) -> str:
    """'vlp', 'open_clip_dir', 'open_clip_file' or 'hf_clip' for a local path; a clear error otherwise."""
    return _detect(Path(path))[0]


def _detect(path: Path) -> Tuple[str, Any]:
    """(the format, the unpickled checkpoint when telling the format took reading it, else None)."""
    from vlp.train.checkpoint import latest_checkpoint

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
            return ("vlp" if "vlp_config" in _safetensors_metadata(path) else "open_clip_file"), None
        ckpt = _torch_load(path)
        is_vlp = isinstance(ckpt, Mapping) and "config" in ckpt and "model" in ckpt
        return ("vlp" if is_vlp else "open_clip_file"), ckpt
    raise ValueError(f"{path}: not a model in any known format; the formats are: {FORMATS}")


def _safetensors_metadata(path: Path) -> Dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _torch_load(path: Path) -> Any:
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


def _read_weights(path: Path, ckpt: Any = None) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(state dict without 'module.' prefixes, the other top-level entries / safetensors metadata);
    ``ckpt``: the file already unpickled (by format detection), not read again."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), _safetensors_metadata(path)
    if ckpt is None:
        ckpt = _torch_load(path)
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{path}: not a state dict (got {type(ckpt).__name__})")
    extra: Dict[str, Any] = {}
    if "state_dict" in ckpt and isinstance(ckpt["state_dict"], Mapping):
        extra = {k: v for k, v in ckpt.items() if k != "state_dict"}
        ckpt = ckpt["state_dict"]
    return {k.removeprefix("module."): v for k, v in ckpt.items()}, extra


# ---------------------------------------------------------------- the entry point

def load_eval_model(spec: str | Path, device: str = "cpu", model_config: Optional[str | Path | Mapping] = None, *,
                    quick_gelu: Optional[bool] = None, pretrained_tag: Optional[str] = None,
                    allow_mismatch: bool = False) -> LoadedModel:
    """A model in any supported format (see ``FORMATS``) as a LoadedModel on ``device``, in eval mode.

    ``spec``: a local path; its format is detected. ``model_config`` (open_clip checkpoints only):
    an open_clip model name ('ViT-B-32', 'ViT-B-32-quickgelu'), a model-config JSON path
    ({embed_dim, vision_cfg, text_cfg, quick_gelu?} or {"model_cfg": ...}) or such a dict; it
    overrides an ``open_clip_config.json`` beside the weights, which is then only a declaration.
    ``quick_gelu``: force the evaluated activation (None: what the config says). ``pretrained_tag``:
    the open_clip tag the weights come from (e.g. 'openai'), whose metadata declares the activation.
    ``allow_mismatch``: evaluate despite the problems ``check_model_consistency`` finds (they are
    logged and stored in ``.warnings``) instead of raising ``ModelMismatchError``. ``.notes`` holds
    remarks such as 'activation: undeclared'.
    """
    path = Path(spec)
    kind, read = _detect(path)
    if kind not in ("open_clip_file", "open_clip_dir") and (model_config is not None or pretrained_tag):
        raise ValueError(f"{path}: model_config / pretrained_tag apply to open_clip checkpoints only, not format {kind!r}")
    if kind == "vlp":
        return _load_vlp(path, device, quick_gelu, allow_mismatch)
    if kind == "hf_clip":
        from vlp.models.hf_clip import load_hf_clip

        return load_hf_clip(path, device, quick_gelu, allow_mismatch)
    return _load_open_clip(path, kind, device, model_config, quick_gelu, pretrained_tag, allow_mismatch, read)


# ---------------------------------------------------------------- ours

def _build_vlp(cfg: Any, state: Mapping[str, torch.Tensor]) -> nn.Module:
    from vlp.models.factory import load_weights, model_for_checkpoint

    model = model_for_checkpoint(cfg.model)
    load_weights(model, state)
    return model.eval()


def _load_vlp(path: Path, device: str, quick_gelu: Optional[bool], allow_mismatch: bool) -> LoadedModel:
    from vlp.config import config_from_yaml
    from vlp.models.loading import load_model_and_config, wrap_model

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        from vlp.models.loading import vlp_safetensors_config

        cfg = config_from_yaml(vlp_safetensors_config(path, _safetensors_metadata(path)))
        model, source = _build_vlp(cfg, load_file(str(path))), path
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
        model = _build_vlp(cfg, state)
    loaded = wrap_model(model.to(device), cfg, name=str(source))
    text, _ = _open_clip_text(model.clip)
    problems = check_model_consistency(loaded.tokenizer, declared_activation=declared, built_quick_gelu=built,
                                       **_open_clip_text_facts(text, model.clip))
    return finish_loading(loaded, path, problems, activation_notes(declared, built), allow_mismatch)


# ---------------------------------------------------------------- open_clip

class OpenCLIPEncoder(nn.Module):
    """An open_clip model with L2-normalised ``encode_image`` / ``encode_text`` (LoadedModel's contract)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        from vlp.models.vit_inference import image_features

        return F.normalize(image_features(self.clip, image), dim=-1)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        from vlp.models.dual_encoder import text_features

        # exact: the text tower runs only up to the batch's last end-of-text (causal) or non-pad (HF) token
        return F.normalize(text_features(self.clip, text), dim=-1)


def _open_clip_text(clip: nn.Module) -> Tuple[Optional[nn.Module], str]:
    """(the module holding token/positional embeddings, its state-dict prefix); (None, '') for HF text towers."""
    if hasattr(clip, "token_embedding") and hasattr(clip, "positional_embedding"):
        return clip, ""
    text = getattr(clip, "text", None)
    if text is not None and hasattr(text, "token_embedding") and hasattr(text, "positional_embedding"):
        return text, "text."
    return None, ""


def _open_clip_text_facts(text: Optional[nn.Module], clip: Optional[nn.Module] = None) -> Dict[str, Any]:
    """The built text tower's side of check_model_consistency's arguments (for an HF text tower
    of ``clip``, its token-embedding rows only)."""
    if text is None:
        hf = getattr(clip, "text", None)
        embeddings = getattr(getattr(hf, "transformer", None), "get_input_embeddings", None)
        if embeddings is None:
            return {"text_pool": "none"}
        return {"text_pool": "none", "model_token_rows": int(embeddings().weight.shape[0])}
    pool = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
    return {"model_position_rows": int(text.positional_embedding.shape[0]),
            "model_context_length": int(text.context_length),
            "model_token_rows": int(text.token_embedding.weight.shape[0]),
            "text_pool": pool, "pool_eos_id": getattr(text, "text_eos_id", getattr(text, "eos_id", None))}


def _resolve_model_config(model_config: str | Path | Mapping) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]], str]:
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


def _load_open_clip(path: Path, kind: str, device: str, model_config: Any, quick_gelu: Optional[bool],
                    pretrained_tag: Optional[str], allow_mismatch: bool, read: Any = None) -> LoadedModel:
    import open_clip
    from open_clip.factory import _find_checkpoint_in_dir

    if kind == "open_clip_dir":
        directory, found = path, _find_checkpoint_in_dir(path)
        if found is None:
            raise FileNotFoundError(f"{path}: open_clip_config.json but no weights (.safetensors/.bin/.pth)")
        weights = Path(found)
    else:
        directory, weights = path.parent, path
    sidecar_path = directory / "open_clip_config.json"
    sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.is_file() else None
    declared: List[Declaration] = []
    if sidecar is not None and "quick_gelu" in sidecar.get("model_cfg", {}):
        declared.append((f"{sidecar_path} (model_cfg.quick_gelu)", bool(sidecar["model_cfg"]["quick_gelu"])))
    if model_config is None:
        if sidecar is None:
            raise ValueError(f"{path}: an open_clip checkpoint needs model_config (an open_clip model name or a "
                             "model-config JSON), or an open_clip_config.json beside it")
        model_cfg, preprocess, config_name = deepcopy(sidecar["model_cfg"]), sidecar.get("preprocess_cfg"), str(sidecar_path)
    else:
        model_cfg, preprocess, config_name = _resolve_model_config(model_config)
        if preprocess is None and sidecar is not None:
            preprocess = sidecar.get("preprocess_cfg")
        if not isinstance(model_config, Mapping) and name_declares_quick_gelu(Path(str(model_config)).name):
            declared.append((f"the model config's name {Path(str(model_config)).name!r}", True))
    for source, name in (("file", weights.name), ("folder", directory.name)):
        if name_declares_quick_gelu(name):
            declared.append((f"the checkpoint's {source} name {name!r}", True))
    state, extra = _read_weights(weights, read if weights == path else None)
    run_name = extra.get("name")
    if isinstance(run_name, str) and name_declares_quick_gelu(run_name):
        declared.append((f"the checkpoint's run name {run_name!r}", True))
    model_name = model_config if isinstance(model_config, str) and not Path(model_config).is_file() else None
    if pretrained_tag:
        from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

        if model_name is None or not get_pretrained_cfg(model_name, pretrained_tag):
            raise ValueError(f"pretrained_tag {pretrained_tag!r} needs model_config to be an open_clip model name "
                             f"that has it (got {model_config!r}; its tags: "
                             f"{list_pretrained_tags_by_model(model_name) if model_name else []})")
    declared += pretrained_tag_declarations(weights, model_name, pretrained_tag)
    if pretrained_tag and model_name:
        from open_clip.pretrained import get_pretrained_cfg

        tag_cfg = get_pretrained_cfg(model_name, pretrained_tag)
        preprocess = {**(preprocess or {}), **{k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
                                               if k in tag_cfg}}
    built = bool(model_cfg.get("quick_gelu", False)) if quick_gelu is None else bool(quick_gelu)
    model_cfg["quick_gelu"] = built
    find_hf_text_config(model_cfg, directory)

    with tempfile.TemporaryDirectory() as tmp:  # open_clip builds a config dict only from a local-dir
        (Path(tmp) / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg,
                                                                     "preprocess_cfg": preprocess or {}}))
        quiet = _DropMessage("initialized randomly", "no CLIP weights found")  # the weights are loaded below, after the checks
        logging.getLogger().addFilter(quiet)
        try:
            with skip_parameter_init():  # every parameter is overwritten by the strict load below
                model, _, transform = open_clip.create_model_and_transforms(
                    f"local-dir:{tmp}", device="cpu", pretrained_image=False, pretrained_text=False)
        finally:
            logging.getLogger().removeFilter(quiet)
        # the config read from the folder: its tokenizer files (text_cfg.hf_tokenizer_name) lie there too
        tokenizer_dir = directory if sidecar is not None and model_config is None else Path(tmp)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{tokenizer_dir}")
    text, prefix = _open_clip_text(model)
    facts = _open_clip_text_facts(text, model)
    if text is not None:
        facts["checkpoint_position_rows"] = _rows(state, prefix + "positional_embedding")
        facts["checkpoint_token_rows"] = _rows(state, prefix + "token_embedding.weight")
    problems = check_model_consistency(tokenizer, declared_activation=declared, built_quick_gelu=built, **facts)
    notes = activation_notes(declared, built) + [f"model config: {config_name}"]
    if problems and not allow_mismatch:
        raise ModelMismatchError(path, problems)
    try:
        if not _load_matching_state(model, state):  # else open_clip converts other layouts
            open_clip.load_checkpoint(model, str(weights), strict=True)
    except RuntimeError as err:
        raise ModelMismatchError(path, problems + [f"the weights cannot be loaded into the model config: {err}"]) from err
    loaded = LoadedModel(model=OpenCLIPEncoder(model.to(device).eval()), tokenizer=tokenizer,
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


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "orthogonal_", "constant_", "zeros_", "ones_")


@contextlib.contextmanager
def skip_parameter_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s initialisers no-ops, in the calling thread, while a model that will
    be loaded strictly is built (a ViT-B/32 spends ~1 s drawing random weights that the checkpoint
    then replaces)."""
    from torch.nn.modules import activation  # MultiheadAttention calls the names it imported

    owner = threading.get_ident()  # a load on a background thread leaves other threads' init alone

    def skipped(fn: Any) -> Any:
        return lambda tensor, *args, **kwargs: (tensor if threading.get_ident() == owner
                                                else fn(tensor, *args, **kwargs))

    with _INIT_PATCH_LOCK:  # one patch at a time: a second would save the first's wrappers as originals
        saved = [(module, name, getattr(module, name)) for module in (nn.init, activation)
                 for name in _INIT_FUNCTIONS if hasattr(module, name)]
        try:
            for module, name, fn in saved:
                setattr(module, name, skipped(fn))
            yield
        finally:
            for module, name, fn in saved:
                setattr(module, name, fn)


_INIT_PATCH_LOCK = threading.Lock()


class _DropMessage(logging.Filter):
    def __init__(self, *texts: str) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.texts)


def _rows(state: Mapping[str, torch.Tensor], key: str) -> Optional[int]:
    return int(state[key].shape[0]) if key in state else None
