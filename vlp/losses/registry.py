"""Objectives by name, what each reads from the outputs dict, and the weighted sum of the configured terms.

A term is a pure function ``term(outputs, **options) -> scalar tensor``, registered where it is
defined with :func:`register_term`, which also declares the outputs it reads. Adding an objective
is one module in vlp/losses/ plus its import in ``vlp/losses/__init__.py`` (or, from outside the
package, importing the module that registers it).
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from vlp.errors import ConfigError

LossTerm = Callable[..., torch.Tensor]
Inputs = Union[Sequence[str], Callable[[Mapping[str, Any]], Sequence[str]]]

CONTRASTIVE_INPUTS = ("image_emb", "text_emb", "logit_scale")
"""What the pairwise contrastive terms read: both embeddings and the temperature."""


@dataclass(frozen=True)
class TermInputs:
    """The outputs a term reads: a list of names, or a function of the term's options giving one.
    A name ``"a|b"`` is met by either output."""

    inputs: Inputs

    def names(self, options: Mapping[str, Any]) -> Tuple[str, ...]:
        return tuple(self.inputs(options) if callable(self.inputs) else self.inputs)


LOSS_TERMS: Dict[str, LossTerm] = {}
TERM_INPUTS: Dict[str, TermInputs] = {}


def register_term(name: str, inputs: Inputs = CONTRASTIVE_INPUTS) -> Callable[[LossTerm], LossTerm]:
    """Decorator: make ``fn`` the objective ``name`` of ``loss.terms``, reading ``inputs``."""
    def register(fn: LossTerm) -> LossTerm:
        if name in LOSS_TERMS and LOSS_TERMS[name] is not fn:
            raise ValueError(f"loss term {name!r} is registered twice ({LOSS_TERMS[name].__module__} and {fn.__module__})")
        LOSS_TERMS[name] = fn
        TERM_INPUTS[name] = TermInputs(inputs)
        return fn
    return register


def _options_of(term: LossTerm) -> list[str]:
    return list(inspect.signature(term).parameters)[1:]


def validate_terms(terms: Sequence[Any]) -> None:
    """Fail at start-up on an unknown term name or an option the term does not take."""
    for i, spec in enumerate(terms):
        if spec.name not in LOSS_TERMS:
            close = difflib.get_close_matches(spec.name, list(LOSS_TERMS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"loss.terms[{i}].name: unknown objective {spec.name!r}{hint} "
                              f"(valid: {', '.join(sorted(LOSS_TERMS))})")
        valid = _options_of(LOSS_TERMS[spec.name])
        for key in spec.options:
            if key not in valid:
                raise ConfigError(f"loss.terms[{i}].options.{key}: {spec.name!r} takes no option {key!r} "
                                  f"(valid: {', '.join(valid) or 'none'})")


def check_term_inputs(terms: Sequence[Any], available: Mapping[str, Optional[str]]) -> None:
    """Fail at start-up when a term reads an output the model will not produce.

    ``available`` maps the output names the model can give to None when the configured model and
    data produce it, or to what the user must set to get it (``vlp.models.outputs``); a name it
    lacks no configurable part produces.
    """
    for i, spec in enumerate(terms):
        needs: List[str] = []
        unknown: List[str] = []
        declared = TERM_INPUTS.get(spec.name, TermInputs(CONTRASTIVE_INPUTS))  # set in LOSS_TERMS by hand: the default
        for name in declared.names(dict(spec.options)):
            choices = name.split("|")
            if any(choice in available and available[choice] is None for choice in choices):
                continue
            known = [str(available[choice]) for choice in choices if choice in available]
            if not known:
                unknown.append(" or ".join(choices))
            elif " or ".join(known) not in needs:
                needs.append(" or ".join(known))
        if unknown:
            needs.append(f"a head in model.heads that provides {', '.join(unknown)} (no registered head does)")
        if needs:
            raise ConfigError(f"loss.terms[{i}] ({spec.name}) needs " + " and ".join(needs))


def compute_objective(outputs: Dict[str, torch.Tensor], terms: Sequence[Any]) -> Dict[str, torch.Tensor]:
    """Every configured term by name plus ``total`` = sum of weight * term."""
    losses: Dict[str, torch.Tensor] = {}
    total = None
    device = next(v.device for v in outputs.values() if isinstance(v, torch.Tensor))
    # Objectives run outside autocast: under it a matmul of float32 inputs would still run in
    # bf16/fp16. Each term casts its inputs up to at least float32 itself.
    with torch.autocast(device_type=device.type, enabled=False):
        for spec in terms:
            value = LOSS_TERMS[spec.name](outputs, **dict(spec.options))
            losses[spec.name] = value
            total = spec.weight * value if total is None else total + spec.weight * value
    losses["total"] = total
    return losses
