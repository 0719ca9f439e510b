"""Building a DualEncoder, its tokenizer and transforms from a ModelConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping

import torch

from vlp.config import ConfigError, ModelConfig
from vlp.data.tokenizers import Tokenizer, build_tokenizer, parse_tokenizer_spec
from vlp.models.dual_encoder import DualEncoder, check_local_hf_model, resolve_arch


def model_arch(cfg: ModelConfig) -> Dict[str, Any]:
    """The open_clip architecture dict of ``cfg.arch`` fitted to the id scheme of ``cfg.tokenizer``
    (``vlp.data.tokenizers``).

    An HF text tower (``text_cfg.hf_model_name``) is left as it is: it needs the 'hf:DIR' tokenizer
    whose ids its embeddings were trained on, and the tokenizer's ids must fit its vocabulary and
    the context its positions. open_clip's text tower gets ``vocab_size`` = the tokenizer's
    vocabulary for 'hf:DIR' and 'sentencepiece:FILE', and for 'hf:DIR' pools at the tokenizer's
    end token (``pool_type='eos'``, ``eos_id``) with its ``pad_id``.
    """
    arch = resolve_arch(cfg.arch)
    text_cfg = dict(arch.get("text_cfg", {}))
    kind, _ = parse_tokenizer_spec(cfg.tokenizer)
    if text_cfg.get("hf_model_name"):
        check_hf_text_tower(text_cfg, cfg.tokenizer)
        return arch
    if kind == "open_clip":
        return arch
    tokenizer = build_tokenizer(cfg.tokenizer, int(text_cfg.get("context_length", 77)))
    text_cfg["vocab_size"] = tokenizer.vocab_size  # type: ignore[union-attr]
    if kind == "hf":
        pool = text_cfg.get("pool_type", "eos")
        eot = tokenizer.eot_id  # type: ignore[union-attr]
        if pool == "argmax":
            raise ConfigError(f"model.arch text_cfg.pool_type 'argmax' pools at the largest id, but {cfg.tokenizer} keeps "
                             f"the tokenizer's own ids (its end token {eot} is not the largest): use pool_type 'eos' "
                             "(or leave it unset)")
        if pool == "eos":
            if eot is None:
                raise ConfigError(f"{cfg.tokenizer}: the tokenizer puts no end token after a text (no post-processor "
                                 "adding [SEP] or </s>), and open_clip's text tower pools at it; save the tokenizer "
                                 "with one (e.g. tokenizers.processors.TemplateProcessing)")
            text_cfg.update(pool_type="eos", eos_id=int(eot))
        text_cfg["pad_id"] = tokenizer.pad_id  # type: ignore[union-attr]
    arch["text_cfg"] = text_cfg
    return arch


def check_hf_text_tower(text_cfg: Mapping[str, Any], tokenizer_spec: str) -> None:
    """An HF text tower's tokenizer is 'hf:DIR', within its vocabulary, and the context within its positions."""
    from transformers import AutoConfig

    name = str(text_cfg["hf_model_name"])
    check_local_hf_model(name, bool(text_cfg.get("hf_model_pretrained", True)))
    kind, _ = parse_tokenizer_spec(tokenizer_spec)
    if kind != "hf":
        raise ConfigError(f"model.tokenizer={tokenizer_spec!r}: an HF text tower (text_cfg.hf_model_name={name}) reads "
                         "its embeddings at the ids of its own tokenizer; set model.tokenizer=hf:DIR with the "
                         f"tokenizer saved for it (e.g. hf:{name})")
    config = AutoConfig.from_pretrained(name, local_files_only=True)
    context = int(text_cfg.get("context_length", 77))
    tokenizer = build_tokenizer(tokenizer_spec, context)
    rows = getattr(config, "vocab_size", None)
    if rows is not None and tokenizer.vocab_size > rows:  # type: ignore[union-attr]
        raise ConfigError(f"{tokenizer_spec}: the tokenizer has {tokenizer.vocab_size} ids but the HF text tower "  # type: ignore[union-attr]
                         f"{name} only {rows} embedding rows (config.json vocab_size)")
    pad = getattr(config, "pad_token_id", None)
    if pad is not None and tokenizer.pad_id != pad:  # type: ignore[union-attr]
        raise ConfigError(f"{tokenizer_spec}: the tokenizer pads with id {tokenizer.pad_id} but the HF text tower "  # type: ignore[union-attr]
                         f"{name} masks id {pad} (config.json pad_token_id): padding would be attended to")
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None:
        offset = int(config.pad_token_id or 0) + 1 if "roberta" in str(config.model_type) else 0
        if context > int(positions) - offset:
            raise ConfigError(f"model.arch text_cfg.context_length={context} is more than the {int(positions) - offset} "
                             f"positions of the HF text tower {name} (config.json max_position_embeddings="
                             f"{positions}); set text_cfg.context_length")


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


def model_for_checkpoint(cfg: ModelConfig) -> DualEncoder:
    """The DualEncoder a checkpoint trained with ``cfg`` loads into. An HF text tower is built from
    its config alone (``hf_model_pretrained`` off): the checkpoint holds its weights."""
    arch = model_arch(cfg)
    if arch.get("text_cfg", {}).get("hf_model_name"):
        arch["text_cfg"] = {**arch["text_cfg"], "hf_model_pretrained": False}
    return DualEncoder(arch, init_logit_scale=cfg.init_logit_scale, max_logit_scale=cfg.max_logit_scale,
                       quick_gelu=cfg.quick_gelu, init_logit_bias=cfg.init_logit_bias)


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
    own = model.state_dict()
    shapes = [f"{k} {tuple(v.shape)} in the weights, {tuple(own[k].shape)} in the model"
              for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if shapes:  # load_state_dict would raise a long RuntimeError
        raise ValueError(f"weights do not fit the architecture: {'; '.join(shapes[:5])}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights do not fit the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")


def count_parameters(model: torch.nn.Module) -> Dict[str, int]:
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
