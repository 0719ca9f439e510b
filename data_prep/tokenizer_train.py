"""Training a SentencePiece tokenizer on the captions of WebDataset shards.

Captions are each sample's ``.txt`` plus, when the sample has a ``.json`` with a ``captions``
list (several captions per image), every caption of that list that differs from the ``.txt``.
Shards are read member by member with :mod:`tarfile`; nothing is decoded but text and JSON.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List

from vlp.utils.atomic import write_bytes_atomic


def split_member_name(name: str) -> tuple[str, str]:
    """(sample key, field) of a tar member by webdataset's rule: the key ends at the first '.'
    of the file name (``dir/000001.neg.json`` -> (``dir/000001``, ``neg.json``))."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext if dot else "")


def iter_shard_samples(path: str) -> Iterator[Dict[str, Any]]:
    """Samples of one tar shard as {"__key__": key (str), field: raw bytes}, in file order.

    Members of one sample are consecutive in a WebDataset shard; a member without a field
    (no '.') is not part of any sample and is skipped."""
    current: Dict[str, Any] = {}
    try:
        with tarfile.open(path, "r") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = split_member_name(member.name)
                if not ext:
                    continue
                if current and current["__key__"] != key:
                    yield current
                    current = {}
                if not current:
                    current["__key__"] = key
                handle = tar.extractfile(member)
                current[ext] = handle.read() if handle is not None else b""
    except (tarfile.TarError, EOFError) as err:
        detail = str(err).splitlines()[-1].replace("- method tar: ", "") if str(err) else type(err).__name__
        raise ValueError(f"{path}: not a readable tar shard ({detail})") from None
    if current:
        yield current


def sample_captions(sample: Dict[str, Any]) -> List[str]:
    """The caption texts of one raw sample (``txt`` first, then new ones from ``json['captions']``)."""
    captions: List[str] = []
    if "txt" in sample:
        text = sample["txt"].decode("utf-8", errors="replace").strip()
        if text:
            captions.append(text)
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError):
            meta = None
        listed = meta.get("captions") if isinstance(meta, dict) else None
        if isinstance(listed, list):
            captions += [c.strip() for c in listed if isinstance(c, str) and c.strip() and c.strip() not in captions]
    return captions


class VocabTooSmallError(ValueError):
    """The captions cannot fill the requested vocabulary: ``reached`` pieces of ``requested``."""

    def __init__(self, reached: int, requested: int) -> None:
        super().__init__(f"the captions fill only {reached} pieces, fewer than the requested --vocab-size "
                         f"{requested}; use more captions or a --vocab-size <= {reached}")
        self.reached, self.requested = reached, requested


@dataclass
class CaptionStats:
    shards: int = 0
    samples: int = 0
    captions: int = 0
    samples_without_caption: int = 0
    per_shard: Dict[str, int] = field(default_factory=dict)


def iter_captions(urls: Iterable[str], stats: CaptionStats) -> Iterator[str]:
    """Every caption of every sample of ``urls``, counting into ``stats``."""
    for url in urls:
        stats.shards += 1
        n = 0
        for sample in iter_shard_samples(url):
            stats.samples += 1
            n += 1
            captions = sample_captions(sample)
            if not captions:
                stats.samples_without_caption += 1
            for caption in captions:
                stats.captions += 1
                yield caption
        stats.per_shard[os.path.basename(url)] = n


def train_sentencepiece(captions: Iterable[str], out: str | os.PathLike, vocab_size: int, *,
                        model_type: str = "unigram", character_coverage: float = 1.0,
                        hard_vocab_limit: bool = False, threads: int = 1, seed_sentencepiece_size: int = 1_000_000,
                        require_full: bool = False) -> int:
    """Train a SentencePiece model on ``captions`` and write it atomically to ``out``.

    The model has an unknown piece (id 0) but no bos/eos/pad: vlp's tokenizer adds its own start
    and end tokens at the top of the vocabulary. With ``hard_vocab_limit=False`` a corpus too small
    for ``vocab_size`` yields a smaller model instead of an error (the caller compares the returned
    size with ``vocab_size``); with ``hard_vocab_limit`` or ``require_full`` it raises
    :class:`VocabTooSmallError` naming the size reached, and writes nothing. Returns the pieces in
    the model (the unknown piece included, as in ``vocab_size``).
    """
    import sentencepiece as spm

    if vocab_size < 4:
        raise ValueError(f"vocab_size must be >= 4, got {vocab_size}")
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(captions), model_writer=buffer, vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, hard_vocab_limit=hard_vocab_limit, num_threads=threads,
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, seed_sentencepiece_size=seed_sentencepiece_size,
            minloglevel=2,
        )
    except RuntimeError as err:  # hard limit: "Vocabulary size too high (8000). Please set it to a value <= 44."
        most = re.search(r"Vocabulary size too high.*<= (\d+)", str(err))
        if most is None:  # drop the "INTERNAL: src/file.cc(123) [check] " prefix of SentencePiece's errors
            raise RuntimeError("SentencePiece: " + re.sub(r"^\w+: \S+\(\d+\) \[.*?\] ", "", str(err))) from None
        raise VocabTooSmallError(int(most.group(1)), vocab_size) from None
    proto = buffer.getvalue()
    pieces = int(spm.SentencePieceProcessor(model_proto=proto).get_piece_size())
    if require_full and pieces < vocab_size:
        raise VocabTooSmallError(pieces, vocab_size)
    write_bytes_atomic(out, proto)
    return pieces
