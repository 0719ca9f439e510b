"""Building a DualEncoder, its tokenizer and transforms from a ModelConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping

import torch

from vlp.config import ModelConfig
from vlp.data.tokenizers import Tokenizer, build_tokenizer, tokenizer_vocab_size
from vlp.models.dual_encoder import DualEncoder, resolve_arch


def model_arch(cfg: ModelConfig) -> Dict[str, Any]:
    """The open_clip architecture dict of ``cfg.arch`` with ``text_cfg.vocab_size`` set to the
    tokenizer's vocabulary for 'hf:DIR' and 'sentencepiece:FILE' tokenizers."""
    arch = resolve_arch(cfg.arch)
    vocab_size = tokenizer_vocab_size(cfg.tokenizer)
    if vocab_size is not None:
        arch["text_cfg"] = {**arch.get("text_cfg", {}), "vocab_size": vocab_size}
    return arch


def build_model(cfg: ModelConfig) -> DualEncoder:
    """A randomly initialised DualEncoder, or one loaded from the local file ``cfg.pretrained``."""
    model = DualEncoder(model_arch(cfg), init_logit_scale=cfg.init_logit_scale,
                        max_logit_scale=cfg.max_logit_scale, quick_gelu=cfg.quick_gelu,
                        init_logit_bias=cfg.init_logit_bias)
    if cfg.pretrained:
        path = Path(cfg.pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"model.pretrained: file not found: {path}")
        load_weights(model, torch.load(path, map_location="cpu", weights_only=True))
    return model


def model_tokenizer(cfg: ModelConfig, model: DualEncoder) -> Tokenizer:
    return build_tokenizer(cfg.tokenizer, model.context_length)


def load_weights(model: DualEncoder, state: Mapping[str, torch.Tensor]) -> None:
    """Load our checkpoint dict, our state dict, or an open_clip state dict (keys without 'clip.')."""
    if "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    elif "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("clip.") for k in state):
        state = {f"clip.{k}": v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights do not fit the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")


def count_parameters(model: torch.nn.Module) -> Dict[str, int]:
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
