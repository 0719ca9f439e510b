"""The head registry: optional heads by name (``model.heads``: {name: options}), each adding outputs to the outputs dict.

A head is an :class:`Head` subclass registered with ``@register_head("name")``. The DualEncoder
builds it as ``HeadClass(image_tower, text_tower, **options)`` (the towers are handed over to read
their sizes and to run them; they stay the DualEncoder's modules, not the head's) and, after the
towers and the logit head, calls ``head(inputs, outputs)``: ``inputs`` is the model's input dict
(``image``, ``text`` and whichever optional inputs the batch has), ``outputs`` the outputs so far;
the head returns a dict of new outputs, which are merged in (heads run in config order, so a
head sees the outputs of those before it).

What a head provides is known without building it: every head class has the class attribute
``provides`` (a tuple of output names) and the classmethod ``provides_for(options)``, which by
default returns ``provides`` and is overridden by heads whose outputs depend on their options.
Read it through :func:`head_provides` (what ``vlp.models.outputs`` does). A head that returns an
output it did not declare is an error.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from abc import ABCMeta, abstractmethod
from typing import Any, Callable, ClassVar, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from vlp.errors import ConfigError

HEADS: Dict[str, Type["Head"]] = {}
"""{registered name: head class}."""
ENCODER_OUTPUTS = ("image_emb", "text_emb", "logit_scale", "logit_bias", "neg_text_emb", "image_emb_aug", "text_emb_aug")
"""Outputs the DualEncoder gives itself; no head may provide them."""
TOKEN_OUTPUTS = ("image_tokens", "text_tokens")
"""Per-token encoder outputs a head may read (:attr:`Head.reads`); no head may provide them."""


class Head(nn.Module, metaclass=ABCMeta):
    """Base of every head: ``forward(inputs, outputs) -> {new output: tensor}``."""

    provides: ClassVar[Tuple[str, ...]] = ()
    """Names of the outputs the head adds (with any options)."""
    reads: ClassVar[Tuple[str, ...]] = ()
    """Per-token encoder outputs the head reads besides the usual ones: ``image_tokens`` (the image
    tower's ``token_features``) and / or ``text_tokens`` (the text tower's ``token_states``). The
    DualEncoder computes them in the same tower pass as the embeddings, only when a head reads
    them, and drops them from the outputs it returns."""
    joins: ClassVar[Mapping[str, Tuple[Any, ...]]] = {}
    """How an output of micro-batches joins into the output of their whole batch (gradient caching,
    vlp/train/grad_cache.py), for outputs that are not batch rows (an output not named here is
    concatenated along dim 0): ``("shared",)`` the same for every micro-batch (from parameters
    only), taken once; ``("pad", fill)`` rows whose dim 1 (a length) varies between micro-batches,
    padded with ``fill`` to the longest (``fill`` must leave the objective unchanged, e.g. an ignored label)."""

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module) -> None:
        super().__init__()
        self._towers = (image_tower, text_tower)  # a tuple: not registered as submodules here

    @classmethod
    def provides_for(cls, options: Mapping[str, Any]) -> Tuple[str, ...]:
        """The outputs this head adds under ``options`` (default: :attr:`provides`)."""
        return tuple(cls.provides)

    @property
    def image_tower(self) -> nn.Module:
        return self._towers[0]

    @property
    def text_tower(self) -> nn.Module:
        return self._towers[1]

    @abstractmethod
    def forward(self, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The head's new outputs from the model's ``inputs`` and the ``outputs`` so far."""

    def step_metrics(self, outputs: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Scalars to log at a log step, from that step's outputs (default: none). Logged as
        ``head/<name>/<key>``; a head that wants a global figure reduces over ranks itself."""
        return {}

    def after_step(self) -> None:
        """Called by the training engine on every rank after each optimizer update (default:
        nothing); e.g. a prototype head's episodic k-means refresh."""

    def rank_state(self) -> Optional[Dict[str, Any]]:
        """This rank's training-time state outside the weights that an exact resume needs (e.g. a
        partly filled k-means episode), as tensors and plain values; None when there is none."""
        return None

    def load_rank_state(self, state: Optional[Dict[str, Any]]) -> None:
        """Restore what :meth:`rank_state` returned (on the same rank of a resumed run)."""

    @classmethod
    def check_terms(cls, options: Mapping[str, Any], terms: Sequence[Any], key: str) -> None:
        """ConfigError when ``options`` do not fit the configured ``loss.terms`` (each with
        ``name`` and ``options``), e.g. a parameter that no term trains (data-parallel training
        refuses one); ``key`` is the head's config key. Default: no check."""


_REPLAY: contextvars.ContextVar[bool] = contextvars.ContextVar("vlp_head_replay", default=False)


@contextlib.contextmanager
def replaying() -> Iterator[None]:
    """Marks forwards that run again on inputs already forwarded, to rebuild their graph (gradient
    caching's second pass): a head updates no state of its own in them (:func:`is_replay`)."""
    token = _REPLAY.set(True)
    try:
        yield
    finally:
        _REPLAY.reset(token)


def is_replay() -> bool:
    """True inside :func:`replaying`: a head that keeps state from its training forwards skips it."""
    return _REPLAY.get()


def register_head(name: str) -> Callable[[Type[Head]], Type[Head]]:
    """Decorator: register a :class:`Head` subclass as ``name`` (a Python identifier)."""

    def register(cls: Type[Head]) -> Type[Head]:
        if not name.isidentifier():
            raise ValueError(f"head name {name!r} must be an identifier (it names a submodule)")
        if not (isinstance(cls, type) and issubclass(cls, Head)):
            raise TypeError(f"head {name!r}: {cls!r} is not a vlp.models.heads.Head subclass")
        if name in HEADS and HEADS[name] is not cls:
            raise ValueError(f"head {name!r} is registered twice")
        HEADS[name] = cls
        return cls

    return register


def head_provides(head: Type[Head], options: Mapping[str, Any]) -> Tuple[str, ...]:
    """The outputs head class ``head`` adds with ``options`` (read without building it)."""
    return tuple(head.provides_for(dict(options or {})))


def _option_names(cls: Type[Head]) -> Tuple[Tuple[str, ...], bool]:
    """(keyword options of the head's __init__ after the towers, whether it takes **kwargs)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, image_tower, text_tower
    names = tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def check_heads(heads: Mapping[str, Mapping[str, Any]], key: str = "model.heads") -> None:
    """ConfigError for an unknown head name or option (naming the valid ones), or an output that
    a head provides and the DualEncoder or an earlier head already gives."""
    given = {output: "the DualEncoder" for output in ENCODER_OUTPUTS + TOKEN_OUTPUTS}
    for name, options in heads.items():
        if name not in HEADS:
            valid = ", ".join(sorted(HEADS)) or "(none registered)"
            raise ConfigError(f"{key}.{name}: unknown head {name!r}, valid names: {valid}")
        unreadable = sorted(set(HEADS[name].reads) - set(TOKEN_OUTPUTS))
        if unreadable:
            raise ConfigError(f"{key}.{name}: the head reads {unreadable}; heads may read {list(TOKEN_OUTPUTS)}")
        names, any_kwargs = _option_names(HEADS[name])
        unknown = sorted(set(options or {}) - set(names))
        if unknown and not any_kwargs:
            raise ConfigError(f"{key}.{name}: unknown option(s) {unknown}; valid options: {', '.join(names) or '(none)'}")
        for output in head_provides(HEADS[name], options):
            if output in given:
                raise ConfigError(f"{key}.{name}: the head provides {output!r}, which {given[output]} already gives")
            given[output] = f"head {name!r}"


def check_heads_with_terms(heads: Mapping[str, Mapping[str, Any]], terms: Sequence[Any],
                           key: str = "model.heads") -> None:
    """Each configured head's :meth:`Head.check_terms` against ``loss.terms`` (when the config is read)."""
    for name, options in heads.items():
        if name in HEADS:
            HEADS[name].check_terms(dict(options or {}), terms, f"{key}.{name}")


def build_head(name: str, options: Mapping[str, Any], image_tower: nn.Module, text_tower: nn.Module) -> Head:
    """The head registered as ``name``, built with ``options`` over the two towers."""
    check_heads({name: options})
    return HEADS[name](image_tower, text_tower, **dict(options or {}))


__all__ = ["ENCODER_OUTPUTS", "HEADS", "TOKEN_OUTPUTS", "Head", "build_head", "check_heads", "check_heads_with_terms", "head_provides", "is_replay", "register_head",
           "replaying"]
