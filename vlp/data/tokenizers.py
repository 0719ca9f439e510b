"""Text tokenizers behind one interface: list of str -> LongTensor [B, context_length].

``model.tokenizer`` names one of:

- ``open_clip``: the BPE shipped in open_clip's wheel;
- ``hf:DIR``: a Hugging Face tokenizer saved in the local directory DIR (never downloaded);
- ``sentencepiece:FILE.model``: a SentencePiece model file (``python -m data_prep tokenizer``).

The id scheme of each (what a row of the text tower's token embedding stands for):

- ``open_clip``: open_clip's SimpleTokenizer, ``[49406, tok..., 49407, 0, ...]``. The end token
  49407 is the largest id of every row, where open_clip's text tower pools (``pool_type='argmax'``).
- ``hf:DIR``: exactly the ids ``open_clip.tokenizer.HFTokenizer(DIR)`` emits (the tokenizer
  ``open_clip.get_tokenizer`` builds for a config with ``text_cfg.hf_tokenizer_name``): the text
  cleaned as open_clip cleans it (``clean='whitespace'``), then the tokenizer's own ids with its
  own special tokens (``[CLS] ... [SEP]``, ``<s> ... </s>``), truncated to the context and padded
  with its own pad id. No id is shifted: an HF text tower (``text_cfg.hf_model_name``) reads its
  pretrained embeddings at these rows, and the export's tokenizer is a copy of DIR's. With
  open_clip's own text tower the end token is not the largest id, so the tower pools at its first
  occurrence (``pool_type='eos'``, ``eos_id``; causal, so the padding after it changes nothing), as
  open_clip's MetaCLIP-worldwide configs do; ``vlp.models.factory.model_arch`` sets this.
- ``sentencepiece:FILE``: the text cleaned the same way, then ``[start, tok..., end, 0, 0, ...]``:
  0 is padding, the model's piece ``i`` is id ``i + 1``, start is ``N + 1`` and end ``N + 2``
  for a model of N pieces, so the text tower holds ``N + 3`` rows and the end token is each row's
  largest id (argmax pooling, as for open_clip's BPE). A SentencePiece model has no pad/start/end
  of its own (``data_prep`` trains it without), hence the framing; ``vlp.export`` writes this
  exact scheme as a Hugging Face tokenizer that ``open_clip.get_tokenizer('local-dir:...')`` loads.

A caption longer than the context is truncated and its last position is still the end token.
"""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from vlp.errors import ConfigError

Tokenizer = Callable[[List[str]], torch.Tensor]
Texts = Union[str, Sequence[str]]

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


def clean_text(text: str) -> str:
    """The cleaning open_clip's HFTokenizer applies by default (``clean='whitespace'``): ftfy and
    HTML unescaping, every run of whitespace made one space, stripped."""
    from open_clip.tokenizer import get_clean_fn

    return get_clean_fn("whitespace")(text)


def _as_list(texts: Texts) -> List[str]:
    return [texts] if isinstance(texts, str) else [str(t) for t in texts]


class SentencePieceTokenizer:
    """A SentencePiece model file in the remapped scheme of the module docstring; pickles as the
    model's bytes, so DataLoader workers need no file."""

    def __init__(self, path: Union[str, os.PathLike], context_length: int) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (start and end tokens), got {context_length}")
        self.context_length = int(context_length)
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

    @property
    def model_proto(self) -> bytes:
        """The SentencePiece model file's bytes."""
        return self._proto

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

    def __call__(self, texts: Texts, context_length: Optional[int] = None) -> torch.Tensor:
        texts = _as_list(texts)
        length = int(context_length or self.context_length)
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, ids in enumerate(self._sp.encode([clean_text(t) for t in texts], out_type=int)):
            tokens = [self.sot_id] + [i + 1 for i in ids[: length - 2]] + [self.eot_id]
            out[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return out

    def decode(self, tokens: Union[torch.Tensor, Sequence[int]]) -> str:
        """The text of one row of ids (padding, start and end tokens dropped)."""
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        return self._sp.decode([i - 1 for i in ids if 0 < i <= self.base_size])

    def __getstate__(self) -> dict:
        return {"path": self.path, "context_length": self.context_length, "proto": self._proto}

    def __setstate__(self, state: dict) -> None:
        self.path, self.context_length = state["path"], state["context_length"]
        self._load(state["proto"])


class HFTokenizer:
    """A Hugging Face tokenizer from a local directory (``local_files_only``: never downloads),
    emitting exactly what ``open_clip.tokenizer.HFTokenizer`` emits for it (module docstring).

    ``pad_id``, ``sot_id`` and ``eot_id`` are the ids the tokenizer pads with and puts before and
    after a text (None where it adds none); ``tokenizer`` is the transformers tokenizer."""

    def __init__(self, directory: Union[str, os.PathLike], context_length: int) -> None:
        self.context_length = int(context_length)
        self.directory = str(directory)
        if not os.path.isdir(self.directory):
            raise FileNotFoundError(f"Hugging Face tokenizer directory not found: {self.directory}")
        self._load()

    def _load(self) -> None:
        from open_clip.tokenizer import HFTokenizer as OpenCLIPHFTokenizer

        self._open_clip = OpenCLIPHFTokenizer(self.directory, context_length=self.context_length,
                                              local_files_only=True)
        self.tokenizer = tok = self._open_clip.tokenizer
        if tok.pad_token_id is None:
            raise ConfigError(f"hf:{self.directory}: the tokenizer has no pad token, so texts cannot be padded to "
                             "the context length; set tokenizer.pad_token (e.g. to its end token) and save it again")
        vocab = tok.get_vocab()  # includes added tokens
        self.vocab_size = max(len(tok), max(vocab.values(), default=-1) + 1)
        self.pad_id = int(tok.pad_token_id)
        self.sot_id, self.eot_id = _framing(tok)

    def __call__(self, texts: Texts, context_length: Optional[int] = None) -> torch.Tensor:
        return self._open_clip(_as_list(texts), int(context_length or self.context_length)).long()

    def decode(self, tokens: Union[torch.Tensor, Sequence[int]]) -> str:
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def __getstate__(self) -> dict:
        return {"directory": self.directory, "context_length": self.context_length}

    def __setstate__(self, state: dict) -> None:
        self.directory, self.context_length = state["directory"], state["context_length"]
        self._load()


def _framing(tok) -> Tuple[Optional[int], Optional[int]]:
    """(the id a transformers tokenizer puts before a text, the id it puts after it); None for none."""
    framed = list(tok("a photo")["input_ids"])
    plain = list(tok("a photo", add_special_tokens=False)["input_ids"])
    for start in range(len(framed) - len(plain) + 1):
        if framed[start:start + len(plain)] == plain:
            before, after = framed[:start], framed[start + len(plain):]
            return (before[0] if before else None), (after[-1] if after else None)
    return None, None


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
