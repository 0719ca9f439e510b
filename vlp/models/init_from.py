"""Starting a model's towers from local weights: ``model.init_from`` (both towers and the logit
head), then ``model.init_image_from`` / ``model.init_text_from`` (one tower each).

The model is the one the config describes; the weights must fit it. A tower is loaded whole or
not at all: every one of its parameters must be in the source with its shape, and the source may
hold nothing under that tower the model lacks (the error lists the names and shapes). The logit
head and heads are taken from ``init_from`` where the source has them (a transformers or open_clip
file has no heads; a CLIP source has no logit bias) and keep their init otherwise. A source that
records its activation must agree with the model's (``model.quick_gelu`` or the arch's), else
the load is refused with the setting to change.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from vlp.errors import ConfigError
from vlp.models.init_sources import InitSource, read_init_source

log = logging.getLogger(__name__)

TOWER_PREFIXES = {"image": "image_tower.", "text": "text_tower."}
OPTIONAL_PREFIXES = ("logit_head.", "heads.")
MAX_LISTED = 8


def _act(quick_gelu: bool) -> str:
    return "QuickGELU" if quick_gelu else "GELU"


def check_activation(model: nn.Module, source: InitSource, towers: Sequence[str], key: str) -> None:
    """ConfigError when what ``source`` records for ``towers`` is not the model's activation."""
    built = bool(getattr(model, "quick_gelu", False))
    arch_says = bool(getattr(model, "arch", {}).get("quick_gelu", False))
    for tower, where, quick_gelu in source.activation:
        if (tower is None or tower in towers) and quick_gelu != built:
            fix = (f"set model.quick_gelu={str(quick_gelu).lower()}" if not arch_says else
                   "model.arch declares quick_gelu: true, so use an arch without it (e.g. ViT-B-32, not ViT-B-32-quickgelu)")
            raise ConfigError(f"{key}: {source.path} was trained with {_act(quick_gelu)} ({where}) but the model is "
                              f"built with {_act(built)}: {fix}")


def _shape(tensor: torch.Tensor) -> str:
    return str(tuple(tensor.shape))


def tower_state(model: nn.Module, source: InitSource, tower: str, key: str) -> Dict[str, torch.Tensor]:
    """The entries of ``source`` for ``tower`` ('image' or 'text'), checked to fit the model's tower exactly."""
    prefix = TOWER_PREFIXES[tower]
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    given = {k: v for k, v in source.state.items() if k.startswith(prefix)}
    problems: List[str] = []
    if not given:
        problems.append(f"the source holds no {tower} tower weights")
    else:
        problems += [f"{k}: {_shape(v)} in the source, {_shape(own[k])} in the model" for k, v in given.items()
                     if k in own and v.shape != own[k].shape]
        problems += [f"{k} {_shape(own[k])}: missing in the source" for k in own if k not in given]
        problems += [f"{k} {_shape(v)}: in the source, not in the model" for k, v in given.items() if k not in own]
    if problems:
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise ConfigError(f"{key}: the {tower} tower of {source.path} ({source.kind}) does not fit model.arch "
                          f"({model.image_tower.describe() if tower == 'image' else model.text_tower.describe()}): "
                          f"{'; '.join(problems[:MAX_LISTED])}{more}")
    return given


def _optional_state(model: nn.Module, source: InitSource, key: str) -> Dict[str, torch.Tensor]:
    """The logit head's and heads' entries of ``source`` that the model has, shapes checked."""
    own = model.state_dict()
    given = {k: v for k, v in source.state.items() if k.startswith(OPTIONAL_PREFIXES)}
    wrong = [f"{k}: {_shape(v)} in the source, {_shape(own[k])} in the model" for k, v in given.items()
             if k in own and v.shape != own[k].shape]
    if wrong:
        raise ConfigError(f"{key}: {source.path} does not fit the model: {'; '.join(wrong[:MAX_LISTED])}")
    skipped = sorted({k.split(".")[1] for k in given if k.startswith("heads.") and k not in own})
    if skipped:
        log.info("%s: %s holds heads the model does not have (%s): not loaded", key, source.path, ", ".join(skipped))
    unused = sorted(k for k in given if k.startswith("logit_head.") and k not in own)
    if unused:  # e.g. a SigLIP source's logit_bias, for a model built without model.init_logit_bias
        log.warning("%s: %s holds %s, which the model does not have (set model.init_logit_bias to build one): "
                    "not loaded", key, source.path, ", ".join(unused))
    kept = sorted(k for k in own if k.startswith(OPTIONAL_PREFIXES) and k not in given)
    if kept:
        log.info("%s: %s has no %s: they keep their initial values", key, source.path, ", ".join(kept))
    return {k: v for k, v in given.items() if k in own}


def _load(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` (only names the model has: tower_state / _optional_state filter) into ``model``."""
    model.load_state_dict(dict(state), strict=False)


def init_from_files(model: nn.Module, cfg: Any) -> List[str]:
    """Load ``cfg.init_from`` (or its alias ``cfg.pretrained``), then ``cfg.init_image_from`` and
    ``cfg.init_text_from`` into ``model``; returns a line per source loaded (for the run's log)."""
    done: List[str] = []
    whole: Optional[str] = cfg.init_from or cfg.pretrained
    jobs = [("model.init_from" if cfg.init_from else "model.pretrained", whole, ("image", "text")),
            ("model.init_image_from", cfg.init_image_from, ("image",)),
            ("model.init_text_from", cfg.init_text_from, ("text",))]
    for key, path, towers in jobs:
        if not path:
            continue
        source = read_init_source(path, key)
        check_activation(model, source, towers, key)
        state: Dict[str, torch.Tensor] = {}
        for tower in towers:
            state.update(tower_state(model, source, tower, key))
        if len(towers) == 2:
            state.update(_optional_state(model, source, key))
        _load(model, state)
        done.append(f"{key}: {' and '.join(towers)} tower{'s' if len(towers) == 2 else ''} from {source.path} ({source.kind})")
    return done
