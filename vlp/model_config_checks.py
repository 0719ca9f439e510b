"""The checks of ``model.*`` (``vlp.config.ModelConfig``), kept beside the config so it stays short.

Checked here, when the config is read: tower and head names, the architecture, the tokenizer,
the temperature, and the training options (locking, patch dropout, init sources) as values.
Whether an init file exists and what format it is in is checked when the model is built
(``vlp.models.factory.build_model``, the first thing a training run does): a saved config must
still load for evaluation after the file it was initialised from is gone.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from vlp.errors import ConfigError


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def check_tokenizer(spec: str) -> None:
    """``model.tokenizer`` is 'open_clip', 'hf:DIR' with DIR a directory, or 'sentencepiece:FILE' with FILE a file."""
    kind, sep, path = spec.partition(":")
    forms = "valid forms: open_clip, hf:DIR, sentencepiece:FILE.model"
    _check(spec == "open_clip" or (sep and kind in ("hf", "sentencepiece") and path), "model.tokenizer",
           f"got {spec!r}, {forms}")
    if kind == "hf":
        _check(Path(path).is_dir(), "model.tokenizer", f"Hugging Face tokenizer directory not found: {path}")
    elif kind == "sentencepiece":
        _check(Path(path).is_file(), "model.tokenizer", f"sentencepiece model file not found: {path}")


def _check_arch(arch: Any) -> None:
    from vlp.models.arch import folder_arch_file

    folder_file = folder_arch_file(arch) if isinstance(arch, str) else None
    if folder_file is not None:
        _check(folder_file.is_file(), "model.arch", f"{arch!r}: {folder_file} not found")
    elif isinstance(arch, str):
        import open_clip

        names = open_clip.list_models()
        close = difflib.get_close_matches(arch, names, n=3)
        _check(arch in names, "model.arch",
               f"unknown open_clip model {arch!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    else:
        given = dict(arch) if arch is not None else {}
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in given]
        _check(not missing, "model.arch", f"an architecture dict needs keys {missing}")


def _check_training_options(cfg: Any) -> None:
    """Locking, patch dropout and init sources as values (what the towers can do is checked at build)."""
    _check(cfg.lock_image_unlocked_groups >= 0, "model.lock_image_unlocked_groups",
           f"must be >= 0, got {cfg.lock_image_unlocked_groups}")
    _check(cfg.lock_text_unlocked_layers >= 0, "model.lock_text_unlocked_layers",
           f"must be >= 0, got {cfg.lock_text_unlocked_layers}")
    for key, given in (("lock_image_unlocked_groups", cfg.lock_image_unlocked_groups > 0),
                       ("lock_image_freeze_bn_stats", cfg.lock_image_freeze_bn_stats)):
        _check(cfg.lock_image or not given, f"model.{key}", "applies only with model.lock_image=true")
    for key, given in (("lock_text_unlocked_layers", cfg.lock_text_unlocked_layers > 0),
                       ("lock_text_freeze_layer_norm", not cfg.lock_text_freeze_layer_norm)):
        _check(cfg.lock_text or not given, f"model.{key}", "applies only with model.lock_text=true")
    _check(0 <= cfg.patch_dropout < 1, "model.patch_dropout", f"must be in [0, 1), got {cfg.patch_dropout}")
    for key in ("init_from", "init_image_from", "init_text_from", "pretrained"):
        value = getattr(cfg, key)
        _check(value is None or bool(str(value).strip()), f"model.{key}", "must name a local file or folder, or be null")
    _check(not (cfg.pretrained and cfg.init_from and cfg.pretrained != cfg.init_from), "model.pretrained",
           f"is an alias of model.init_from, and both are set ({cfg.pretrained!r}, {cfg.init_from!r}): set model.init_from only")


def check_model_config(cfg: Any) -> None:
    """Every check of a ``ModelConfig``; a ``ConfigError`` naming the key on the first failure."""
    from vlp.models.heads import check_heads
    from vlp.models.towers import check_tower_name

    check_tower_name("image", cfg.image_tower, "model.image_tower")
    check_tower_name("text", cfg.text_tower, "model.text_tower")
    check_heads(cfg.heads)
    _check_arch(cfg.arch)
    check_tokenizer(cfg.tokenizer)
    _check(cfg.max_logit_scale > 0, "model.max_logit_scale", "must be > 0")
    _check(math.exp(cfg.init_logit_scale) <= cfg.max_logit_scale, "model.init_logit_scale",
           f"exp({cfg.init_logit_scale}) exceeds model.max_logit_scale={cfg.max_logit_scale}")
    _check_training_options(cfg)
