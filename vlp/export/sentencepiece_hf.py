"""A vlp SentencePiece tokenizer as a Hugging Face fast tokenizer that emits the same ids.

vlp frames a SentencePiece model's ids (``vlp.data.tokenizers``): 0 is padding, piece ``i`` is
``i + 1``, start ``N + 1`` and end ``N + 2``. The Hugging Face tokenizer built here has exactly
that vocabulary: a pad piece first, the model's pieces, then start and end, with transformers'
own SentencePiece conversion (``SpmConverter.build_tokenizer_from_spm_proto``: the model's
normalizer, dummy prefix, unigram or BPE pieces and scores) and a post-processor that adds the
start and end tokens. ``open_clip.tokenizer.HFTokenizer`` loads it from a folder and gives vlp's
ids; ``vlp.export.text_files`` checks that on probe texts before an export is written.

The special pieces' names, and the model's own control/unknown/unused pieces, carry a tab: the
text is whitespace-cleaned before tokenization, so no text can contain them (SentencePiece never
matches such pieces in a text either). The model file is read with a minimal protobuf wire-format
reader, as the ``protobuf`` package is not a dependency.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Tuple

from vlp.data.tokenizers import SentencePieceTokenizer

PAD, START, END = "<pad\t>", "<start_of_text\t>", "<end_of_text\t>"
UNIGRAM, BPE = 1, 2
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED = 1, 2, 3, 4, 5


class TokenizerExportError(ValueError):
    """The tokenizer cannot be written in a form the export's target library loads with the same ids."""


def _varint(data: bytes, i: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _fields(data: bytes) -> Iterator[Tuple[int, Any]]:
    """(field number, value) of one protobuf message: int for varints, bytes otherwise."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i:i + size], i + size
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise TokenizerExportError(f"not a SentencePiece model (protobuf wire type {wire})")
        yield field, value


def read_model_proto(proto: bytes) -> SimpleNamespace:
    """The parts of a SentencePiece ModelProto the conversion reads, with the proto's defaults."""
    trainer: Dict[int, Any] = {}
    normalizer: Dict[int, Any] = {}
    pieces: List[SimpleNamespace] = []
    for field, value in _fields(proto):
        if field == 1:  # SentencePiece {piece = 1, score = 2, type = 3}
            piece = dict(_fields(value))
            pieces.append(SimpleNamespace(piece=piece.get(1, b"").decode("utf-8"),
                                          score=struct.unpack("<f", piece[2])[0] if 2 in piece else 0.0,
                                          type=int(piece.get(3, NORMAL))))
        elif field == 2:
            trainer.update(_fields(value))
        elif field == 3:
            normalizer.update(_fields(value))
    return SimpleNamespace(
        pieces=pieces,
        trainer_spec=SimpleNamespace(model_type=int(trainer.get(3, UNIGRAM)), byte_fallback=bool(trainer.get(35, 0)),
                                     unk_id=int(trainer.get(40, 0))),
        normalizer_spec=SimpleNamespace(precompiled_charsmap=normalizer.get(2, b""),
                                        add_dummy_prefix=bool(normalizer.get(3, 1)),
                                        remove_extra_whitespaces=bool(normalizer.get(4, 1)),
                                        escape_whitespaces=bool(normalizer.get(5, 1))))


def sentencepiece_as_hf(tokenizer: SentencePieceTokenizer) -> Any:
    """A ``transformers`` fast tokenizer giving ``tokenizer``'s ids; TokenizerExportError if it cannot."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    try:
        from transformers.convert_slow_tokenizer import SpmConverter

        build = SpmConverter.build_tokenizer_from_spm_proto
    except (ImportError, AttributeError) as err:
        raise TokenizerExportError("this transformers version has no SpmConverter.build_tokenizer_from_spm_proto, "
                                   "which writes a SentencePiece model as a Hugging Face tokenizer") from err
    proto = read_model_proto(tokenizer.model_proto)
    n = len(proto.pieces)
    if n != tokenizer.base_size:
        raise TokenizerExportError(f"{tokenizer.path}: read {n} pieces but SentencePiece reports {tokenizer.base_size}")
    model_type = proto.trainer_spec.model_type
    if model_type not in (UNIGRAM, BPE):
        raise TokenizerExportError(f"{tokenizer.path}: a SentencePiece model of type {model_type} (word/char) has no "
                                   "Hugging Face equivalent; only unigram and bpe models export to open_clip")
    pieces = [SimpleNamespace(piece=PAD, score=0.0, type=CONTROL)]
    for piece in proto.pieces:  # a tab keeps the model's special pieces from matching any cleaned text
        hidden = piece.type in (UNKNOWN, CONTROL, UNUSED)
        pieces.append(SimpleNamespace(piece=piece.piece + "\t" if hidden else piece.piece, score=piece.score,
                                      type=piece.type))
    pieces += [SimpleNamespace(piece=START, score=0.0, type=CONTROL), SimpleNamespace(piece=END, score=0.0, type=CONTROL)]
    unk_id = proto.trainer_spec.unk_id + 1
    shifted = SimpleNamespace(pieces=pieces, normalizer_spec=proto.normalizer_spec,
                              trainer_spec=SimpleNamespace(byte_fallback=proto.trainer_spec.byte_fallback,
                                                           unk_id=unk_id, unk_piece=pieces[unk_id].piece))
    if model_type == UNIGRAM:
        vocab: Any = [(p.piece, p.score) for p in pieces]
    else:
        vocab = {p.piece: i for i, p in enumerate(pieces)}
    if len({p.piece for p in pieces}) != len(pieces):
        raise TokenizerExportError(f"{tokenizer.path}: the model has duplicate pieces or pieces named like vlp's "
                                   f"special tokens {PAD!r}, {START!r}, {END!r}")
    backend = build(shifted, vocab)
    if backend is None:
        raise TokenizerExportError(f"{tokenizer.path}: transformers could not convert this SentencePiece model")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{START} $A {END}", special_tokens=[(START, tokenizer.sot_id), (END, tokenizer.eot_id)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, bos_token=START, eos_token=END)
