"""Text tokenizers behind one interface: list of str -> LongTensor [B, context_length].

``model.tokenizer`` names one of:

- ``open_clip``: the BPE shipped in open_clip's wheel (end-of-text 49407, the largest id);
- ``hf:DIR``: a Hugging Face tokenizer saved in the local directory DIR (never downloaded);
- ``sentencepiece:FILE.model``: a SentencePiece model file (``python -m data_prep tokenizer``).

Every row is ``[start, tok..., end, 0, 0, ...]``; a caption longer than the context is truncated
and its last position is still the end token. open_clip's text tower pools the feature at
``text.argmax(-1)`` (and DualEncoder trims the batch to the last such position), so the end token
must be the largest id of each row. For the HF and SentencePiece tokenizers the ids are remapped
to guarantee it: 0 is padding, the wrapped tokenizer's id ``i`` becomes ``i + 1``, the start
token is ``vocab_size - 2`` and the end token ``vocab_size - 1``; ``vocab_size`` (wrapped size
+ 3) is what the text tower's embedding table must hold.
"""

from __future__ import annotations

import abc
import os
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

Tokenizer = Callable[[List[str]], torch.Tensor]

OPEN_CLIP_VOCAB_SIZE = 49408
TOKENIZER_FORMS = "open_clip, hf:DIR (a local Hugging Face tokenizer), sentencepiece:FILE.model"


def parse_tokenizer_spec(spec: str) -> Tuple[str, Optional[str]]:
    """('open_clip', None), ('hf', DIR) or ('sentencepiece', FILE) from a ``model.tokenizer`` value."""
    if spec == "open_clip":
        return "open_clip", None
    kind, sep, path = spec.partition(":")
    if sep and kind in ("hf", "sentencepiece") and path:
        return kind, path
    raise ValueError(f"unknown tokenizer {spec!r}; valid forms: {TOKENIZER_FORMS}")


class _RemappedTokenizer(abc.ABC):
    """Shared framing for wrapped tokenizers: shift ids by one, add start/end at the top of the vocabulary."""

    base_size: int

    def __init__(self, context_length: int) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (start and end tokens), got {context_length}")
        self.context_length = int(context_length)

    @abc.abstractmethod
    def _encode_ids(self, texts: Sequence[str]) -> List[List[int]]:
        """Texts -> the wrapped tokenizer's ids, without special tokens."""

    @abc.abstractmethod
    def _decode_ids(self, ids: List[int]) -> str:
        """The wrapped tokenizer's ids -> text."""

    @property
    def vocab_size(self) -> int:
        return self.base_size + 3

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def sot_id(self) -> int:
        return self.base_size + 1

    @property
    def eot_id(self) -> int:
        return self.base_size + 2

    def __call__(self, texts: Union[str, Sequence[str]], context_length: Optional[int] = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, ids in enumerate(self._encode_ids([str(t) for t in texts])):
            tokens = [self.sot_id] + [i + 1 for i in ids[: length - 2]] + [self.eot_id]
            out[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return out

    def decode(self, tokens: Union[torch.Tensor, Sequence[int]]) -> str:
        """The text of one row of ids (padding, start and end tokens dropped)."""
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        return self._decode_ids([i - 1 for i in ids if 0 < i <= self.base_size])


class SentencePieceTokenizer(_RemappedTokenizer):
    """A SentencePiece model file; pickles as the model's bytes, so DataLoader workers need no file."""

    def __init__(self, path: Union[str, os.PathLike], context_length: int) -> None:
        super().__init__(context_length)
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"sentencepiece model file not found: {self.path}")
        with open(self.path, "rb") as f:
            self._load(f.read())

    def _load(self, proto: bytes) -> None:
        import sentencepiece as spm

        self._proto = proto
        self._sp = spm.SentencePieceProcessor(model_proto=proto)
        self.base_size = int(self._sp.get_piece_size())

    def _encode_ids(self, texts: Sequence[str]) -> List[List[int]]:
        return self._sp.encode(list(texts), out_type=int)

    def _decode_ids(self, ids: List[int]) -> str:
        return self._sp.decode(ids)

    def __getstate__(self) -> dict:
        return {"path": self.path, "context_length": self.context_length, "proto": self._proto}

    def __setstate__(self, state: dict) -> None:
        self.path, self.context_length = state["path"], state["context_length"]
        self._load(state["proto"])


class HFTokenizer(_RemappedTokenizer):
    """A Hugging Face tokenizer from a local directory (``local_files_only``: never downloads)."""

    def __init__(self, directory: Union[str, os.PathLike], context_length: int) -> None:
        super().__init__(context_length)
        self.directory = str(directory)
        if not os.path.isdir(self.directory):
            raise FileNotFoundError(f"Hugging Face tokenizer directory not found: {self.directory}")
        self._load()

    def _load(self) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(self.directory, local_files_only=True)
        vocab = self._tok.get_vocab()  # includes added tokens
        self.base_size = max(len(self._tok), max(vocab.values(), default=-1) + 1)

    def _encode_ids(self, texts: Sequence[str]) -> List[List[int]]:
        return self._tok(list(texts), add_special_tokens=False)["input_ids"]

    def _decode_ids(self, ids: List[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def __getstate__(self) -> dict:
        return {"directory": self.directory, "context_length": self.context_length}

    def __setstate__(self, state: dict) -> None:
        self.directory, self.context_length = state["directory"], state["context_length"]
        self._load()


def build_tokenizer(name: str, context_length: int) -> Tokenizer:
    """The tokenizer named in ``model.tokenizer`` (see the module docstring for the forms)."""
    kind, path = parse_tokenizer_spec(name)
    if kind == "open_clip":
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(context_length=context_length)
    if kind == "hf":
        return HFTokenizer(path, context_length)
    return SentencePieceTokenizer(path, context_length)


def tokenizer_vocab_size(name: str) -> Optional[int]:
    """The embedding rows the text tower needs for tokenizer ``name``; None for 'open_clip'
    (the architecture's own ``text_cfg.vocab_size`` stands)."""
    kind, _ = parse_tokenizer_spec(name)
    if kind == "open_clip":
        return None
    return build_tokenizer(name, 2).vocab_size  # type: ignore[union-attr]
