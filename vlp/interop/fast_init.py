"""Building a model quickly when a strict load will overwrite every parameter, and quieting
open_clip's 'initialized randomly' messages while doing so."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Iterator

from torch import nn

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


class DropMessage(logging.Filter):
    """A logging filter that drops records whose message contains any of ``texts``."""

    def __init__(self, *texts: str) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.texts)
