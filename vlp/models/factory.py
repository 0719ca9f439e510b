"""Building a DualEncoder and its tokenizer from a ModelConfig, and loading weights into it."""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping

import torch

from vlp.data.tokenizers import Tokenizer, build_tokenizer, parse_tokenizer_spec
from vlp.errors import ConfigError
from vlp.models.arch import resolve_arch
from vlp.models.dual_encoder import DualEncoder
from vlp.models.init_from import init_from_files
from vlp.models.open_clip_layout import as_vlp_state
from vlp.models.tower_setup import apply_tower_settings
from vlp.models.towers.open_clip_text import check_local_hf_model

log = logging.getLogger(__name__)

ModelCfg = Any
"""A ``vlp.config.ModelConfig`` (not imported: vlp.config reads the tower and head registries here,
so models stay below config)."""


def model_arch(cfg: ModelCfg) -> Dict[str, Any]:
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


def build_model(cfg: ModelCfg, *, for_checkpoint: bool = False, resuming: bool = False) -> DualEncoder:
    """The DualEncoder of ``cfg``: its towers and heads by name, randomly initialised, then the
    local weights of ``cfg.init_from`` (alias ``cfg.pretrained``), ``cfg.init_image_from`` and
    ``cfg.init_text_from`` loaded (``vlp.models.init_from``), then the training settings applied:
    locking, gradient checkpointing, patch dropout (``vlp.models.tower_setup``). A missing init
    file, one in no known format, or one that does not fit is a ConfigError naming its key.

    ``for_checkpoint``: the weights come from a checkpoint the caller loads next, for evaluation or
    export, so nothing is loaded here and the training settings are left off; an HF text tower is
    built from its config alone (``hf_model_pretrained`` off).

    ``resuming``: a training run that continues from its own checkpoint: the training settings
    apply, but no init file is read (the checkpoint holds the weights; the files may be gone)."""
    arch = model_arch(cfg)
    if (for_checkpoint or resuming) and arch.get("text_cfg", {}).get("hf_model_name"):
        arch["text_cfg"] = {**arch["text_cfg"], "hf_model_pretrained": False}
    model = DualEncoder(arch, init_logit_scale=cfg.init_logit_scale, max_logit_scale=cfg.max_logit_scale,
                        quick_gelu=cfg.quick_gelu, init_logit_bias=cfg.init_logit_bias,
                        image_tower=cfg.image_tower, text_tower=cfg.text_tower, heads=cfg.heads)
    if not for_checkpoint:
        for line in ([] if resuming else init_from_files(model, cfg)) + apply_tower_settings(model, cfg):
            log.info(line)
    return model


def model_tokenizer(cfg: ModelCfg, model: DualEncoder) -> Tokenizer:
    return build_tokenizer(cfg.tokenizer, model.context_length)


def load_weights(model: DualEncoder, state: Mapping[str, torch.Tensor]) -> None:
    """Load into ``model``: our checkpoint dict ({'model': ...}), our state dict, our state dict of
    before the model had named parts (open_clip's names under 'clip.'), or an open_clip state dict (possibly under
    'state_dict', with 'module.' prefixes); see ``vlp.models.open_clip_layout``."""
    if "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    elif "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    state = as_vlp_state(state)
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
