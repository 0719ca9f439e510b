"""Loading a trained model for evaluation or export from a run directory or checkpoint file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Tuple

import torch
from PIL import Image

from vlp.config import Config, config_from_yaml
from vlp.data.tokenizers import build_tokenizer
from vlp.data.transforms import eval_transform
from vlp.models.dual_encoder import DualEncoder
from vlp.models.factory import load_weights, model_arch


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
    model = DualEncoder(model_arch(cfg.model), init_logit_scale=cfg.model.init_logit_scale,
                        max_logit_scale=cfg.model.max_logit_scale, quick_gelu=cfg.model.quick_gelu,
                        init_logit_bias=cfg.model.init_logit_bias)
    load_weights(model, ckpt["model"])
    return model.eval(), cfg, ckpt_path


def load_model(path: str | Path, device: str = "cpu") -> LoadedModel:
    """A run directory or checkpoint file of ours as a LoadedModel on ``device``, in eval mode."""
    model, cfg, ckpt_path = load_model_and_config(path)
    return wrap_model(model.to(device), cfg, name=str(ckpt_path))


def load_eval_model(spec: str | Path, device: str = "cpu", model_config: Any = None, **kwargs: Any) -> LoadedModel:
    """Any supported format (ours, open_clip file or local-dir, transformers CLIP folder) with
    mismatch checks; see ``vlp.models.external.load_eval_model`` for the arguments."""
    from vlp.models.external import load_eval_model as _load_eval_model

    return _load_eval_model(spec, device, model_config, **kwargs)
