"""Text tokenizers behind one interface: list of str -> LongTensor [B, context_length]."""

from __future__ import annotations

from typing import Callable, List

import torch

Tokenizer = Callable[[List[str]], torch.Tensor]


def build_tokenizer(name: str, context_length: int) -> Tokenizer:
    """The tokenizer named in ``model.tokenizer``; 'open_clip' is the BPE shipped in open_clip's wheel."""
    if name == "open_clip":
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(context_length=context_length)
    raise ValueError(f"unknown tokenizer {name!r}; valid: open_clip")
